import numpy as np
import pytest
import torch

from ouroboros.actors.generator import Generator, lora_settings
from ouroboros.backends import BackendError, backend_class
from ouroboros.config import load_config
from ouroboros.envs.tasks import build_messages, load_tasks
from ouroboros.types import Request, WeightsRef
from ouroboros.weights import checksum, pack


def _ref(version, kind, flat, index, base="tiny"):
    """A WeightsRef as the learner publishes it: its checksum computed over the buffer."""
    return WeightsRef(version, kind, flat, checksum(flat, index), flat.nbytes, base, index)


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


def test_a_seeded_request_samples_the_same_tokens_whatever_shares_its_batch(hf_generator):
    """The coalescer batches calls as they arrive: a request's sample must not depend on that."""
    tasks = load_tasks("train")[:4]
    mine = Request(id="mine", messages=build_messages(tasks[0]), max_new_tokens=24, temperature=1.0, top_p=0.9,
                   seed=11)
    others = [Request(id=f"o{i}", messages=build_messages(t), max_new_tokens=24, temperature=1.0, top_p=0.9, seed=11)
              for i, t in enumerate(tasks[1:])]
    alone = hf_generator.generate([mine])[0]
    first = hf_generator.generate([mine, *others])[0]
    last = hf_generator.generate([*reversed(others), mine])[-1]
    assert alone.token_ids == first.token_ids == last.token_ids
    # One seed, different ids: different streams (two samples of a prompt are not one sample twice).
    twin = hf_generator.generate([Request(id="twin", messages=mine.messages, max_new_tokens=24, temperature=1.0,
                                          top_p=0.9, seed=11)])[0]
    assert twin.token_ids != alone.token_ids


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
    info = gen.load_weights(_ref(3, "lora", bucket.flat, bucket.index))
    assert info["version"] == 3 and gen.weights_version() == 3
    after = gen.generate(_requests(1, temperature=0.0))[0]
    assert after.weights_version == 3 and after.token_ids != before.token_ids
    # The live parameters are views of one flat tensor holding exactly the published buffer.
    live = dict(gen.backend.model.named_parameters())
    for name, value in bucket.tensors().items():
        assert np.array_equal(live[name].detach().numpy(), value)
    # A second version of the same layout is one copy into the same storage.
    flat_before = gen.backend._flat.flat.data_ptr()
    gen.load_weights(_ref(4, "lora", np.zeros_like(bucket.flat), bucket.index))
    assert gen.backend._flat.flat.data_ptr() == flat_before and gen.weights_version() == 4
    assert gen.generate(_requests(1, temperature=0.0))[0].token_ids == before.token_ids  # zero adapter == base
    # A buffer that is not what was published (one value changed on the way) is refused, and
    # the generator keeps serving the version it had.
    published = _ref(5, "lora", bucket.flat, bucket.index)
    corrupted = bucket.flat.copy()
    corrupted[len(corrupted) // 2] += 1e-3
    with pytest.raises(BackendError, match="v5 failed their checksum.*kept v4"):
        gen.load_weights(WeightsRef(5, "lora", corrupted, published.checksum, 0, "tiny", bucket.index))
    assert gen.weights_version() == 4
    assert gen.generate(_requests(1, temperature=0.0))[0].token_ids == before.token_ids


def test_unknown_tensor_names_are_refused(hf_generator):
    bucket = pack([("nope.weight", torch.zeros(2))])
    with pytest.raises(BackendError, match="unknown tensors"):
        hf_generator.load_weights(_ref(1, "full", bucket.flat, bucket.index))


def test_scripted_replays_in_order_and_keeps_the_version_that_made_its_replies(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text('{"text": "from file"}\n')
    b = backend_class("scripted")(script=["one", "two"], script_file=str(f))
    out = b.generate(_requests(4))
    assert [c.text for c in out] == ["one", "two", "from file", "one"]
    assert out[0].token_ids == list(b"one") and out[0].logprobs == [0.0, 0.0, 0.0]
    b.load_weights(np.zeros(0, np.float32), (), "lora", 5)
    # The script, not version 5, made the next reply: its tag must not credit the trained version.
    assert b.generate(_requests(1))[0].weights_version == 0 and b.loaded_version == 5
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


def test_concurrent_calls_on_a_local_model_coalesce_into_batches(tiny_model_path):
    """Eight 'cycles' each ask for one reply at a time; the hf generator serves them in batches,
    each caller gets its own completion, and a weights load never runs under a batch."""
    import threading

    cfg = load_config("configs/smoke.yaml", [f"policy.model={tiny_model_path}", "generator.max_new_tokens=8"])
    gen = Generator(cfg)
    tasks = load_tasks("train")[:8]
    results: dict[str, list] = {}
    barrier = threading.Barrier(len(tasks))

    def cycle(n: int) -> None:
        barrier.wait()
        for turn in range(3):
            req = Request(id=f"c{n}-t{turn}", messages=build_messages(tasks[n]), max_new_tokens=8, temperature=0.0)
            results.setdefault(f"c{n}", []).extend(gen.generate([req]))

    threads = [threading.Thread(target=cycle, args=(n,)) for n in range(len(tasks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in range(len(tasks)):
        assert [c.request_id for c in results[f"c{n}"]] == [f"c{n}-t{k}" for k in range(3)]
    stats = gen.batching()
    assert stats["requests"] == 24 and stats["batches"] < 24  # fewer model calls than requests

    # A weights load waits for the batch in flight and holds the model alone.
    order = []
    with gen.coalescer.exclusive():
        t = threading.Thread(target=lambda: order.append(gen.generate([Request(
            id="late", messages=build_messages(tasks[0]), max_new_tokens=4, temperature=0.0)])[0].request_id))
        t.start()
        t.join(0.5)
        order.append("load")
    t.join()
    assert order == ["load", "late"]


def test_a_backend_error_reaches_every_caller_of_its_batch():
    import threading

    from ouroboros.backends.coalesce import Coalescer

    gate = threading.Event()
    calls = []

    def run(requests):
        calls.append(len(requests))
        if len(calls) == 1:
            gate.wait(2)  # hold the first batch so the others queue behind it
            return [None] * len(requests)
        raise BackendError("model fell over")

    c = Coalescer(run, max_batch=8)
    errors = []

    def call(i):
        try:
            c.generate([Request(id=str(i), messages=[])])
        except BackendError as exc:
            errors.append(str(exc))

    first = threading.Thread(target=call, args=(0,))
    first.start()
    while not calls:
        pass
    rest = [threading.Thread(target=call, args=(i,)) for i in range(1, 5)]
    for t in rest:
        t.start()
    import time

    deadline = time.monotonic() + 10
    while len(c._queue) < 4 and time.monotonic() < deadline:  # all four wait behind the first batch
        time.sleep(0.01)
    gate.set()
    for t in [first, *rest]:
        t.join()
    assert calls == [1, 4]  # the four that queued ran as one batch
    assert errors == ["model fell over"] * 4
