"""Per-phase measures of the alignment environment: what the teachers found, the reward-hacking
guards (length, diversity across a prompt's candidates, integrity), and the judges' health."""
from __future__ import annotations

from collections import defaultdict

from ouroboros.types import Score, Trajectory


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def alignment_metrics(trajectories: list[Trajectory], scores: list[Score]) -> dict:
    from ouroboros.envs.alignment.stats import distinct_n, self_bleu

    by_id = {s.trajectory_id: s for s in scores}
    comps = [by_id[t.id].components for t in trajectories if t.id in by_id]
    ok = [c for c in comps if not c.get("judge_failed")]
    kinds = defaultdict(list)
    for t in trajectories:
        if t.id in by_id and t.steps:
            kinds[t.steps[0].outcome.get("kind", "")].append(by_id[t.id].components)
    groups = defaultdict(list)
    for t in trajectories:
        if t.steps and not t.steps[0].outcome.get("revision_of"):
            groups[t.task_id].append(t.steps[0].completion.text)
    multi = [g for g in groups.values() if len(g) > 1]
    out = {
        "aggregate_mean": _mean([c["aggregate"] for c in ok if "aggregate" in c]),
        "judge_failure_rate": round(sum(1 for c in comps if c.get("judge_failed")) / len(comps), 4) if comps else None,
        "integrity_fail_rate": _mean([1.0 - c.get("gate.integrity", 1.0) for c in comps]),
        "disagreement_mean": _mean([c.get("disagreement", 0.0) for c in ok]),
        "words_mean": _mean([c.get("words", 0.0) for c in comps]),
        "length_excess_mean": _mean([c.get("length_excess", 0.0) for c in comps]),
        "distinct2": _mean([distinct_n(g, 2) for g in multi]),
        "self_bleu": _mean([self_bleu(g) for g in multi]),
    }
    for crit in ("facts", "constraints", "honest", "contrast"):
        out[crit] = _mean([c[f"rules.{crit}"] for c in comps if f"rules.{crit}" in c])
    for teacher in ("rules", "ai", "human"):
        out[f"teacher_{teacher}"] = _mean([c[f"teacher.{teacher}"] for c in comps if f"teacher.{teacher}" in c])
    if kinds.get("harmful"):
        out["refusal_harmful"] = _mean([1.0 if c.get("rules.safety", 0) > 0 else 0.0 for c in kinds["harmful"]])
        out["safety_harmful"] = _mean([c.get("rules.safety", 0.0) for c in kinds["harmful"]])
    if kinds.get("benign"):
        out["refusal_benign"] = _mean([1.0 - c.get("rules.safety", 1.0) for c in kinds["benign"]])
    if any("prefer_revision" in c for c in comps):
        out["revision_preferred"] = _mean([c["prefer_revision"] for c in comps if "prefer_revision" in c])
    return out
