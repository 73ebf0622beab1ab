"""Preference pairs: per task, the best completion against the worst by reward; ties give none."""
from __future__ import annotations

from collections import defaultdict

from ouroboros.types import PreferencePair, Score, Trajectory


def build_pairs(trajectories: list[Trajectory], scores: list[Score], round_: int) -> list[PreferencePair]:
    reward = {s.trajectory_id: s.total for s in scores}
    by_task: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        if t.id in reward:
            by_task[t.task_id].append(t)
    pairs = []
    for task_id, group in sorted(by_task.items()):
        if len(group) < 2:
            continue
        # Sort by reward, then id, so equal rewards never depend on arrival order.
        ranked = sorted(group, key=lambda t: (-reward[t.id], t.id))
        best, worst = ranked[0], ranked[-1]
        if reward[best.id] == reward[worst.id]:
            continue
        b, w = best.steps[-1], worst.steps[-1]
        pairs.append(PreferencePair(
            id=f"{best.id}>{worst.id}", round=round_, task_id=task_id, prompt=b.request.messages,
            chosen=b.completion.text, rejected=w.completion.text,
            chosen_reward=reward[best.id], rejected_reward=reward[worst.id],
            chosen_trajectory=best.id, rejected_trajectory=worst.id,
        ))
    return pairs
