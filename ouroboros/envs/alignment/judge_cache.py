"""The judge cache: a verdict is kept by the content hash of (judge, its version, model and prompt
hash, the rubric, the prompt, the candidate), so a candidate judged before (a repeated round, a
rerun stage, the same greedy answer of an unchanged version) is not judged again. Failures are not
cached: the next round asks again. Rows carry the run that made them."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict
from pathlib import Path

from ouroboros.envs.alignment.judging import Verdict


class JudgeCache:
    def __init__(self, path: str | Path, run_id: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, judge TEXT, run_id TEXT, "
                          "verdict TEXT, created_at REAL)")
        self.conn.commit()
        self.run_id = run_id
        self.lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, keys: list[str]) -> dict[str, Verdict]:
        found: dict[str, Verdict] = {}
        with self.lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                rows = self.conn.execute(f"SELECT key, verdict FROM verdicts WHERE key IN ({','.join('?' * len(chunk))})",
                                         chunk).fetchall()
                for key, verdict in rows:
                    found[key] = Verdict(**{**json.loads(verdict), "cached": True})
            self.hits += len(found)
            self.misses += len(set(keys)) - len(found)
        return found

    def put(self, entries: dict[str, Verdict]) -> None:
        now = time.time()
        with self.lock, self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?)", [
                (k, v.judge, self.run_id, json.dumps({**asdict(v), "cached": False}), now) for k, v in entries.items()])

    def close(self) -> None:
        self.conn.close()
