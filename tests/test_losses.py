"""The policy-gradient losses (ouroboros/learn/losses.py), each against its definition, and GRPO
against TRL's own GRPOTrainer loss on identical inputs (the installed trl, called, not copied)."""
import math

import pytest
import torch

from ouroboros.learn import losses


def test_bound_rewards_clip_and_tanh_report_hits():
    r = torch.tensor([-3.0, 0.0, 0.5, 1.0, 7.0])
    clipped, hit = losses.bound_rewards(r, 0.0, 1.0, "clip")
    assert clipped.tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert hit.tolist() == [True, False, False, False, True]
    squashed, hit2 = losses.bound_rewards(r, 0.0, 1.0, "tanh")
    assert torch.equal(hit, hit2)
    assert (squashed >= 0).all() and (squashed <= 1).all() and 0 < squashed[1] < squashed[3] < 1
    assert squashed[2] == pytest.approx(0.5) and squashed[4] >= squashed[3] > squashed[2]
    with pytest.raises(ValueError, match="clip or tanh"):
        losses.bound_rewards(r, 0, 1, "cube")


def test_discounted_returns_are_the_seeds_reinforce_returns():
    r = torch.tensor([1.0, 0.0, 2.0])
    g = losses.discounted_returns(r, 0.5)
    assert g.tolist() == [1.0 + 0.5 * 0.0 + 0.25 * 2.0, 0.0 + 0.5 * 2.0, 2.0]
    assert losses.discounted_returns(r, 1.0).tolist() == [3.0, 2.0, 2.0]


def test_group_advantages_normalize_within_each_group_only():
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 5.0, 5.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1])
    a = losses.group_advantages(r, g)
    first = r[:4]
    expected = (first - first.mean()) / (first.std() + losses.EPS)
    assert torch.allclose(a[:4], expected)
    assert a[4:].tolist() == [0.0, 0.0]  # a tied group teaches nothing, and is not NaN
    unscaled = losses.group_advantages(r, g, scale=False)
    assert torch.allclose(unscaled[:4], first - first.mean())


def test_baselines_mean_and_leave_one_out():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0])
    g = torch.tensor([0, 0, 0, 1])
    assert torch.allclose(losses.baseline_advantages(r, g, "mean"), r - r.mean())
    rloo = losses.baseline_advantages(r, g, "rloo")
    assert rloo[:3].tolist() == [1.0 - 2.5, 2.0 - 2.0, 3.0 - 1.5]
    assert rloo[3] == pytest.approx(10.0 - r.mean())  # alone in its group: the batch mean


def test_gae_matches_a_hand_computed_recursion_and_respects_padding():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.4, 9.9]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    gamma, lam = 0.9, 0.8
    adv, ret = losses.gae(rewards, values, mask, gamma, lam)
    # Row 0 by hand.
    d2 = 1.0 - 0.3
    d1 = 0.0 + gamma * 0.3 - 0.2
    d0 = 0.0 + gamma * 0.2 - 0.1
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    assert adv[0].tolist() == pytest.approx([a0, a1, a2])
    # Row 1 ends at its second token: the padded value 9.9 never leaks in.
    b1 = 2.0 - 0.4
    b0 = 0.0 + gamma * 0.4 - 0.5 + gamma * lam * b1
    assert adv[1].tolist() == pytest.approx([b0, b1, 0.0])
    assert torch.allclose(ret, (adv + values) * mask)


def test_kl_estimators():
    p = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-1.5, -1.0])
    assert torch.allclose(losses.kl_estimate(p, ref, "k1"), p - ref)
    k3 = losses.kl_estimate(p, ref, "k3")
    assert (k3 >= 0).all() and torch.allclose(k3, torch.exp(ref - p) - (ref - p) - 1)
    assert losses.kl_estimate(p, p, "k3").abs().max() == 0


