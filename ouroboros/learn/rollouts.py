"""A round's scored episodes as policy turns, the batch a policy-gradient learner trains on.

Every turn the policy generated becomes a `Turn` with the reward the environment says it
earned (`Environment.turn_rewards`). Turns whose tokens are unknown (a reply redacted for
carrying a secret, a request the engine refused) stay in the batch so that their rewards still
count in the discounted returns of the turns before them; the learner does not train on them.
"""
from __future__ import annotations

import math

from ouroboros.types import Score, Trajectory, Turn


def policy_turns(trajectories: list[Trajectory], scores: list[Score], env) -> list[Turn]:
    by_id = {s.trajectory_id: s for s in scores}
    turns = []
    for t in trajectories:
        s = by_id.get(t.id)
        if s is None or not t.steps or not env.trains_on(s):
            continue
        rewards = env.turn_rewards(t, s)
        for step, reward in zip(t.steps, rewards):
            c = step.completion
            turns.append(Turn(
                id=f"{t.id}#{step.index}", trajectory_id=t.id, step=step.index, round=t.round, task_id=t.task_id,
                prompt=step.request.messages, token_ids=list(c.token_ids), logprobs=list(c.logprobs),
                weights_version=c.weights_version, reward=float(reward), episode_reward=float(s.total),
                finish_reason=c.finish_reason))
    return turns


def trainable(turn: Turn) -> bool:
    return bool(turn.token_ids) and not (turn.logprobs and len(turn.logprobs) != len(turn.token_ids))


def nonfinite(turns: list[Turn]) -> list[str]:
    """Ids of turns whose reward or log-probs are NaN or infinite: a batch holding any is refused
    whole, since one such value turns every gradient into NaN."""
    bad = []
    for t in turns:
        if not math.isfinite(t.reward) or not math.isfinite(t.episode_reward) \
                or any(not math.isfinite(x) for x in t.logprobs):
            bad.append(t.id)
    return bad
