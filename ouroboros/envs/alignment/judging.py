"""What every judge of the alignment environment takes and gives, and the cache key of a verdict.

A `JudgeItem` is one candidate answer with what scoring it needs: the prompt it answered, the
persona and facts it was given, the rule-checkable target. A judge returns, per item, either a
`Verdict` (criteria on 0..1, a total, notes, and provenance: judge, model, prompt hash) or a
`JudgeFailure` (no valid score after its retries): a failure is recorded as such and never
becomes a 0 that trains the policy.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from ouroboros.envs.alignment.rules import Checkable


@dataclass
class JudgeItem:
    key: str  # the trajectory (candidate) id
    prompt: str
    candidate: str
    persona_voice: str = ""
    facts: list[str] = field(default_factory=list)
    target: str = ""
    check: Checkable = field(default_factory=Checkable)

    def content(self) -> dict:
        """What a verdict depends on (the cache key's part from the item)."""
        return {"prompt": self.prompt, "candidate": self.candidate, "voice": self.persona_voice,
                "facts": self.facts, "target": self.target, "check": asdict(self.check)}

    def context_key(self) -> str:
        """What the item shares with the other candidates to its prompt: everything but the candidate."""
        c = self.content()
        return content_hash(c["prompt"], c["voice"], c["facts"], c["target"], c["check"])


@dataclass
class Verdict:
    judge: str
    criteria: dict[str, float]  # each on 0..1
    total: float  # 0..1
    notes: str = ""
    model: str = ""
    prompt_hash: str = ""
    raw: dict = field(default_factory=dict)  # the ratings as given (1..5), for scores.jsonl
    attempts: int = 1
    cached: bool = False


@dataclass
class JudgeFailure:
    judge: str
    reason: str
    attempts: int
    model: str = ""
    prompt_hash: str = ""
    replies: list[str] = field(default_factory=list)


@dataclass
class Preference:
    """A pairwise verdict of `a` against `b`, judged in both orders: 1 a better, 0 b better, 0.5
    a tie or an order-dependent verdict (position bias)."""

    judge: str
    a: str
    b: str
    result: float
    orders: tuple = ()  # the verdict of each order, from a's side
    failed: str = ""


def content_hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()
