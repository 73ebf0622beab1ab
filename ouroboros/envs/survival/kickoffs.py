"""Kickoff prompts: the human's first input to each episode, as train and held-out tasks."""
from __future__ import annotations

import json
from pathlib import Path

from ouroboros.config import ConfigError
from ouroboros.types import Task

BUNDLED = Path(__file__).with_name("data") / "kickoffs.jsonl"
PROMPT_MAX = 2000


class KickoffsError(ConfigError):
    """A kickoffs file a user can fix; the message names the file, the line and what is wrong."""


def load_kickoffs(path: str | None = None) -> list[Task]:
    source = Path(path) if path else BUNDLED
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise KickoffsError(f"env.survival.kickoffs_file {str(source)!r} cannot be read: {exc.strerror}") from None
    tasks, seen = [], set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{n}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise KickoffsError(f"{where}: not a JSON object ({exc})") from None
        if not isinstance(row, dict) or set(row) - {"id", "split", "prompt"} or not {"id", "split", "prompt"} <= set(row):
            raise KickoffsError(f"{where}: expected exactly the keys id, split and prompt")
        if not isinstance(row["id"], str) or not row["id"] or row["id"] in seen:
            raise KickoffsError(f"{where}: id must be a new non-empty string, got {row['id']!r}")
        if row["split"] not in ("train", "heldout"):
            raise KickoffsError(f"{where}: split must be \"train\" or \"heldout\", got {row['split']!r}")
        if not isinstance(row["prompt"], str) or not row["prompt"].strip() or len(row["prompt"]) > PROMPT_MAX:
            raise KickoffsError(f"{where}: prompt must be non-empty text of at most {PROMPT_MAX} characters")
        seen.add(row["id"])
        tasks.append(Task(id=row["id"], split=row["split"], prompt=row["prompt"], entry_point="", tests=[]))
    if not tasks:
        raise KickoffsError(f"{source}: no kickoff prompts")
    return tasks
