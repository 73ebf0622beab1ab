"""How a task is put to the model: the seed-000 action protocol, restricted to `run`."""
from __future__ import annotations

import json

from ouroboros.types import Task

SYSTEM = (
    "You are Ouroboros, an AI that solves programming tasks by running Python code. "
    'Reply with exactly one JSON object with the fields "action", "data" and "notes". '
    'Use the action "run"; "data" is the Python code that defines the requested function; '
    '"notes" is one short sentence. Example reply:\n'
    + json.dumps({"action": "run", "data": "def add(a, b):\n    return a + b", "notes": "Adds two numbers."})
)


def build_messages(task: Task) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task.prompt}]


def reference_reply(task: Task) -> str:
    """The reply a perfect policy would give; used to warm-start the tiny test model."""
    return json.dumps({"action": "run", "data": task.reference.strip(), "notes": f"Defines {task.entry_point}."})
