"""The dialogue stage in the browser: a person talks to the policy (or an API model) and saves the
conversation to the alignment data's dialogs.jsonl, exactly as the terminal chat does.

One `DialogueSession` per browser session, over one model in this process. Calls to the model
are serialized: one local model answers one conversation at a time, and two tabs must not
interleave their turns in one dialog.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

MAX_TEXT = 4000  # characters a person may send in one turn
MAX_TURNS = 60  # turns of one conversation (the prompt grows with each)
MAX_SESSIONS = 64  # open conversations; the oldest untouched one is dropped past it


class ChatError(ValueError):
    """What the person did cannot be done (empty text, too long, nothing to save); said on the page."""


class ChatDesk:
    def __init__(self, model: Callable, save: Callable[[list], Path], label: str,
                 system: str = "You are a helpful assistant.") -> None:
        self.model = model
        self._save = save
        self.label = label
        self.system = system
        self._sessions: dict[str, tuple[float, object]] = {}
        self._lock = threading.Lock()  # the model and the session table

    def turns(self, key: str) -> list[dict]:
        with self._lock:
            held = self._sessions.get(key)
            return list(held[1].turns) if held else []

    def say(self, key: str, text: str) -> str:
        from ouroboros.envs.alignment.stages import DialogueSession

        text = text.replace("\r\n", "\n").strip()
        if not text:
            raise ChatError("say something first: the message is empty")
        if len(text) > MAX_TEXT:
            raise ChatError(f"the message has {len(text)} characters; at most {MAX_TEXT} are taken in one turn")
        with self._lock:
            held = self._sessions.get(key)
            session = held[1] if held else DialogueSession(self.model, self.system,
                                                           dialog_id=f"web-{time.strftime('%Y%m%d-%H%M%S')}-"
                                                                     f"{key[:6]}")
            if len(session.turns) >= MAX_TURNS:
                raise ChatError(f"this conversation has {MAX_TURNS} turns: save it and start a new one")
            try:
                answer = session.reply(text)
            except Exception as exc:  # noqa: BLE001 - the model's failure is the page's message; the turns stay
                session.turns.pop()  # the person's turn had no answer: it can be sent again
                raise ChatError(f"the model did not answer ({type(exc).__name__}: {exc}); send it again, or "
                                f"save what there is") from None
            self._sessions[key] = (time.monotonic(), session)
            if len(self._sessions) > MAX_SESSIONS:
                oldest = min(self._sessions, key=lambda k: self._sessions[k][0])
                del self._sessions[oldest]
            return answer

    def save(self, key: str) -> tuple[Path, str]:
        """Append this conversation to dialogs.jsonl and start a new one; returns the file and the
        dialog id."""
        with self._lock:
            held = self._sessions.get(key)
            if not held or not held[1].turns:
                raise ChatError("nothing was said, so no dialog was saved")
            dialog = held[1].dialog()
            path = self._save([dialog])
            del self._sessions[key]
            return path, dialog.dialog_id

    def discard(self, key: str) -> None:
        with self._lock:
            self._sessions.pop(key, None)
