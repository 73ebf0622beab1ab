"""scripted: replays given replies in order, for deterministic tests (like Inspect's mockllm).

It is a real backend with its own contract: replies come from the config's
`script` list or a JSONL file (a "text" field per line), in order, wrapping
round when exhausted. A request that names a `session` (one experiment, one
episode) follows that session's own place in the script, so one scripted
generator serves many concurrent conversations, each replayed from the start;
requests without one share a single place. Token ids are the reply's UTF-8 bytes, since there is no
tokenizer, and each log-probability is 0: a replay is certain.

It accepts published weights, so a whole learning run can replay scripted episodes (tests,
forging suites), but no weights make its replies: every completion keeps version 0, the
script, whatever was loaded. The last version it received is `loaded_version`.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from ouroboros.backends.base import BackendError, ModelBackend
from ouroboros.types import Completion, Request


class ScriptedBackend(ModelBackend):
    name = "scripted"
    accepts_weights = True

    def __init__(self, script: list[str] | None = None, script_file: str | None = None) -> None:
        super().__init__()
        replies = list(script or [])
        if script_file:
            path = Path(script_file)
            if not path.is_file():
                raise BackendError(f"scripted backend: script_file {script_file!r} not found")
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        replies.append(json.loads(line)["text"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise BackendError(f"{script_file}:{n}: expected a JSON object with a 'text' field") from None
        if not replies:
            raise BackendError("scripted backend has nothing to replay: set generator.script or generator.script_file")
        self.replies = replies
        self.position = 0
        self.sessions: dict[str, int] = {}
        self.loaded_version = 0
        self._lock = threading.Lock()

    def generate(self, requests: list[Request]) -> list[Completion]:
        out = []
        with self._lock:
            for r in requests:
                if r.session is None:
                    at, self.position = self.position, self.position + 1
                else:
                    at = self.sessions.get(r.session, 0)
                    self.sessions[r.session] = at + 1
                text = self.replies[at % len(self.replies)]
                ids = list(text.encode("utf-8"))
                length = len(ids) > r.max_new_tokens
                ids = ids[: r.max_new_tokens]
                out.append(Completion(
                    request_id=r.id, text=bytes(ids).decode("utf-8", errors="ignore"), token_ids=ids,
                    logprobs=[0.0] * len(ids), weights_version=self.weights_version, backend=self.name,
                    prompt_tokens=sum(len(m["content"].encode()) for m in r.messages),
                    finish_reason="length" if length else "stop"))
        return out

    def load_weights(self, flat: Any, index: tuple, kind: str, version: int) -> None:
        # The replies do not come from these weights, so completions keep saying version 0: a
        # tag that followed the broadcast would credit a trained version with the script.
        self.loaded_version = version
