"""GRPO, PPO and REINFORCE updates on the LoRA policy, from a round's policy turns.

One update, top to bottom:
1. refuse the batch if a reward or log-prob is NaN or infinite (nothing is trained);
2. drop turns more than `max_staleness` versions old, and turns with no tokens;
3. guard the rewards (bound them, shape them against the reference), discount them over each
   episode's turns into returns;
4. tokenize each turn as prompt + sampled tokens; only the sampled tokens are scored, so the
   prompt (and every tool output inside it) is masked out;
5. a no-grad pass gives the learner's log-probs at this version (the "old" policy of the clip,
   and the yardstick of the generator's log-probs), the reference's when a KL is asked for, and
   the value head's estimates for PPO's GAE;
6. `epochs` passes of minibatches: the clipped policy loss of `learn/losses.py`, weighted by
   truncated importance ratios between the learner and the generator, plus the value loss.

What the viewer needs is returned per turn: the learner step that first consumed it, its
per-token learner log-probs beside the generator's, and which tokens were clipped or masked.
"""
from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass

from ouroboros.learn import losses
from ouroboros.learn.rollouts import nonfinite, trainable
from ouroboros.types import Turn


class BatchRefused(ValueError):
    """A batch the learner will not train on; `ids` names the offending samples."""

    def __init__(self, message: str, ids: list[str]) -> None:
        super().__init__(message)
        self.ids = ids


@dataclass
class Encoded:
    turn: Turn
    input_ids: list[int]
    n_prompt: int
    n_scored: int  # sampled tokens inside max_length; the rest are masked out
    ret: float = 0.0
    raw_reward: float = 0.0
    reward: float = 0.0


