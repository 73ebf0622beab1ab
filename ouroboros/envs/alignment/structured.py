"""Structured queries with repair and retry, for any JSON shape (InterLab's idea, as the experiment
environment's action queries use it): ask, validate, show the model its error, ask again."""
from __future__ import annotations

import json
from typing import Callable


def first_object(text: str) -> tuple[dict | None, str]:
    """The first JSON object in `text` (fenced or bare; raw newlines in strings tolerated)."""
    decoder = json.JSONDecoder(strict=False)
    start = (text or "").find("{")
    error = "no JSON object in the reply"
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text[start:])
            if isinstance(value, dict):
                return value, ""
            error = f"expected a JSON object, got {type(value).__name__}"
        except json.JSONDecodeError as exc:
            error = f"invalid JSON: {exc.msg}"
        except RecursionError:
            error = "invalid JSON: nested too deeply"
        start = text.find("{", start + 1)
    return None, error


def ask_json(generate: Callable[[list[dict]], str], messages: list[dict], check: Callable[[dict], str],
             retries: int = 2) -> tuple[dict | None, list[dict]]:
    """Ask until `check(obj)` returns "" (valid) or `retries` re-asks are spent. Returns the object (or
    None) and every attempt as {"reply", "error"}, for the trace."""
    convo = list(messages)
    attempts = []
    for attempt in range(retries + 1):
        reply = generate(convo)
        obj, error = first_object(reply)
        if obj is not None:
            error = check(obj)
        attempts.append({"reply": reply, "error": error})
        if obj is not None and not error:
            return obj, attempts
        convo = convo + [{"role": "assistant", "content": reply},
                         {"role": "user", "content": f"That reply is not valid: {error}. Reply again with only the "
                                                     "JSON object asked for."}]
    return None, attempts
