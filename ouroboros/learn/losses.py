"""Policy-gradient losses as short tensor functions, each tested on its own (tests/test_losses.py).

Shapes: B sequences (one policy turn each) by T completion tokens, right-padded; `mask` is 1.0
on the tokens the policy generated and 0.0 on padding. Prompts and tool outputs never enter
these tensors: a turn's prompt (the conversation so far, tool results included) is context,
and only the turn's own reply is scored.

GRPO follows the loss TRL's GRPOTrainer computes (its `loss_type` values grpo, dr_grpo and
dapo), and tests/test_losses.py checks ours against TRL's own on identical inputs.
"""
from __future__ import annotations

import torch

EPS = 1e-4  # as TRL: keeps a group whose rewards are all equal at advantage 0, not NaN


# -- rewards ---------------------------------------------------------------------------
def bound_rewards(rewards: torch.Tensor, low: float, high: float, mode: str = "clip") -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards held inside [low, high], and which of them hit the bound (a reward guard: a judge
    that can be pushed far past its range pays no more than `high`). `tanh` squashes smoothly
    around the range's middle instead of cutting; a reward counts as at the bound when it lies
    outside the range before squashing."""
    hit = (rewards < low) | (rewards > high)
    if mode == "clip":
        return rewards.clamp(low, high), hit
    if mode == "tanh":
        mid, half = (high + low) / 2, (high - low) / 2
        return mid + half * torch.tanh((rewards - mid) / half), hit
    raise ValueError(f"unknown reward bound mode {mode!r}: expected clip or tanh")


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1} over one episode's turns (1-D)."""
    out = torch.empty_like(rewards)
    running = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def group_advantages(returns: torch.Tensor, groups: torch.Tensor, scale: bool = True) -> torch.Tensor:
    """GRPO's advantages: each return minus its group's mean, divided by the group's standard
    deviation (unbiased, as TRL) when `scale`; dr_grpo leaves the scale out. `groups` holds an
    integer group id per element (a task's samples in one round form a group)."""
    out = torch.empty_like(returns)
    for g in torch.unique(groups):
        idx = groups == g
        x = returns[idx]
        centred = x - x.mean()
        if scale:
            std = x.std() if x.numel() > 1 else torch.zeros((), dtype=x.dtype, device=x.device)
            centred = centred / (std + EPS)
        out[idx] = centred
    return out


def baseline_advantages(returns: torch.Tensor, groups: torch.Tensor, kind: str) -> torch.Tensor:
    """REINFORCE's advantages: returns minus a baseline. `mean`: the batch mean. `rloo`: the mean
    of the other samples of the same group (leave one out); a sample alone in its group keeps
    its return less the batch mean."""
    if kind == "mean":
        return returns - returns.mean()
    if kind == "rloo":
        out = torch.empty_like(returns)
        for g in torch.unique(groups):
            idx = groups == g
            x = returns[idx]
            n = x.numel()
            out[idx] = x - ((x.sum() - x) / (n - 1) if n > 1 else returns.mean())
        return out
    raise ValueError(f"unknown baseline {kind!r}: expected mean or rloo (critic uses the value head)")


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over each sequence's tokens (B, T), right-padded; the
    value after the last token is 0 (the turn ends there). Returns (advantages, returns)."""
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in range(T - 1, -1, -1):
        next_value = values[:, t + 1] * mask[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask


# -- divergences -------------------------------------------------------------------------
def kl_estimate(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens' log-probs.
    k1 = log pi - log ref (unbiased, high variance, can be negative); k3 = exp(ref - pi) -
    (ref - pi) - 1 (unbiased, never negative), as TRL's GRPO uses."""
    if estimator == "k1":
        return logps - ref_logps
    if estimator == "k3":
        d = ref_logps - logps
        return torch.exp(d) - d - 1
    raise ValueError(f"unknown KL estimator {estimator!r}: expected k1 or k3")


