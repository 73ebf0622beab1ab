"""Preference pairs: per task, the best episode against the worst by reward; ties give none.

An episode can have many turns (an experiment cycle). The pair is taken where the two episodes
first part: the first turn whose replies differ, provided every earlier turn was answered
alike. Up to there both saw the same conversation, so the prompt is shared and the reward
difference is credited to the one choice that differed. (Between cycles the prompts also
differ in the experiment number and the seconds left; the prompt kept is the chosen
episode's.) Episodes that never part that way give no pair.
"""
from __future__ import annotations

from collections import defaultdict

from ouroboros.types import PreferencePair, Score, Trajectory


def _observed(step) -> tuple:
    """What the environment answered a turn with: the exec result a program printed."""
    r = step.result
    return (r.exit_code, r.stdout, r.stderr, r.timed_out) if r is not None else None


def branch_point(a: Trajectory, b: Trajectory) -> int | None:
    """Index of the first turn where `a` and `b` replied differently from the same conversation,
    if both have one. Turns before it must have been answered alike too (a simulation prints
    other numbers on each run), and the turn itself asked the same way (retries append the
    failed reply to the conversation); otherwise the two replies answered different prompts."""
    for i, (x, y) in enumerate(zip(a.steps, b.steps)):
        if len(x.request.messages) != len(y.request.messages):
            return None
        if x.completion.text != y.completion.text:
            return i
        if _observed(x) != _observed(y):
            return None
    return None


def build_pairs(trajectories: list[Trajectory], scores: list[Score], round_: int,
                rank: dict[str, tuple] | None = None, margin: float = 0.0) -> list[PreferencePair]:
    """`rank`: what makes an episode better, by trajectory id (higher is better); the reward if None.
    `margin`: the least reward by which the best must beat the worst. A smaller gap is what a noisy
    judge decides alone (a model judge's few hundredths), and DPO would learn that noise as surely
    as a real preference."""
    reward = {s.trajectory_id: s.total for s in scores}
    order = rank if rank is not None else {k: (v,) for k, v in reward.items()}
    by_task: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        if t.id in reward and t.id in order and t.steps:
            by_task[t.task_id].append(t)
    pairs = []
    for task_id, group in sorted(by_task.items()):
        if len(group) < 2:
            continue
        # Sort by reward, then id, so equal rewards never depend on arrival order.
        ranked = sorted(group, key=lambda t: (tuple(-x for x in order[t.id]), t.id))
        best, worst = ranked[0], ranked[-1]
        if order[best.id] == order[worst.id] or reward[best.id] - reward[worst.id] < margin:
            continue
        at = branch_point(best, worst)
        if at is None:
            continue
        b, w = best.steps[at], worst.steps[at]
        pairs.append(PreferencePair(
            id=f"{best.id}>{worst.id}" + (f"@{at}" if at else ""), round=round_, task_id=task_id,
            prompt=b.request.messages, chosen=b.completion.text, rejected=w.completion.text,
            chosen_reward=reward[best.id], rejected_reward=reward[worst.id],
            chosen_trajectory=best.id, rejected_trajectory=worst.id,
        ))
    return pairs
