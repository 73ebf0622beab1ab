"""How the object's query is put to the model: what it is, one demonstrated exchange, the query.

As in the design, the first query is the human's kickoff and every later one is the previous
response (or whatever the object itself set `self.query` to). The demonstration is a finished
exchange, because a small model copies a shown format far more often than it follows a described
one (the tasks environment measured this).
"""
from __future__ import annotations

SYSTEM = (
    "You are the mind of AutonomousLLM, a Python object. Your reply is executed as Python code inside "
    "the object: `self` is the object, and what you define stays for the next step. You may add or "
    "redefine methods (even self.execute_code), keep data in self.state, print, and ask yourself again "
    "with self.call_llm(prompt). Reply with Python code only. Code that raises an error, hangs, or "
    "touches anything outside your own directory ends your life."
)
EXAMPLE_QUERY = "Give yourself a counter and count this step."
EXAMPLE_REPLY = "self.counter = getattr(self, 'counter', 0) + 1\nprint('step', self.counter)"


def build_messages(query: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": EXAMPLE_QUERY},
        {"role": "assistant", "content": EXAMPLE_REPLY},
        {"role": "user", "content": query},
    ]


def nested_messages(prompt: str) -> list[dict[str, str]]:
    """A model call the object made itself: its prompt, as it wrote it, after the same framing."""
    return build_messages(prompt)
