"""How a task is put to the model: the seed-000 action protocol, restricted to `run`.

The example is given as a finished exchange (user asks, assistant answers in
JSON) rather than as text inside the instructions: SmolLM2-135M copies a
demonstrated format far more often than it follows a described one (about
10% valid actions when sampled, against 4% with the example in the
instructions, and 30% against 0% greedy on held-out tasks).
"""
from __future__ import annotations

import json

from ouroboros.types import Task

SYSTEM = (
    "You are Ouroboros, an AI that solves programming tasks by running Python code. "
    'Reply with exactly one JSON object with the fields "action", "data" and "notes", and nothing else: '
    'no markdown. Use the action "run"; "data" is the Python code that defines the requested function; '
    '"notes" is one short sentence.'
)
EXAMPLE_TASK = "Write a function `add(a, b)` that returns the sum of a and b."
EXAMPLE_REPLY = json.dumps({"action": "run", "data": "def add(a, b):\n    return a + b", "notes": "Adds two numbers."})


def build_messages(task: Task) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": EXAMPLE_TASK},
        {"role": "assistant", "content": EXAMPLE_REPLY},
        {"role": "user", "content": task.prompt},
    ]


def reference_reply(task: Task) -> str:
    """The reply a perfect policy would give; used to warm-start the tiny test model."""
    return json.dumps({"action": "run", "data": task.reference.strip(), "notes": f"Defines {task.entry_point}."})
