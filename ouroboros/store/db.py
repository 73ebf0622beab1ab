"""The run directory's SQLite database (WAL mode).

Several runs can share one database (a reused `--out`, see store/layout.py), so every table is
keyed by run id as well: a retried write replaces its own row and never another run's. Databases
written before runs shared them (keyed by trajectory or pair id alone) are re-keyed on open,
their rows kept.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, name TEXT, config TEXT, started_at REAL, finished_at REAL, status TEXT
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id TEXT, round INTEGER, weights_version INTEGER, status TEXT, metrics TEXT,
    started_at REAL, finished_at REAL, PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS completions (
    trajectory_id TEXT, run_id TEXT, round INTEGER, phase TEXT, task_id TEXT, split TEXT,
    sample INTEGER, request_id TEXT, prompt TEXT, text TEXT, weights_version INTEGER, backend TEXT,
    prompt_tokens INTEGER, completion_tokens INTEGER, finish_reason TEXT,
    action TEXT, action_valid INTEGER, action_error TEXT, exec_result TEXT, outcome TEXT,
    PRIMARY KEY (run_id, trajectory_id)
);
CREATE TABLE IF NOT EXISTS scores (
    trajectory_id TEXT, run_id TEXT, round INTEGER, judge TEXT, components TEXT, total REAL,
    PRIMARY KEY (run_id, trajectory_id)
);
CREATE TABLE IF NOT EXISTS pairs (
    id TEXT, run_id TEXT, round INTEGER, task_id TEXT, prompt TEXT, chosen TEXT, rejected TEXT,
    chosen_reward REAL, rejected_reward REAL, chosen_trajectory TEXT, rejected_trajectory TEXT,
    PRIMARY KEY (run_id, id)
);
CREATE TABLE IF NOT EXISTS weights (
    run_id TEXT, version INTEGER, kind TEXT, checksum TEXT, num_bytes INTEGER, base_model TEXT,
    published_at REAL, PRIMARY KEY (run_id, version)
);
"""


class RunDB:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection per process; the Recorder actor is the only writer of a run.
        self.conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        # Re-keying and creating happen in one transaction: a crash leaves the old tables as they were.
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self._rekey()
            self._create()
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def _create(self) -> None:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                self.conn.execute(statement)
        self.conn.execute("CREATE INDEX IF NOT EXISTS completions_round ON completions (run_id, round, phase)")

    def _rekey(self) -> None:
        """Re-key tables from before runs shared a database: (run_id, id) instead of id alone."""
        for table, key in (("completions", "trajectory_id"), ("scores", "trajectory_id"), ("pairs", "id")):
            info = self.conn.execute(f"PRAGMA table_info({table})").fetchall()
            if [row[1] for row in info if row[5]] != [key]:
                continue  # absent, or keyed by run already
            cols = ", ".join(row[1] for row in info)
            self.conn.execute(f"ALTER TABLE {table} RENAME TO {table}_unkeyed")
            self.conn.execute("DROP INDEX IF EXISTS completions_round")
            self._create()
            self.conn.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {table}_unkeyed")
            self.conn.execute(f"DROP TABLE {table}_unkeyed")

    def close(self) -> None:
        self.conn.close()

    def upsert(self, table: str, rows: list[dict]) -> None:
        if not rows:
            return
        cols = list(rows[0])
        sql = f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
        with self.conn:  # one transaction: a round's rows land together or not at all
            self.conn.executemany(sql, [tuple(_sql_value(r[c]) for c in cols) for r in rows])

    def start_run(self, run_id: str, name: str, config: dict) -> None:
        existing = self.conn.execute("SELECT started_at FROM runs WHERE id=?", (run_id,)).fetchone()
        self.upsert("runs", [{"id": run_id, "name": name, "config": config, "finished_at": None, "status": "running",
                              "started_at": existing[0] if existing else time.time()}])

    def finish_run(self, run_id: str, status: str) -> None:
        with self.conn:
            self.conn.execute("UPDATE runs SET status=?, finished_at=? WHERE id=?", (status, time.time(), run_id))

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self.conn.execute(sql, args).fetchall()


def _sql_value(value):
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, bool):
        return int(value)
    return value
