"""The learner on a CUDA GPU: one GRPO step of SmolLM2 in bfloat16 with gradient checkpointing.

Skipped without a GPU (CI has none). OUROBOROS_GPU_TEST_MODEL names another model folder of the
same shape (a machine without the packaged weights runs it on random weights of SmolLM2's shape,
as benchmarks/learner_throughput.py --random-init-from does)."""
import math
import os

import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_one_grpo_step_of_smollm2_on_cuda_in_bf16_with_checkpointing():
    from ouroboros.actors.learner import Learner
    from ouroboros.config import load_config
    from ouroboros.envs.tasks import build_messages, load_tasks
    from ouroboros.types import Turn

    model = os.environ.get("OUROBOROS_GPU_TEST_MODEL", "smollm2-135m-instruct")
    cfg = load_config(None, [f"policy.model={model}", "learner.algorithm=grpo", "learner.num_gpus=1",
                             "learner.batch_size=8", "learner.epochs=1", "learner.kl_coef=0.04"])
    learner = Learner(cfg)
    assert learner.device == "cuda" and learner.bf16
    assert learner.model.get_base_model().is_gradient_checkpointing
    turns = []
    for i, task in enumerate(load_tasks("train")[:2]):
        for k in range(4):
            ids = [100 + (7 * i + 13 * k + j) % 4000 for j in range(48)]
            turns.append(Turn(id=f"{task.id}-{k}#0", trajectory_id=f"{task.id}-{k}", step=0, round=1,
                              task_id=task.id, prompt=build_messages(task), token_ids=ids, logprobs=[],
                              weights_version=0, reward=float(k % 2), episode_reward=float(k % 2)))
    lora = {n: p.detach().clone() for n, p in learner.model.named_parameters() if p.requires_grad}
    metrics, rows = learner.update.update(turns, 0, learner.optimizer, 0, 0)
    assert metrics["steps"] == 1 and math.isfinite(metrics["loss"]) and metrics["kl_ref"] is not None
    assert len(rows) == 8 and all(len(r["learner_logprobs"]) == 48 for r in rows)
    moved = [n for n, p in learner.model.named_parameters() if p.requires_grad and not torch.equal(p, lora[n])]
    assert moved and all("lora_B" in n or "lora_A" in n for n in moved)
    weights = learner.publish()
    assert weights.version == 1 and weights.num_bytes > 0
