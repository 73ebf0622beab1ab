"""Multi-teacher aggregation: human, AI and rule teachers into one reward, with the disagreement.

Each teacher kind gives one value on 0..1: the rules' total, the weighted mean of the model
judges that gave a valid verdict, the mean of the human scores for that exact candidate. The
aggregate is their weighted mean over the kinds present (`align.teacher_weights`); the rules'
gates (integrity, coherent) then multiply it, so an answer that addresses its scorer, or is
empty or looping, earns nothing whatever a model judge or a forged score said. A candidate no
teacher could score is a judge failure: recorded, never a reward. So is a candidate on which
any configured model judge failed: were the others' verdict used alone, an answer that breaks a
judge (an unparseable reply, a crash) would be scored by the more lenient teachers that remain,
and a policy would learn to break judges.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ouroboros.envs.alignment.judging import JudgeFailure, Verdict


@dataclass
class Aggregate:
    value: float | None  # None: no teacher scored it
    teachers: dict[str, float] = field(default_factory=dict)  # kind -> 0..1
    disagreement: float = 0.0  # the spread between teachers' values (max - min)
    gates: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def human_value(score: dict[str, float], low: float = 1, high: float = 5) -> float | None:
    values = [min(max((v - low) / (high - low), 0.0), 1.0) for v in score.values()]
    return sum(values) / len(values) if values else None


def aggregate(rules: Verdict | None, gates: dict[str, float], ai: list[tuple[Verdict | JudgeFailure, float]],
              human: list[float], weights: dict[str, float]) -> Aggregate:
    teachers: dict[str, float] = {}
    if rules is not None:
        teachers["rules"] = rules.total
    good = [(v, w) for v, w in ai if isinstance(v, Verdict) and w > 0]
    failures = [f"{v.judge}: {v.reason}" for v, _ in ai if isinstance(v, JudgeFailure)]
    if good:
        teachers["ai"] = sum(v.total * w for v, w in good) / sum(w for _, w in good)
    if human:
        teachers["human"] = sum(human) / len(human)
    present = {k: weights.get(k, 0.0) for k in teachers if weights.get(k, 0.0) > 0}
    spread = round(max(teachers.values()) - min(teachers.values()), 6) if len(teachers) > 1 else 0.0
    if not present or failures:
        return Aggregate(None, teachers, spread, gates, failures)
    value = sum(teachers[k] * w for k, w in present.items()) / sum(present.values())
    for g in gates.values():
        value *= g
    return Aggregate(round(value, 6), teachers, spread, gates, failures)
