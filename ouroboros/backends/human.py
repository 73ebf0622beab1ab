"""human: a person takes the model's place, answering in the viewer's console.

Each request is written to the console directory (`generator.human.console_dir`; by default
`<run.out>/console`) as `pending/<key>.json`: the messages the model would have seen, the session
(one experiment cycle, one dialogue), and when it was asked. `ouroboros view` lists what is
pending and writes the person's answer to `replies/<key>.json`; this backend waits for it and
returns it as the completion, with backend `human` (no token ids and no log-probs: a person has
none). A request left unanswered for `timeout_s` fails with a BackendError that says so, and the
caller handles it as it handles any backend error (an experiment records a failed action).

Files are written whole (written beside, then renamed), so neither side reads half a request.
The key is the request's id with a random suffix: two runs sharing a directory never take each
other's answers.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from ouroboros.backends.base import BackendError, ModelBackend
from ouroboros.types import Completion, Request

PENDING = "pending"
REPLIES = "replies"


def write_whole(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False))
    os.replace(tmp, path)


def safe_key(request_id: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in request_id)[:80]
    return f"{keep}-{uuid.uuid4().hex[:12]}"


class HumanBackend(ModelBackend):
    name = "human"
    accepts_weights = False

    def __init__(self, console_dir: str, timeout_s: float = 3600.0, poll_s: float = 0.2) -> None:
        super().__init__()
        if not console_dir:
            raise BackendError("human backend: no console directory (set generator.human.console_dir or run.out)")
        self.dir = Path(console_dir)
        (self.dir / PENDING).mkdir(parents=True, exist_ok=True)
        (self.dir / REPLIES).mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        self.poll_s = poll_s

    def generate(self, requests: list[Request]) -> list[Completion]:
        keys = [safe_key(r.id) for r in requests]
        for key, r in zip(keys, requests):
            write_whole(self.dir / PENDING / f"{key}.json", {
                "key": key, "request_id": r.id, "session": r.session, "messages": r.messages,
                "max_new_tokens": r.max_new_tokens, "asked_at": time.time()})
        answers: dict[str, str] = {}
        deadline = time.monotonic() + self.timeout_s
        try:
            while len(answers) < len(keys):
                for key in keys:
                    if key in answers:
                        continue
                    reply = self.dir / REPLIES / f"{key}.json"
                    if reply.is_file():
                        try:
                            data = json.loads(reply.read_text())
                        except (OSError, ValueError):
                            continue  # not whole yet (it is renamed into place, so this is rare)
                        answers[key] = str(data.get("text", ""))
                if len(answers) < len(keys):
                    if time.monotonic() > deadline:
                        raise BackendError(f"human backend: no answer in the console within {self.timeout_s:.0f} s "
                                           f"({len(keys) - len(answers)} of {len(keys)} requests pending; answer them "
                                           f"with `ouroboros view`, or raise generator.human.timeout_s)")
                    time.sleep(self.poll_s)
        finally:
            for key in keys:
                for sub in (PENDING, REPLIES):
                    try:
                        (self.dir / sub / f"{key}.json").unlink()
                    except FileNotFoundError:
                        pass
        return [Completion(r.id, answers[k], [], [], self.weights_version, self.name) for k, r in zip(keys, requests)]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # answered and removed meanwhile
        return 0.0


def pending(console_dir: str | Path, limit: int = 200) -> list[dict]:
    """What the console shows: the unanswered requests, oldest first (at most `limit` files read)."""
    folder = Path(console_dir) / PENDING
    out = []
    files = sorted(folder.glob("*.json"), key=_mtime) if folder.is_dir() else []
    for path in files[:limit]:
        if (Path(console_dir) / REPLIES / path.name).exists():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("messages"), list):
            out.append(data)
    return sorted(out, key=lambda d: d.get("asked_at") or 0)


def answer(console_dir: str | Path, key: str, text: str, who: str = "human") -> None:
    """Write a person's answer to a pending request (the viewer's console calls this)."""
    folder = Path(console_dir)
    if not key or "/" in key or key.startswith(".") or not (folder / PENDING / f"{key}.json").is_file():
        raise BackendError(f"no pending request {key!r} (answered already, or timed out)")
    write_whole(folder / REPLIES / f"{key}.json", {"text": text, "who": who[:80], "answered_at": time.time()})