class PolicyGradient:
    """The update of one algorithm (grpo, ppo or reinforce) on a learner's model. The model,
    optimizer and value head belong to the Learner actor; this holds the per-task reference
    returns that reference shaping subtracts."""

    def __init__(self, cfg, model, tokenizer, device: str, value_head=None, autocast=None) -> None:
        self.cfg = cfg
        self.l = cfg.learner
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.value_head = value_head
        self.autocast = autocast  # a context factory (bf16 autocast on GPU) or None
        self.reference_return: dict[str, float] = {}

    # -- 1-3: the batch and its returns ----------------------------------------------------
    def prepare(self, turns: list[Turn], version: int) -> tuple[list[Encoded], dict]:
        import torch

        from ouroboros.backends.local_model import chat_prompt_ids

        bad = nonfinite(turns)
        if bad:
            raise BatchRefused(f"{len(bad)} sample(s) carry a NaN or infinite reward or log-prob: "
                               + ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""), bad)
        l = self.l
        stats = {"turns": len(turns), "stale_dropped": 0, "untrainable": 0, "too_long": 0, "truncated": 0}
        # Returns first, over every turn of each episode (an untrainable turn's reward still counts).
        by_episode: dict[str, list[Turn]] = defaultdict(list)
        for t in turns:
            by_episode[t.trajectory_id].append(t)
        raw = torch.tensor([t.reward for t in turns], dtype=torch.float64)
        if l.reward_bound is not None:
            bounded, hit = losses.bound_rewards(raw, *l.reward_bound, l.reward_bound_mode)
        else:
            bounded, hit = raw, torch.zeros_like(raw, dtype=torch.bool)
        stats["reward_bound_hit_rate"] = float(hit.double().mean()) if len(turns) else 0.0
        position = {t.id: i for i, t in enumerate(turns)}
        returns: dict[str, float] = {}
        first_returns: dict[str, list[float]] = defaultdict(list)
        for episode in by_episode.values():
            episode.sort(key=lambda t: t.step)
            r = torch.stack([bounded[position[t.id]] for t in episode])
            g = losses.discounted_returns(r, l.gamma)
            for t, x in zip(episode, g.tolist()):
                returns[t.id] = x
            first_returns[episode[0].task_id].append(float(g[0]))
        if l.reward_shaping == "reference":
            # The reference is the mean return the oldest policy that met the task earned on it.
            for task, values in first_returns.items():
                self.reference_return.setdefault(task, sum(values) / len(values))
            for t in turns:
                returns[t.id] -= self.reference_return[t.task_id]

        encoded = []
        for t in turns:
            if not trainable(t):
                stats["untrainable"] += 1
                continue
            if version - t.weights_version > l.max_staleness:
                stats["stale_dropped"] += 1
                continue
            prompt = chat_prompt_ids(self.tokenizer, t.prompt)
            room = l.max_length - len(prompt)
            if room < 1:
                stats["too_long"] += 1
                continue
            n_scored = min(len(t.token_ids), room)
            stats["truncated"] += n_scored < len(t.token_ids)
            encoded.append(Encoded(t, prompt + t.token_ids[:n_scored], len(prompt), n_scored, ret=returns[t.id],
                                   raw_reward=t.reward, reward=float(bounded[position[t.id]])))
        stats["trained"] = len(encoded)
        return encoded, stats

    # -- the model's view of a minibatch ------------------------------------------------------
    def _collate(self, batch: list[Encoded]):
        import torch

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        L = max(len(e.input_ids) for e in batch)
        T = max(e.n_scored for e in batch)
        # Padded on the right, with no padding mask: under the causal mask no real token sees
        # the padding after it, and no padded position is scored. The hidden states of the real
        # tokens are the same bit for bit, and attention takes its causal path (no mask built,
        # the upper triangle skipped): the decoder's forward and backward on 8 rows of up to 400
        # tokens, 9% faster on SmolLM2 and 14% on the tiny test model (the learner benchmark's
        # shorter turns showed no change beyond its noise).
        ids = torch.full((len(batch), L), pad, dtype=torch.long)
        # The hidden state at position p predicts token p + 1: a turn's k-th sampled token is
        # predicted at n_prompt + k - 1.
        pos = torch.zeros((len(batch), T), dtype=torch.long)
        targets = torch.full((len(batch), T), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), T), dtype=torch.float32)
        for i, e in enumerate(batch):
            n = len(e.input_ids)
            ids[i, :n] = torch.tensor(e.input_ids)
            k = e.n_scored
            pos[i, :k] = torch.arange(e.n_prompt - 1, e.n_prompt - 1 + k)
            targets[i, :k] = torch.tensor(e.turn.token_ids[:k])
            mask[i, :k] = 1.0
        d = self.device
        return ids.to(d), pos.to(d), targets.to(d), mask.to(d)

    def _forward(self, ids, pos, targets, values: bool):
        """Per-token log-probs of the sampled tokens (B, T), and the value head's estimates."""
        import torch

        base = self.model.get_base_model()
        decoder = base.model if hasattr(base, "model") else base.get_decoder()
        ctx = self.autocast() if self.autocast else _null()
        with ctx:
            # No KV cache: a training forward never decodes further, and building one copies every layer's K and V.
            hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
            at = hidden.gather(1, pos.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))
            # Only the scored positions go through the vocabulary-sized head.
            logits = base.get_output_embeddings()(at).float()
        logps = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        v = self.value_head(at.float()).squeeze(-1) if values and self.value_head is not None else None
        return logps, v

    def _reference(self, ids, pos, targets):
        import torch

        with torch.no_grad(), self.model.disable_adapter():
            return self._forward(ids, pos, targets, values=False)[0]

    # -- 4-6: the update -----------------------------------------------------------------------
    def update(self, turns: list[Turn], version: int, optimizer, first_step: int, seed: int) -> tuple[dict, list[dict]]:
        import torch

        started = time.monotonic()
        l = self.l
        encoded, stats = self.prepare(turns, version)
        metrics = {"algorithm": l.algorithm, **stats, "steps": 0, "loss": None}
        if not encoded:
            metrics["seconds"] = time.monotonic() - started
            metrics["nothing_to_learn"] = "no trainable turns" + (
                f" ({stats['stale_dropped']} older than learner.max_staleness)" if stats["stale_dropped"] else "")
            return metrics, []
        n = len(encoded)
        mb = min(l.batch_size, n)
        needs_values = self.value_head is not None
        needs_ref = l.kl_coef > 0
        # A separate no-grad pass is needed when a sample is trained on after the weights moved
        # (several minibatches or epochs), for GAE's values, or for the reference; otherwise the
        # first forward's detached log-probs are the old policy's.
        prepass = l.epochs > 1 or n > mb or needs_values or needs_ref
        old: dict[int, dict] = {}
        if prepass:
            self.model.eval()
            with torch.no_grad():
                for s in range(0, n, mb):
                    idx = list(range(s, min(s + mb, n)))
                    self._remember(encoded, idx, old, needs_values, needs_ref)

        advantages = self._advantages(encoded, old)
        total_tokens = sum(e.n_scored for e in encoded)
        rng = random.Random(seed)
        order = list(range(n))
        consumed_at: dict[int, int] = {}
        clipped_at: dict[int, list[bool]] = {}
        step = first_step
        vloss_sum = 0.0
        # (step, loss, grad norm, kl, clipped tokens, scored tokens) of each optimizer step: kept as
        # tensors until the pass ends, so a GPU step never waits to be read back.
        per_step = []
        self.model.train()
        for _ in range(l.epochs):
            rng.shuffle(order)
            for s in range(0, n, mb):
                idx = order[s:s + mb]
                batch = [encoded[i] for i in idx]
                ids, pos, targets, mask = self._collate(batch)
                logps, values = self._forward(ids, pos, targets, values=needs_values)
                for i in idx:
                    if i not in old:
                        old[i] = {"logps": logps[idx.index(i), : encoded[i].n_scored].detach()}
                old_logps = _stack([old[i]["logps"] for i in idx], mask)
                gen = _stack([_generator_logps(encoded[i], old[i]["logps"]) for i in idx], mask)
                is_w, _ = losses.truncated_importance_weights(old_logps, gen, mask, l.is_cap)
                adv = _stack([advantages[i] for i in idx], mask)
                ref = _stack([old[i]["ref"] for i in idx], mask) if needs_ref else None
                loss, st = losses.policy_loss(
                    logps, old_logps, adv, mask, eps_low=l.clip_eps_low, eps_high=l.clip_eps_high,
                    loss_type=l.loss_type if l.algorithm == "grpo" else "grpo",
                    max_completion_length=self.cfg.generator.max_new_tokens, num_items=float(total_tokens) * mb / n,
                    ref_logps=ref, kl_coef=l.kl_coef if l.kl_mode == "loss" else 0.0,
                    kl_estimator=l.kl_estimator, is_weights=is_w)
                if values is not None:
                    old_v = _stack([old[i]["values"] for i in idx], mask)
                    rets = _stack([old[i]["returns"] for i in idx], mask)
                    vl = losses.value_loss(values, old_v, rets, mask, l.value_clip)
                    loss = loss + l.value_coef * vl
                    vloss_sum += vl.detach()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                params = [p for g in optimizer.param_groups for p in g["params"]]
                grad_norm = torch.nn.utils.clip_grad_norm_(params, l.max_grad_norm)
                optimizer.step()
                step += 1
                per_step.append((step, loss.detach(), grad_norm.detach(), st["kl"], st["clipped"].sum(), mask.sum()))
                for row, i in enumerate(idx):
                    consumed_at.setdefault(i, step)
                    clipped_at[i] = st["clipped"][row, : encoded[i].n_scored]
        self.model.eval()
        clipped_at = {i: c.tolist() for i, c in clipped_at.items()}

        rows, mismatch_num, mismatch_den = [], 0.0, 0
        for i, e in enumerate(encoded):
            learner = old[i]["logps"].float().cpu().tolist()
            gen_known = len(e.turn.logprobs) == len(e.turn.token_ids)
            if gen_known:
                mismatch_num += sum(g - x for g, x in zip(e.turn.logprobs[: e.n_scored], learner))
                mismatch_den += e.n_scored
            masked = [False] * e.n_scored + [True] * (len(e.turn.token_ids) - e.n_scored)
            rows.append({"turn_id": e.turn.id, "trajectory_id": e.turn.trajectory_id, "step": e.turn.step,
                         "round": e.turn.round, "learner_step": consumed_at[i], "learner_version": version,
                         "weights_version": e.turn.weights_version, "staleness": version - e.turn.weights_version,
                         "reward": e.reward, "raw_reward": e.raw_reward,
                         "advantage": float(advantages[i].float().mean()),
                         "tokens": self._token_texts(e.turn.token_ids),
                         "generator_logprobs": list(e.turn.logprobs) if gen_known else None,
                         "learner_logprobs": learner, "clipped": clipped_at[i], "masked": masked})
        steps = step - first_step
        clipped_tokens = sum(sum(c) for c in clipped_at.values())
        staleness = [version - e.turn.weights_version for e in encoded]
        lr = optimizer.param_groups[0]["lr"]
        per_step = [
            {"step": s, "loss": float(lo), "grad_norm": float(gn), "kl_ref": float(kl) if kl is not None else None,
             "clip_fraction": float(c) / max(float(m), 1.0), "learning_rate": lr}
            for s, lo, gn, kl, c, m in per_step]
        kls = [p["kl_ref"] for p in per_step if p["kl_ref"] is not None]
        metrics.update({
            "steps": steps, "loss": sum(p["loss"] for p in per_step) / steps,
            "kl_ref": sum(kls) / len(kls) if kls else None,
            "value_loss": float(vloss_sum) / steps if needs_values else None,
            "generator_learner_kl": mismatch_num / mismatch_den if mismatch_den else None,
            "clip_fraction": clipped_tokens / total_tokens if total_tokens else 0.0,
            "tokens": total_tokens, "return_mean": sum(e.ret for e in encoded) / n,
            "staleness_mean": sum(staleness) / n, "staleness_max": max(staleness),
            "seconds": time.monotonic() - started,
        })
        metrics["tokens_per_s"] = total_tokens * l.epochs / metrics["seconds"]
        metrics["per_step"] = per_step
        return metrics, rows

    def _token_texts(self, ids: list[int]) -> list[str]:
        """Each token decoded on its own (a byte-fallback piece may be a lone replacement char):
        what the viewer prints beside each token's log-probs."""
        try:
            return self.tokenizer.batch_decode([[int(i)] for i in ids])
        except Exception:  # noqa: BLE001 - a tokenizer without batch_decode: the viewer shows positions
            return []

    def _remember(self, encoded, idx, old, needs_values, needs_ref):
        batch = [encoded[i] for i in idx]
        ids, pos, targets, mask = self._collate(batch)
        logps, values = self._forward(ids, pos, targets, values=needs_values)
        ref = self._reference(ids, pos, targets) if needs_ref else None
        for row, i in enumerate(idx):
            k = encoded[i].n_scored
            old[i] = {"logps": logps[row, :k].detach()}
            if ref is not None:
                old[i]["ref"] = ref[row, :k]
            if values is not None:
                old[i]["values"] = values[row, :k].detach()

    def _advantages(self, encoded: list[Encoded], old: dict) -> dict:
        """Per-turn advantages: one number per turn (grpo, reinforce) or one per token (ppo, and
        reinforce against the critic), as 1-D tensors over the turn's scored tokens."""
        import torch

        l = self.l
        d = self.device
        rets = torch.tensor([e.ret for e in encoded], dtype=torch.float32)
        groups = _group_ids(encoded)
        if l.algorithm == "grpo":
            adv = losses.group_advantages(rets, groups, scale=l.loss_type != "dr_grpo")
            return {i: adv[i].expand(e.n_scored).to(d) for i, e in enumerate(encoded)}
        if l.algorithm == "reinforce" and l.baseline != "critic":
            adv = losses.baseline_advantages(rets, groups, l.baseline)
            return {i: adv[i].expand(e.n_scored).to(d) for i, e in enumerate(encoded)}
        # The value head: reinforce's critic baseline (return less the estimate at each token),
        # or PPO's GAE over the turn's tokens with the return paid at its last token (less a
        # per-token KL penalty when the KL is in the reward).
        # One padded (turns, tokens) batch, so GAE's recursion runs once over the token axis for
        # every turn together instead of once per turn.
        n, T = len(encoded), max(e.n_scored for e in encoded)
        values = torch.zeros((n, T), dtype=torch.float32, device=d)
        mask = torch.zeros((n, T), dtype=torch.float32, device=d)
        rewards = torch.zeros((n, T), dtype=torch.float32, device=d)
        for i, e in enumerate(encoded):
            k = e.n_scored
            values[i, :k] = old[i]["values"].float()
            mask[i, :k] = 1.0
            rewards[i, k - 1] = rets[i]
            if l.algorithm == "ppo" and l.kl_coef and l.kl_mode == "reward":
                rewards[i, :k] -= l.kl_coef * losses.kl_estimate(old[i]["logps"].float(), old[i]["ref"].float(),
                                                                 l.kl_estimator)
        if l.algorithm == "reinforce":
            adv = (rets.to(d).unsqueeze(1) - values) * mask
            ret = rets.to(d).unsqueeze(1).expand(n, T) * mask
        else:
            adv, ret = losses.gae(rewards, values, mask, l.gae_gamma, l.gae_lambda)
        out = {}
        for i, e in enumerate(encoded):
            old[i]["returns"] = ret[i, : e.n_scored]
            out[i] = adv[i, : e.n_scored]
        if l.algorithm == "ppo":  # whiten over every token of the batch, as PPO implementations do
            flat = torch.cat(list(out.values()))
            mean, std = flat.mean(), flat.std() if flat.numel() > 1 else torch.tensor(1.0)
            out = {i: (a - mean) / (std + 1e-8) for i, a in out.items()}
        return out


def _group_ids(encoded: list[Encoded]):
    """A task's samples of one round form a group (rounds mix when rollouts overlap)."""
    import torch

    keys: dict[tuple, int] = {}
    return torch.tensor([keys.setdefault((e.turn.round, e.turn.task_id), len(keys)) for e in encoded])


def _generator_logps(e: Encoded, learner_logps):
    """The generator's log-probs of the scored tokens, or the learner's where the generator gave
    none (an importance weight of 1)."""
    import torch

    if len(e.turn.logprobs) == len(e.turn.token_ids):
        return torch.tensor(e.turn.logprobs[: e.n_scored], dtype=torch.float32, device=learner_logps.device)
    return learner_logps.float()


def _stack(rows, mask):
    """1-D per-turn tensors right-padded with zeros to the minibatch's (B, T)."""
    import torch

    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r.float()
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