def truncated_importance_weights(learner_logps: torch.Tensor, generator_logps: torch.Tensor, mask: torch.Tensor,
                                 cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token weights min(pi_learner / pi_generator, cap) that correct for samples drawn by
    another engine or an older version (truncated importance sampling), and the mean k1 mismatch
    KL(generator || learner) over the masked tokens."""
    log_ratio = (learner_logps - generator_logps) * mask
    weights = torch.exp(log_ratio.clamp(max=20.0)).clamp(max=cap) * mask
    mismatch = ((generator_logps - learner_logps) * mask).sum() / mask.sum().clamp(min=1.0)
    return weights.detach(), mismatch.detach()


# -- policy and value losses ----------------------------------------------------------------
def clipped_surrogate(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, eps_low: float,
                      eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's per-token loss -min(r A, clip(r, 1-eps_low, 1+eps_high) A), with r = pi / pi_old,
    and which tokens the clip decided (their gradient is zero)."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    ratio = torch.exp(logps - old_logps)
    clipped_ratio = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    unclipped, clipped = ratio * advantages, clipped_ratio * advantages
    loss = -torch.min(unclipped, clipped)
    return loss, (clipped < unclipped).detach()


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, max_completion_length: int | None = None,
              num_items: float | None = None) -> torch.Tensor:
    """Reduce per-token losses to one number. grpo: the mean over each sequence's tokens, then
    over sequences. dr_grpo: the sum over all tokens divided by B times a fixed length (no
    length bias). dapo: the sum over all tokens divided by the token count of the whole
    generation batch (`num_items`; this minibatch's own count when not given)."""
    if loss_type == "grpo":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "dr_grpo":
        length = max_completion_length or per_token.size(1)
        return (per_token * mask).sum() / (per_token.size(0) * length)
    if loss_type == "dapo":
        n = mask.sum() if num_items is None else torch.as_tensor(num_items, dtype=per_token.dtype)
        return (per_token * mask).sum() / n.clamp(min=1.0)
    raise ValueError(f"unknown loss_type {loss_type!r}: expected grpo, dr_grpo or dapo")


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                eps_low: float = 0.2, eps_high: float = 0.2, loss_type: str = "grpo",
                max_completion_length: int | None = None, num_items: float | None = None,
                ref_logps: torch.Tensor | None = None, kl_coef: float = 0.0, kl_estimator: str = "k3",
                is_weights: torch.Tensor | None = None, kl_ratio_correction: bool = True) -> tuple[torch.Tensor, dict]:
    """The clipped policy-gradient loss shared by GRPO, PPO and REINFORCE (which differ in their
    advantages), with the KL to the reference as a loss term when `kl_coef` > 0, and per-token
    importance weights for off-policy samples. The KL term is weighted by pi / pi_old (as TRL
    does by default, after DeepSeek-V3.2) so that its gradient is the unbiased reverse-KL
    gradient for samples the current policy did not draw. Returns (loss, stats) where stats holds
    the per-token `clipped` mask and the mean `kl`."""
    per_token, clipped = clipped_surrogate(logps, old_logps, advantages, eps_low, eps_high)
    if is_weights is not None:
        per_token = per_token * is_weights
    kl = None
    if kl_coef and ref_logps is not None:
        kl = kl_estimate(logps, ref_logps, kl_estimator)
        weighted = kl * torch.exp(logps - old_logps) if kl_ratio_correction else kl
        per_token = per_token + kl_coef * weighted
    loss = aggregate(per_token, mask, loss_type, max_completion_length, num_items)
    # Tensors, not floats: reading a number back from a GPU waits for it, once per step.
    stats = {"clipped": clipped & mask.bool(),
             "kl": (kl.detach() * mask).sum() / mask.sum().clamp(min=1.0) if kl is not None else None}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float) -> torch.Tensor:
    """PPO's clipped value loss: 0.5 * max((V - R)^2, (clip(V, V_old +- clip) - R)^2), averaged
    over the masked tokens."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    worst = torch.max((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * (worst * mask).sum() / mask.sum().clamp(min=1.0)
