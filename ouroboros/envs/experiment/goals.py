"""Research goals of the `experiment` environment when it runs inside `ouroboros run`.

Standalone cycles (`ouroboros experiment`) pursue the config's `experiment.goal`, or one the
model picks. A learning run needs episodes it can compare and check, so each goal here is a
small computational question with a known answer: several cycles on one goal start from the
same state, and the judge can tell a measured answer from a wrong or invented one. Every
answer is computed by `tests/test_experiment_env.py`, not typed in.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).parent / "data" / "goals.jsonl"


@dataclass(frozen=True)
class Goal:
    id: str
    split: str  # "train" or "heldout"
    goal: str  # what the model is asked to find out ({goal} in the prompt)
    answer: float  # the known result, hidden from the model
    rel_tol: float = 0.0  # relative tolerance: 0 for exact counts, a few percent for estimates
    reference: str = ""  # a program that prints the answer: checks the answer, warm-starts the tiny model

    def matches(self, value: float) -> bool:
        if self.rel_tol == 0:
            return abs(value - self.answer) < 1e-9 * max(1.0, abs(self.answer))
        return abs(value - self.answer) <= self.rel_tol * abs(self.answer)


@lru_cache(maxsize=1)
def _load() -> tuple[Goal, ...]:
    goals = []
    for line in DATA.read_text().splitlines():
        if line.strip():
            goals.append(Goal(**json.loads(line)))
    return tuple(goals)


def load_goals(split: str | None = None) -> list[Goal]:
    return [g for g in _load() if split is None or g.split == split]
