"""Experiments (seed 000) in the run's SQLite: experiments, steps, trace spans, and FTS5 search.

Many cycles write at once, each through its own connection (WAL, busy timeout), so:
- experiment ids come from SQLite's AUTOINCREMENT inside the insert (`RETURNING id`), which is
  unique under concurrency; nothing computes `MAX(id) + 1`;
- an experiment row is inserted as `running` before its first action and is finished in one
  transaction with its search entry; a cycle that crashes is marked `failed` by its `finally`,
  and one whose process died is marked `failed` by `fail_orphans` (its owner is gone).
"""
from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT, cycle INTEGER, owner TEXT, status TEXT,
    end_reason TEXT, started_at REAL, finished_at REAL, notes TEXT, dockerfile TEXT, environment TEXT,
    actions INTEGER DEFAULT 0, errors INTEGER DEFAULT 0, prompt_tokens INTEGER DEFAULT 0,
    completion_tokens INTEGER DEFAULT 0, cost_usd REAL DEFAULT 0, history_trimmed INTEGER DEFAULT 0,
    git_commit TEXT, goal TEXT, task_id TEXT, round INTEGER, split TEXT, params TEXT
);
CREATE INDEX IF NOT EXISTS experiments_status ON experiments (status, finished_at);
CREATE TABLE IF NOT EXISTS steps (
    experiment_id INTEGER, idx INTEGER, action TEXT, data TEXT, notes TEXT, valid INTEGER, error TEXT,
    result TEXT, ok INTEGER, attempts INTEGER, started_at REAL, duration_s REAL,
    prompt_tokens INTEGER, completion_tokens INTEGER, PRIMARY KEY (experiment_id, idx)
);
CREATE TABLE IF NOT EXISTS traces (
    id TEXT PRIMARY KEY, experiment_id INTEGER, parent_id TEXT, kind TEXT, name TEXT,
    started_at REAL, duration_s REAL, prompt_tokens INTEGER, completion_tokens INTEGER, attrs TEXT
);
CREATE INDEX IF NOT EXISTS traces_experiment ON traces (experiment_id, started_at);
CREATE INDEX IF NOT EXISTS traces_parent ON traces (experiment_id, parent_id, started_at);
CREATE VIRTUAL TABLE IF NOT EXISTS experiments_fts USING fts5(
    experiment_id UNINDEXED, notes, code, results, errors, tokenize = 'porter unicode61'
);
"""

# Columns added after the first release; older run databases gain them on open.
_ADDED_COLUMNS = {"goal": "TEXT", "task_id": "TEXT", "round": "INTEGER", "split": "TEXT", "params": "TEXT"}


@dataclass(frozen=True)
class KnowledgeScope:
    """Which earlier experiments a cycle may see through `search` and `{prev_data}`.

    Several runs can share a run directory, and one run must not learn from another unless the
    config says so (`experiment.learn_from_runs`), so a scope always names its runs: `runs`
    None means every run in the directory, and an empty tuple means none at all.

    A learning run compares several cycles on one goal, so they must start from the same
    knowledge, and held-out goals must not learn from other evaluations: there a cycle sees
    the `split` experiments of rounds before `before_round` only."""

    runs: tuple[str, ...] | None = None
    before_round: int | None = None
    split: str | None = None

    def clause(self) -> tuple[str, tuple]:
        parts, args = [], []
        if self.runs is not None:
            if not self.runs:
                return "0", ()
            parts.append(f"run_id IN ({', '.join('?' for _ in self.runs)})")
            args += self.runs
        if self.before_round is not None:
            parts.append("round < ?")
            args.append(self.before_round)
        if self.split is not None:
            parts.append("split = ?")
            args.append(self.split)
        return (" AND ".join(parts) or "1"), tuple(args)

    @classmethod
    def of_run(cls, run_id: str, learn_from: list[str] | tuple[str, ...] = (), **kw) -> "KnowledgeScope":
        """This run's experiments and those of the runs `learn_from` names ("*": every run)."""
        if "*" in learn_from:
            return cls(runs=None, **kw)
        return cls(runs=(run_id, *[r for r in learn_from if r != run_id]), **kw)


_WORD = re.compile(r"[A-Za-z0-9_]{2,}")


def fts_query(text: str, max_terms: int = 24) -> str:
    """Free text as a safe FTS5 query: its words, each quoted, OR-ed (no FTS syntax errors)."""
    words: list[str] = []
    for word in _WORD.findall(text or ""):
        lowered = word.lower()
        if lowered not in words:
            words.append(lowered)
        if len(words) >= max_terms:
            break
    return " OR ".join(f'"{w}"' for w in words)


class ExperimentStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA busy_timeout=60000")
        # Many cycles open the same fresh file at once. Switching it to WAL can answer "locked"
        # without waiting on the busy handler, so the set-up retries with a short backoff.
        for attempt in range(200):
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                self.conn.executescript(SCHEMA)  # IF NOT EXISTS throughout
                self._add_columns()
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 199:
                    raise
                time.sleep(0.01 + 0.002 * attempt)

    def _add_columns(self) -> None:
        have = {row[1] for row in self.conn.execute("PRAGMA table_info(experiments)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in have:
                try:
                    self.conn.execute(f"ALTER TABLE experiments ADD COLUMN {name} {kind}")
                except sqlite3.OperationalError as exc:  # another connection added it first
                    if "duplicate column" not in str(exc):
                        raise

    def _tx(self):
        conn = self.conn

        class Tx:
            def __enter__(self):
                conn.execute("BEGIN IMMEDIATE")  # take the write lock up front: no upgrade deadlocks

            def __exit__(self, exc_type, *_):
                conn.execute("ROLLBACK" if exc_type else "COMMIT")

        return Tx()

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------------ writes

    def start(self, run_id: str, cycle: int, owner: str, dockerfile: str, goal: str = "",
              task_id: str | None = None, round_: int | None = None, split: str | None = None,
              params: dict | None = None) -> int:
        """`params`: the parameters the goal was drawn with, for an episode of a learning run."""
        with self._tx():
            row = self.conn.execute(
                "INSERT INTO experiments (run_id, cycle, owner, status, started_at, dockerfile, goal, task_id, round, "
                "split, params) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (run_id, cycle, owner, time.time(), dockerfile, goal, task_id, round_, split,
                 None if params is None else json.dumps(params, sort_keys=True)),
            ).fetchone()
        return int(row[0])

    def add_step(self, experiment_id: int, step: dict) -> None:
        cols = ["experiment_id", *step]
        with self._tx():
            self.conn.execute(
                f"INSERT OR REPLACE INTO steps ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
                (experiment_id, *(_value(v) for v in step.values())),
            )

    def add_spans(self, spans: list[dict]) -> None:
        if not spans:
            return
        cols = list(spans[0])
        with self._tx():
            self.conn.executemany(
                f"INSERT OR REPLACE INTO traces ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
                [tuple(_value(s[c]) for c in cols) for s in spans],
            )

    def finish(self, experiment_id: int, status: str, end_reason: str, fields: dict, index: dict) -> None:
        """Close the experiment and make it searchable, in one transaction."""
        sets = ", ".join(f"{k}=?" for k in fields)
        with self._tx():
            self.conn.execute(
                f"UPDATE experiments SET status=?, end_reason=?, finished_at=?{', ' + sets if sets else ''} WHERE id=?",
                (status, end_reason, time.time(), *(_value(v) for v in fields.values()), experiment_id),
            )
            self.conn.execute("DELETE FROM experiments_fts WHERE experiment_id=?", (experiment_id,))
            self.conn.execute(
                "INSERT INTO experiments_fts (experiment_id, notes, code, results, errors) VALUES (?, ?, ?, ?, ?)",
                (experiment_id, index.get("notes", ""), index.get("code", ""), index.get("results", ""),
                 index.get("errors", "")),
            )

    def set_commit(self, experiment_id: int, commit: str) -> None:
        with self._tx():
            self.conn.execute("UPDATE experiments SET git_commit=? WHERE id=?", (commit, experiment_id))

    def fail_orphans(self, is_alive) -> int:
        """Mark `running` experiments whose owner process is gone as failed. Returns how many."""
        rows = self.conn.execute("SELECT id, owner FROM experiments WHERE status='running'").fetchall()
        dead = [eid for eid, owner in rows if not is_alive(owner or "")]
        for eid in dead:
            self.finish(eid, "failed", "the cycle's process died before it finished", {}, {})
        return len(dead)

    # ------------------------------------------------------------------ reads

    def search(self, text: str, limit: int = 5, exclude: int | None = None,
               scope: KnowledgeScope | None = None) -> list[dict]:
        """Ranked snippets of earlier experiments matching `text` (BM25 over notes, code, results, errors)."""
        query = fts_query(text)
        if not query:
            return []
        where, args = "", ()
        if scope is not None:
            clause, args = scope.clause()
            where = f" AND experiment_id IN (SELECT id FROM experiments WHERE {clause})"
        rows = self.conn.execute(
            "SELECT experiment_id, snippet(experiments_fts, -1, '[', ']', '...', 16), bm25(experiments_fts) "
            f"FROM experiments_fts WHERE experiments_fts MATCH ? AND experiment_id != ?{where} ORDER BY rank LIMIT ?",
            (query, -1 if exclude is None else exclude, *args, limit),
        ).fetchall()
        return [{"experiment_id": int(eid), "snippet": snippet, "score": round(-score, 4)} for eid, snippet, score in rows]

    def summaries(self, ids: list[int]) -> list[dict]:
        if not ids:
            return []
        marks = ", ".join("?" for _ in ids)
        rows = self.conn.execute(
            f"SELECT id, status, end_reason, notes, actions, errors FROM experiments WHERE id IN ({marks})", ids
        ).fetchall()
        by_id = {r[0]: r for r in rows}
        return [dict(zip(("id", "status", "end_reason", "notes", "actions", "errors"), by_id[i])) for i in ids if i in by_id]

    def recent_finished(self, limit: int, exclude: int | None = None, scope: KnowledgeScope | None = None) -> list[int]:
        clause, args = scope.clause() if scope is not None else ("1", ())
        rows = self.conn.execute(
            f"SELECT id FROM experiments WHERE status IN ('finalized', 'limit') AND id != ? AND {clause} "
            "ORDER BY finished_at DESC LIMIT ?", (-1 if exclude is None else exclude, *args, limit)
        ).fetchall()
        return [r[0] for r in rows]

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self.conn.execute(sql, args).fetchall()


def _value(value):
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, bool):
        return int(value)
    return value
