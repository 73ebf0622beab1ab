"""Per-phase metrics of scored episodes, the default an environment reports each round."""
from __future__ import annotations

import math

from ouroboros.types import Score, Trajectory


def mean_ci95(values: list[float]) -> list[float] | None:
    """A normal-approximation 95% interval of the mean: [low, high]."""
    n = len(values)
    if n < 2:
        return None
    m = sum(values) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in values) / (n - 1))
    h = 1.96 * sd / math.sqrt(n)
    return [m - h, m + h]


def rate_ci95(successes: float, n: int) -> list[float] | None:
    """Wilson's 95% interval of a rate (sound near 0 and 1, where small runs live)."""
    if n == 0:
        return None
    z = 1.96
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def phase_metrics(trajectories: list[Trajectory], scores: list[Score], pairs: int) -> dict:
    """valid_rate: the mean of the judges' `valid` component (the share of valid replies, which
    for one-reply tasks is the share of episodes); pass_rate: episodes the judge marked passed."""
    n = len(trajectories)
    by_id = {s.trajectory_id: s for s in scores}
    valid = sum(by_id[t.id].components.get("valid", 0.0) for t in trajectories if t.id in by_id)
    passed = sum(1 for t in trajectories if t.id in by_id and by_id[t.id].passed)
    rewards = [by_id[t.id].total for t in trajectories if t.id in by_id]
    versions = sorted({s.completion.weights_version for t in trajectories for s in t.steps})
    return {
        "samples": n,
        "valid_rate": valid / n if n else 0.0,
        "pass_rate": passed / n if n else 0.0,
        "reward_mean": sum(rewards) / len(rewards) if rewards else 0.0,
        "reward_ci95": mean_ci95(rewards),
        "valid_ci95": rate_ci95(valid, n),
        "pass_ci95": rate_ci95(passed, n),
        "tokens": sum(s.completion.completion_tokens for t in trajectories for s in t.steps),
        "turns": sum(len(t.steps) for t in trajectories),
        "weights_versions": versions,
        "pairs": pairs,
    }
