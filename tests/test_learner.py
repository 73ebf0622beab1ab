"""The Learner as a plain object: TRL DPO on a LoRA adapter of the tiny model, base model as reference."""
import numpy as np
import pytest

from ouroboros.actors.generator import Generator
from ouroboros.actors.learner import Learner
from ouroboros.weights import checksum
from ouroboros.config import load_config
from ouroboros.envs.tasks import build_messages, load_tasks, reference_reply
from ouroboros.types import PreferencePair, Request


def _pairs(n):
    out = []
    for i, task in enumerate(load_tasks("train")[:n]):
        out.append(PreferencePair(id=f"p{i}", round=1, task_id=task.id, prompt=build_messages(task),
                                  chosen=reference_reply(task), rejected="no idea", chosen_reward=1.0,
                                  rejected_reward=0.0, chosen_trajectory="a", rejected_trajectory="b"))
    return out


@pytest.mark.slow
def test_dpo_trains_publishes_versions_and_generators_follow(tiny_model_path, tmp_path):
    cfg = load_config("configs/smoke.yaml", ["learner.epochs=3", "learner.learning_rate=0.005"])
    learner = Learner(cfg)
    assert learner.weights_version() == 0
    with pytest.raises(RuntimeError, match="publish"):
        learner.copy_benchmark()
    empty, rows = learner.train([])
    assert empty["pairs"] == 0 and empty["steps"] == 0 and empty["dpo_loss"] is None and rows == []
    assert "no preference pairs" in empty["nothing_to_learn"]

    # A pair longer than learner.max_length would lose its replies to TRL's truncation: left out, counted.
    long = _pairs(1)[0]
    long.prompt = [{"role": "user", "content": "word " * (cfg.learner.max_length + 10)}]
    pairs = _pairs(8)
    first, _ = learner.train(pairs + [long])
    assert first["pairs"] == 8 and first["steps"] == 3 and first["pairs_too_long"] == 1
    assert [s["step"] for s in first["per_step"]] == [1, 2, 3] and all(s["loss"] > 0 for s in first["per_step"])
    # DPO loss starts at log 2 (policy == reference) and must fall as the policy moves.
    assert first["dpo_loss"] < 0.6931 and first["rewards_margins"] > 0
    w1 = learner.publish()
    assert w1.version == 1 and w1.kind == "lora" and w1.checksum == checksum(w1.ref, w1.index)
    assert all(".default." in e.name for e in w1.index) and w1.num_bytes == w1.ref.nbytes > 0

    # The reference stays the base model: TRL's "ref" adapter copy is removed every round, and the
    # reference log-probs, computed once before the epochs, are the base's. Against a copy of the
    # current policy the round's first loss would be log 2 exactly; against the base it starts
    # where the first round left the policy, below it.
    second, _ = learner.train([pairs[:4], pairs[4:]])
    assert "ref" not in learner.model.peft_config and second["steps"] > 0
    assert second["reference_s"] is not None and second["per_step"][0]["loss"] < 0.69
    assert second["per_step"][0]["step"] == 4  # the learner's steps, counted across rounds
    w2 = learner.publish()
    assert w2.version == 2 and w2.checksum != w1.checksum
    assert learner.weights_version() == 2 and learner.copy_benchmark() > 0

    gen = Generator(cfg)
    task = load_tasks("train")[0]
    req = [Request(id="x", messages=build_messages(task), max_new_tokens=16, temperature=0.0)]
    gen.load_weights(w2)
    out = gen.generate(req)[0]
    assert out.weights_version == 2
    # The generator now computes what the learner's policy computes.
    import torch
    ids = torch.tensor([gen.backend.tokenizer.apply_chat_template(req[0].messages, add_generation_prompt=True,
                                                                  return_dict=False)])
    with torch.no_grad():
        a = gen.backend.model(ids).logits[0, -1]
        b = learner.model(ids).logits[0, -1]
    assert np.allclose(a.numpy(), b.numpy(), atol=1e-4)

    # Full weights (the adapter merged into the base) reach the same policy, and replace the adapter.
    w3 = learner.publish("full")
    names = [e.name for e in w3.index]
    assert w3.kind == "full" and w3.version == 3 and not any("lora_" in n or ".base_layer" in n for n in names)
    assert w3.checksum == checksum(w3.ref, w3.index)
    gen.load_weights(w3)
    assert not hasattr(gen.backend.model, "peft_config") and gen.weights_version() == 3
    with torch.no_grad():
        c = gen.backend.model(ids).logits[0, -1]
    assert np.allclose(c.numpy(), b.numpy(), atol=1e-4)
    # The learner's own adapter survives the merge for later rounds.
    assert "default" in learner.model.peft_config and learner.train(pairs[:2])[0]["steps"] > 0


@pytest.mark.slow
def test_length_desensitized_dpo_counts_a_longer_reply_only_up_to_the_shorter_ones_length(tiny_model_path):
    """`learner.length_desensitize: 0`: the rejected reply repeats the chosen one and runs on; its
    log-prob counts only its first len(chosen) tokens, so the pair cannot be won by its length.
    Plain DPO counts every token of the long reply."""
    pairs = _pairs(2)
    for p in pairs:
        p.rejected = p.chosen + " and then many more words that go on and on about nothing at all" * 3
    logps = {}
    for weight in (None, 0.0):
        sets = ["learner.epochs=1", "learner.batch_size=2"] + ([f"learner.length_desensitize={weight}"]
                                                                if weight is not None else [])
        metrics, _ = Learner(load_config("configs/smoke.yaml", sets)).train(pairs)
        logps[weight] = (metrics["logps_chosen"], metrics["logps_rejected"])
    plain, desensitized = logps[None], logps[0.0]
    assert desensitized[0] == pytest.approx(plain[0], rel=1e-4)  # the chosen is the shorter: counted whole
    assert plain[1] < plain[0] - 20  # the long tail's tokens weigh in
    assert abs(desensitized[1] - desensitized[0]) < 0.5 * abs(plain[1] - plain[0])
