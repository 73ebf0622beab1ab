"""summary.json: {"run": ..., "rounds": [one object per finished round]}, rewritten atomically as
the run goes. It is the run's own file (`runs/<run id>/summary.json`, see store/layout.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path


class Summary:
    def __init__(self, path: str | Path, run_id: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.data = {"run": run_id, "rounds": []}
        if self.path.is_file():
            try:
                old = json.loads(self.path.read_text())
                if old.get("run") == run_id:
                    self.data = old
            except (json.JSONDecodeError, OSError):
                pass

    def add_round(self, row: dict) -> None:
        self.data["rounds"] = [r for r in self.data["rounds"] if r.get("round") != row["round"]] + [row]
        self.data["rounds"].sort(key=lambda r: r["round"])
        self._write()

    def keep_rounds(self, last_round: int) -> None:
        """Drop the rounds after `last_round` (a resumed run redoes them)."""
        self.data["rounds"] = [r for r in self.data["rounds"] if r.get("round", 0) <= last_round]
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)
