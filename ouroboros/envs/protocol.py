"""The seed-000 action protocol: a reply is one JSON object {"action", "data", "notes"}.

Parsing never raises. A reply that cannot be read as an action becomes an
invalid `Action` whose `error` says exactly why, so the store records it and a
later turn can show the model what to fix.
"""
from __future__ import annotations

import json
import re

from ouroboros.types import Action

# Our names, with the seed's names accepted as aliases.
ACTIONS = ("run", "environment", "search", "web_search", "load_url", "finalize")
ALIASES = {"dockerfile": "environment", "google": "web_search", "loadurl": "load_url"}

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder(strict=False)  # strict=False: raw newlines inside strings are a common fault


def _candidates(text: str):
    """JSON texts to try, best first: fenced blocks, then each '{' in the bare text."""
    for match in _FENCE.finditer(text):
        yield match.group(1).strip()
    start = text.find("{")
    while start != -1:
        yield text[start:]
        start = text.find("{", start + 1)


def _first_object(text: str) -> tuple[dict | None, str]:
    """The first JSON object with an "action" key; else the first object (its error names what
    is missing). A preamble object such as {"thought": ...} before the action does not hide it."""
    last_error = "no JSON object found in the reply"
    first: dict | None = None
    for candidate in _candidates(text):
        try:
            value, _ = _DECODER.raw_decode(candidate)
        except json.JSONDecodeError as exc:
            last_error = f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            continue
        except RecursionError:  # a reply of thousands of nested brackets must not end the caller
            last_error = "invalid JSON: nested too deeply"
            continue
        if isinstance(value, dict):
            if "action" in value:
                return value, ""
            first = value if first is None else first
            continue
        last_error = f"expected a JSON object, got {type(value).__name__}"
    return (first, "") if first is not None else (None, last_error)


def parse_action(text: str, allowed: tuple[str, ...] = ACTIONS) -> Action:
    obj, error = _first_object(text or "")
    if obj is None:
        return Action(name=None, data="", notes="", valid=False, error=error)
    raw_name = obj.get("action")
    if not isinstance(raw_name, str):
        return Action(None, "", "", False, 'missing "action": expected a string field "action"')
    name = ALIASES.get(raw_name.strip().lower(), raw_name.strip().lower())
    data, notes = obj.get("data", ""), obj.get("notes", "")
    if name not in allowed:
        return Action(name, "", "", False, f'unknown action {raw_name!r}: expected one of {", ".join(allowed)}')
    if not isinstance(data, str):
        return Action(name, "", "", False, f'"data" must be a string, got {type(data).__name__}')
    if not isinstance(notes, str):
        notes = json.dumps(notes)
    if name in ("run", "environment", "search", "web_search", "load_url") and not data.strip():
        return Action(name, data, notes, False, f'action "{name}" needs non-empty "data"')
    return Action(name=name, data=data, notes=notes, valid=True)
