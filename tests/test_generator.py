import numpy as np
import pytest
import torch

from ouroboros.actors.generator import Generator, lora_settings
from ouroboros.backends import BackendError, backend_class
from ouroboros.config import load_config
from ouroboros.envs.tasks import build_messages, load_tasks
from ouroboros.types import Request, WeightsRef
from ouroboros.weights import pack


def _requests(n, temperature=1.0, seed=0):
    task = load_tasks("train")[0]
    return [Request(id=f"q{i}", messages=build_messages(task), max_new_tokens=24, temperature=temperature,
                    seed=seed) for i in range(n)]


@pytest.fixture(scope="module")
def hf_generator(tiny_model_path):
    cfg = load_config("configs/smoke.yaml")
    return Generator(cfg)


def test_hf_generates_batched_completions_with_ids_logprobs_and_version(hf_generator):
    out = hf_generator.generate(_requests(5))
    assert [c.request_id for c in out] == [f"q{i}" for i in range(5)]
    for c in out:
        assert c.backend == "hf" and c.weights_version == 0 and c.prompt_tokens > 20
        assert 0 < len(c.token_ids) <= 24 and len(c.logprobs) == len(c.token_ids)
        assert all(lp <= 0.0 for lp in c.logprobs)
        assert c.finish_reason in ("stop", "length")
        assert c.text == hf_generator.backend.tokenizer.decode(c.token_ids, skip_special_tokens=True)


def test_hf_greedy_is_deterministic_and_seeded_sampling_repeats(hf_generator):
    a = hf_generator.generate(_requests(2, temperature=0.0))
    b = hf_generator.generate(_requests(2, temperature=0.0))
    assert a[0].token_ids == b[0].token_ids == a[1].token_ids
    s1 = hf_generator.generate(_requests(3, seed=7))
    s2 = hf_generator.generate(_requests(3, seed=7))
    assert [c.token_ids for c in s1] == [c.token_ids for c in s2]


def test_lora_weights_load_changes_outputs_and_tags_version(tiny_model_path):
    cfg = load_config("configs/smoke.yaml")
    gen = Generator(cfg)
    before = gen.generate(_requests(1, temperature=0.0))[0]
    # A LoRA adapter with large random B changes the greedy output.
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path), LoraConfig(**lora_settings(cfg)))
    torch.manual_seed(0)
    bucket = pack([(n, torch.randn(p.shape) * 0.5) for n, p in peft_model.named_parameters() if "lora_" in n])
    info = gen.load_weights(WeightsRef(version=3, kind="lora", ref=bucket.flat, checksum="x", num_bytes=0,
                                       base_model="tiny", index=bucket.index))
    assert info["version"] == 3 and gen.weights_version() == 3
    after = gen.generate(_requests(1, temperature=0.0))[0]
    assert after.weights_version == 3 and after.token_ids != before.token_ids
    # The live parameters are views of one flat tensor holding exactly the published buffer.
    live = dict(gen.backend.model.named_parameters())
    for name, value in bucket.tensors().items():
        assert np.array_equal(live[name].detach().numpy(), value)
    # A second version of the same layout is one copy into the same storage.
    flat_before = gen.backend._flat.flat.data_ptr()
    gen.load_weights(WeightsRef(4, "lora", np.zeros_like(bucket.flat), "y", 0, "tiny", bucket.index))
    assert gen.backend._flat.flat.data_ptr() == flat_before and gen.weights_version() == 4
    assert gen.generate(_requests(1, temperature=0.0))[0].token_ids == before.token_ids  # zero adapter == base


def test_unknown_tensor_names_are_refused(hf_generator):
    bucket = pack([("nope.weight", torch.zeros(2))])
    with pytest.raises(BackendError, match="unknown tensors"):
        hf_generator.load_weights(WeightsRef(1, "full", bucket.flat, "", 0, "tiny", bucket.index))


def test_scripted_replays_in_order_and_follows_versions(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text('{"text": "from file"}\n')
    b = backend_class("scripted")(script=["one", "two"], script_file=str(f))
    out = b.generate(_requests(4))
    assert [c.text for c in out] == ["one", "two", "from file", "one"]
    assert out[0].token_ids == list(b"one") and out[0].logprobs == [0.0, 0.0, 0.0]
    b.load_weights(np.zeros(0, np.float32), (), "lora", 5)
    assert b.generate(_requests(1))[0].weights_version == 5
    with pytest.raises(BackendError, match="nothing to replay"):
        backend_class("scripted")()


def test_scripted_replays_each_session_from_the_start():
    from dataclasses import replace

    b = backend_class("scripted")(script=["a", "b", "c"])
    first = [replace(r, session="x") for r in _requests(2)]
    second = [replace(r, session="y") for r in _requests(1)]
    assert [c.text for c in b.generate(first)] == ["a", "b"]
    assert [c.text for c in b.generate(second)] == ["a"]  # a new session starts over
    assert [c.text for c in b.generate([replace(first[0], session="x")])] == ["c"]
    assert [c.text for c in b.generate(_requests(1))] == ["a"]  # no session: the shared place


def test_vllm_slot_says_it_is_not_available_yet():
    with pytest.raises(BackendError, match="not available yet"):
        backend_class("vllm")(model="x")
