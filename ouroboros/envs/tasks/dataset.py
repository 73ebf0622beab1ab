"""The programming tasks of the `tasks` environment, with their hidden tests."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from ouroboros.types import Task

DATA = Path(__file__).parent / "data" / "tasks.jsonl"


@lru_cache(maxsize=1)
def _load() -> tuple[Task, ...]:
    tasks = []
    for line in DATA.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            tasks.append(Task(**{k: row[k] for k in ("id", "split", "prompt", "entry_point", "tests", "reference")}))
    return tuple(tasks)


def load_tasks(split: str | None = None) -> list[Task]:
    return [t for t in _load() if split is None or t.split == split]