def test_truncated_importance_weights_cap_and_mismatch():
    learner = torch.tensor([[-1.0, -1.0, -5.0]])
    gen = torch.tensor([[-1.0, -3.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    w, mismatch = losses.truncated_importance_weights(learner, gen, mask, cap=2.0)
    assert w[0, 0] == pytest.approx(1.0) and w[0, 1] == pytest.approx(2.0)  # e^2 capped at 2
    assert w[0, 2] == 0.0  # padding
    assert mismatch == pytest.approx(((-1 + 1) + (-3 + 1)) / 2)


def test_clipped_surrogate_clips_only_where_the_ratio_leaves_the_band():
    old = torch.zeros(1, 3)
    logps = torch.log(torch.tensor([[1.0, 1.5, 0.5]]))
    adv = torch.tensor([1.0])
    loss, clipped = losses.clipped_surrogate(logps, old, adv, 0.2, 0.2)
    assert loss.tolist()[0] == pytest.approx([-1.0, -1.2, -0.5])
    assert clipped.tolist() == [[False, True, False]]  # A > 0: a low ratio is not clipped (pessimistic bound)
    loss_neg, clipped_neg = losses.clipped_surrogate(logps, old, -adv, 0.2, 0.2)
    assert loss_neg.tolist()[0] == pytest.approx([1.0, 1.5, 0.8])
    assert clipped_neg.tolist() == [[False, False, True]]


def test_aggregations_weigh_tokens_as_their_definitions_say():
    per_token = torch.tensor([[1.0, 1.0, 0.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert float(losses.aggregate(per_token, mask, "grpo")) == pytest.approx((1.0 + 4.0) / 2)
    assert float(losses.aggregate(per_token, mask, "dr_grpo", max_completion_length=10)) == pytest.approx(6 / 20)
    assert float(losses.aggregate(per_token, mask, "dapo")) == pytest.approx(6 / 3)
    assert float(losses.aggregate(per_token, mask, "dapo", num_items=6)) == pytest.approx(1.0)


def test_value_loss_clips_large_moves():
    old = torch.tensor([[0.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0]])
    mask = torch.ones(1, 2)
    near = losses.value_loss(torch.tensor([[0.1, 0.1]]), old, returns, mask, clip=0.2)
    assert float(near) == pytest.approx(0.5 * 0.81)
    # A value that jumped past the clip is charged as if it stayed at old + clip.
    far = losses.value_loss(torch.tensor([[0.9, 0.9]]), old, returns, mask, clip=0.2)
    assert float(far) == pytest.approx(0.5 * 0.64)


def _trl_trainer(model_path, loss_type, beta, epsilon_high, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    args = GRPOConfig(output_dir=str(tmp_path / loss_type), use_cpu=True, per_device_train_batch_size=4,
                      num_generations=4, max_completion_length=7, loss_type=loss_type, beta=beta,
                      epsilon_high=epsilon_high, report_to=[], disable_tqdm=True, logging_steps=1,
                      save_strategy="no")
    data = Dataset.from_list([{"prompt": "say hi"}] * 4)
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
                          train_dataset=data, processing_class=tokenizer)
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    return trainer


@pytest.mark.parametrize("loss_type,beta,eps_high", [("grpo", 0.0, 0.2), ("dr_grpo", 0.04, 0.2), ("dapo", 0.04, 0.28)])
def test_grpo_loss_equals_trls_on_identical_inputs(tiny_model_path, tmp_path, loss_type, beta, eps_high):
    trainer = _trl_trainer(tiny_model_path, loss_type, beta, eps_high, tmp_path)
    model = trainer.model
    g = torch.Generator().manual_seed(0)
    B, P, T = 4, 5, 7
    prompt_ids = torch.randint(5, 100, (B, P), generator=g)
    completion_ids = torch.randint(5, 100, (B, T), generator=g)
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    completion_mask = torch.ones(B, T, dtype=torch.long)
    completion_mask[1, 4:] = 0
    completion_mask[3, 2:] = 0
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0])
    advantages = losses.group_advantages(rewards, torch.zeros(B, dtype=torch.long),
                                         scale=loss_type != "dr_grpo")
    with torch.no_grad():
        logps0, _, _ = trainer._get_per_token_logps_and_entropies(
            model, torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1), T)
    # Old and reference log-probs that differ from the current ones, so clipping and the KL both act.
    old = logps0 + 0.3 * torch.randn(B, T, generator=g)
    ref = logps0 + 0.2 * torch.randn(B, T, generator=g)
    mask = completion_mask.float()
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
              "completion_mask": completion_mask, "advantages": advantages, "old_per_token_logps": old,
              "ref_per_token_logps": ref, "num_items_in_batch": mask.sum()}
    theirs = trainer._compute_loss(model, inputs)

    logps, _, _ = trainer._get_per_token_logps_and_entropies(
        model, torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1), T)
    ours, stats = losses.policy_loss(logps, old, advantages, mask, eps_low=0.2, eps_high=eps_high,
                                     loss_type=loss_type, max_completion_length=7, num_items=float(mask.sum()),
                                     ref_logps=ref, kl_coef=beta, kl_estimator="k3")
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5, abs=1e-6)
    assert stats["clipped"].any()  # the comparison exercised the clip
    # And the gradients agree: the same loss of the same parameters.
    model.zero_grad()
    theirs.backward()
    g_theirs = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    logps, _, _ = trainer._get_per_token_logps_and_entropies(
        model, torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1), T)
    ours, _ = losses.policy_loss(logps, old, advantages, mask, eps_low=0.2, eps_high=eps_high, loss_type=loss_type,
                                 max_completion_length=7, num_items=float(mask.sum()), ref_logps=ref, kl_coef=beta)
    ours.backward()
    g_ours = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(g_ours) == len(g_theirs)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(g_ours, g_theirs))
    assert not math.isnan(float(ours))
