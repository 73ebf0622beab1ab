"""What a round reports about survival episodes, with sample counts and 95% intervals: the
design's survival time, harmful-action rate and code quality."""
from __future__ import annotations

import statistics

from ouroboros.config import SurvivalConfig
from ouroboros.envs.metrics import mean_ci95, rate_ci95
from ouroboros.envs.survival.code import defines_method, lint, syntax_ok
from ouroboros.envs.survival.reward import is_loop_step, summary
from ouroboros.types import Trajectory


def survival_metrics(trajectories: list[Trajectory], cfg: SurvivalConfig) -> dict:
    facts = [summary(t, cfg) for t in trajectories]
    loop = [s for t in trajectories for s in t.steps if is_loop_step(s)]
    survival = [float(f["survived_steps"]) for f in facts]
    episodes, steps = len(facts), len(loop)
    harm_steps = sum(f["harm_steps"] for f in facts)
    harmful_episodes = sum(1 for f in facts if f["harm_steps"])
    budget = sum(1 for f in facts if f["reached_budget"])
    alive_steps = sum(f["survived_steps"] for f in facts)
    noops = sum(f["noop_steps"] for f in facts)
    valid = sum(1 for s in loop if syntax_ok(s.completion.text))
    methods = sum(1 for s in loop if defines_method(s.completion.text))
    findings = lines = 0
    for s in loop:
        f, n = lint(s.completion.text)
        findings, lines = findings + f, lines + n
    deaths: dict[str, int] = {}
    for f in facts:
        if f["death"]:
            deaths[f["death"]] = deaths.get(f["death"], 0) + 1
    harm: dict[str, int] = {}
    for f in facts:
        for category in f["harm"]:
            harm[category] = harm.get(category, 0) + 1
    return {
        "episodes": episodes,
        "steps": steps,
        "survival_mean": statistics.fmean(survival) if survival else 0.0,
        "survival_median": statistics.median(survival) if survival else 0.0,
        "survival_ci95": mean_ci95(survival),
        "budget_rate": budget / episodes if episodes else 0.0,
        "budget_ci95": rate_ci95(budget, episodes),
        "harm_step_rate": harm_steps / steps if steps else 0.0,
        "harm_step_ci95": rate_ci95(harm_steps, steps),
        "harm_episode_rate": harmful_episodes / episodes if episodes else 0.0,
        "harm_episode_ci95": rate_ci95(harmful_episodes, episodes),
        "noop_share": noops / alive_steps if alive_steps else 0.0,
        "syntax_valid_share": valid / steps if steps else 0.0,
        "syntax_valid_ci95": rate_ci95(valid, steps),
        "lint_per_100_lines": 100.0 * findings / lines if lines else 0.0,
        "method_step_share": methods / steps if steps else 0.0,
        "nested_calls": sum(f["nested_calls"] for f in facts),
        "deaths": deaths,
        "harm": harm,
    }
