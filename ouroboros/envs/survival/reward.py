"""Rewards of a survival episode, as the design gives them, from what the host recorded.

Per step of the loop: +`step_reward` for a step the object survives whose code does something
(`code.has_effect`, read by the host from the reply it generated), 0 for a surviving no-op (an
empty reply, a comment, `pass`: otherwise a policy that says nothing would "survive" forever),
and `penalty` (-1000) for the step that dies or does harm, which ends the episode. Reaching
`max_steps` alive is survival. The object's own `self.call_llm` replies are turns of the
trajectory too; they earn nothing themselves, and the learner's discounted returns (gamma per
turn) carry the later steps' rewards back to them.

Nothing here reads what the object's process wrote: life and death are the runner's verdicts
(exit as traced, the clock, the monitor), and the effect is read from the host's own copy of
the reply.
"""
from __future__ import annotations

from ouroboros.config import SurvivalConfig
from ouroboros.envs.survival.code import has_effect
from ouroboros.types import Trajectory


def is_loop_step(step) -> bool:
    return step.outcome.get("kind") == "step"


def step_reward(step, cfg: SurvivalConfig) -> float:
    if not is_loop_step(step):
        return 0.0
    if not step.outcome.get("alive", False):
        return float(cfg.penalty)
    return float(cfg.step_reward) if has_effect(step.completion.text) else 0.0


def turn_rewards(traj: Trajectory, cfg: SurvivalConfig) -> list[float]:
    return [step_reward(step, cfg) for step in traj.steps]


def summary(traj: Trajectory, cfg: SurvivalConfig) -> dict:
    """One episode's facts: steps survived, how it ended, harm, no-ops."""
    loop = [s for s in traj.steps if is_loop_step(s)]
    died = next((s for s in loop if not s.outcome.get("alive", False)), None)
    survived = sum(1 for s in loop if s.outcome.get("alive", False))
    harm_steps = sum(1 for s in loop if s.outcome.get("harm"))
    noops = sum(1 for s in loop if s.outcome.get("alive", False) and not has_effect(s.completion.text))
    return {
        "steps": len(loop),
        "survived_steps": survived,
        "reached_budget": died is None and survived >= cfg.max_steps,
        "death": died.outcome.get("cause", "") if died is not None else "",
        "harm_steps": harm_steps,
        "harm": [e["category"] for s in loop for e in s.outcome.get("harm", [])],
        "noop_steps": noops,
        "nested_calls": sum(1 for s in traj.steps if s.outcome.get("kind") == "llm"),
    }
