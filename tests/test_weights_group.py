"""Weights over a process group (generator.weights_transport gloo; nccl where GPUs are lent):
the bytes, the errors, and the fallback to the object store.

gloo runs on loopback here: ranks are threads of this process, a child process where a rank must
die, and Ray actors for the whole path (learner, generators, a restart)."""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import pytest

from ouroboros import weights_group
from ouroboros.config import ConfigError, load_config
from ouroboros.weights_group import Broadcaster, TransferError, WeightsGroup


def _form(world: int, timeout_s: float = 20, generation: int = 1) -> tuple[WeightsGroup, list[WeightsGroup]]:
    lead = WeightsGroup()
    rendezvous = lead.host("gloo", world, generation, timeout_s)
    others = [WeightsGroup() for _ in range(world - 1)]
    threads = [threading.Thread(target=g.join, args=(rendezvous, rank)) for rank, g in enumerate(others, start=1)]
    for t in threads:
        t.start()
    lead.join(rendezvous, 0)
    for t in threads:
        t.join()
    return lead, others


def _receive_all(others: list[WeightsGroup], numel: int) -> dict:
    got: dict = {}

    def receive(i, g):
        try:
            got[i] = g.receive(numel)
        except Exception as exc:  # noqa: BLE001 - the test asserts on it
            got[i] = exc
    threads = [threading.Thread(target=receive, args=(i, g)) for i, g in enumerate(others)]
    for t in threads:
        t.start()
    return got, threads


def test_a_broadcast_reaches_every_rank_bit_for_bit_across_chunks(monkeypatch):
    monkeypatch.setattr(weights_group, "CHUNK", 1000)  # several chunks and a short last one
    lead, others = _form(3)
    flat = np.random.default_rng(0).standard_normal(3 * 1000 + 17).astype(np.float32)
    flat[5] = np.nan  # bytes, not values: a NaN arrives as the same NaN
    got, threads = _receive_all(others, len(flat))
    assert lead.send(flat) > 0
    for t in threads:
        t.join()
    for i in range(2):
        assert got[i].tobytes() == flat.tobytes()
    assert lead.generation == others[0].generation == 1


def test_a_rank_that_never_joins_is_a_clear_error_within_the_timeout():
    lead = WeightsGroup()
    rendezvous = lead.host("gloo", 3, 1, 2)
    late = WeightsGroup()
    errors = []
    t = threading.Thread(target=lambda: errors.append(_raises(late.join, rendezvous, 1)))
    started = time.monotonic()
    t.start()
    errors.append(_raises(lead.join, rendezvous, 0))
    t.join()
    assert time.monotonic() - started < 15
    for exc in errors:
        assert isinstance(exc, TransferError)
        assert "did not form within 2 s" in str(exc) and "weights_transport: store" in str(exc)
    assert lead.generation is None


def _rank_that_dies(rendezvous, numel: int) -> None:
    g = WeightsGroup()
    g.join(rendezvous, 1)
    os.kill(os.getpid(), signal.SIGKILL)  # before the broadcast it was part of


def test_a_rank_that_dies_fails_the_broadcast_with_an_error_not_a_hang():
    lead = WeightsGroup()
    rendezvous = lead.host("gloo", 2, 1, 10)
    child = multiprocessing.get_context("spawn").Process(target=_rank_that_dies, args=(rendezvous, 100))
    child.start()
    lead.join(rendezvous, 0)
    child.join(30)
    started = time.monotonic()
    with pytest.raises(TransferError, match="sending weights over the gloo group failed"):
        lead.send(np.ones(64 << 20, dtype=np.float32))  # larger than a socket buffer: the peer must read it
    assert time.monotonic() - started < 30
    assert lead.generation is None  # a broken group is left, never reused


def test_nccl_refuses_a_rank_without_a_gpu_and_two_ranks_on_one():
    with pytest.raises(TransferError, match="generator 1 has no GPU"):
        weights_group._check_one_rank_per_gpu(["n:gpu-a", "n:gpu-b", None])
    with pytest.raises(TransferError, match="the learner and generator 0 share a GPU"):
        weights_group._check_one_rank_per_gpu(["n:gpu-a", "n:gpu-a"])
    weights_group._check_one_rank_per_gpu(["n:gpu-a", "n:gpu-b", "m:gpu-a"])


def test_the_transport_setting_is_checked_where_it_is_read(tmp_path):
    cfg = load_config("configs/smoke.yaml", ["generator.weights_transport=gloo"])
    assert cfg.generator.weights_transport == "gloo"
    with pytest.raises(ConfigError, match="generator.weights_transport.*'tcp'"):
        load_config("configs/smoke.yaml", ["generator.weights_transport=tcp"])
    with pytest.raises(ConfigError, match="the scripted backend loads none"):
        load_config("configs/smoke.yaml", ["generator.weights_transport=gloo", "generator.backend=scripted"])
    with pytest.raises(ConfigError, match="generator.num_gpus is 0"):
        load_config("configs/smoke.yaml", ["generator.weights_transport=nccl"])
    with pytest.raises(ConfigError, match="learner.num_gpus is 0"):
        load_config("configs/smoke.yaml", ["generator.weights_transport=nccl", "generator.num_gpus=0.5"])
    with pytest.raises(TransferError, match="unknown weights transport"):
        Broadcaster("tcp", 5)


def _raises(fn, *args):
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - the test asserts on it
        return exc
    return None


@pytest.mark.slow
def test_versions_reach_ray_generators_over_gloo_and_the_group_forms_again_after_a_restart(tiny_model_path):
    """A Learner actor and two hf Generator actors on the tiny model: each version arrives over the
    group and passes its checksum; a generator killed and restarted by Ray is brought back into a
    new group; a generator whose receive fails loads the version from the store instead."""
    import ray

    from ouroboros import placement
    from ouroboros.actors.generator import generator_actor
    from ouroboros.actors.learner import Learner
    from ouroboros.actors.live_weights import LiveWeights

    cfg = load_config("configs/smoke.yaml", ["generator.weights_transport=gloo", "generator.count=2",
                                             "generator.sync_timeout_s=5", "generator.num_cpus=0"])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        placement.configure(3)
        live = placement.actor(LiveWeights, "live-weights", num_cpus=0).remote()
        gens = [generator_actor(cfg).remote(cfg, live) for _ in range(2)]
        learner = placement.actor(Learner, "learner", num_cpus=0).remote(cfg)
        broadcaster = Broadcaster("gloo", cfg.generator.sync_timeout_s)

        def broadcast(kind):
            weights = ray.get(learner.publish.remote(kind))
            ray.get(live.set.remote(weights))
            loads, send_s = broadcaster.collect(broadcaster.launch(learner, gens, weights), 2, 60)
            return weights, loads, send_s

        weights, loads, send_s = broadcast("full")
        assert send_s is not None and send_s > 0 and broadcaster.generation == 1
        assert [x["fallback"] for x in loads] == [None, None] and {x["version"] for x in loads} == {1}
        assert ray.get([g.weights_version.remote() for g in gens]) == [1, 1]

        pid = ray.get(gens[0].__ray_call__.remote(lambda self: os.getpid()))
        os.kill(pid, signal.SIGKILL)
        assert ray.get(gens[0].weights_version.remote(), timeout=120) == 1  # restarted, v1 from the store
        assert ray.get(gens[0].weights_group.remote())["generation"] is None
        weights, loads, send_s = broadcast("lora")
        assert broadcaster.generation == 2 and send_s is not None
        assert [x["fallback"] for x in loads] == [None, None]
        assert ray.get([g.weights_version.remote() for g in gens]) == [2, 2]

        # Nobody sends: the receive gives up after sync_timeout_s and the store has the version.
        timing = ray.get(gens[1].load_weights.remote(weights, True), timeout=60)
        assert "did not" in timing["fallback"] or "failed" in timing["fallback"]
        assert timing["version"] == 2 and ray.get(gens[1].weights_group.remote())["generation"] is None
        weights, loads, _ = broadcast("lora")
        assert broadcaster.generation == 3 and [x["fallback"] for x in loads] == [None, None]
        assert ray.get([g.weights_version.remote() for g in gens]) == [3, 3]

        # A rank dies while in the group: the learner's send fails, every generator still gets the
        # version (the restarted one from the store), and the next broadcast forms a new group.
        pid = ray.get(gens[1].__ray_call__.remote(lambda self: os.getpid()))
        os.kill(pid, signal.SIGKILL)
        while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z":
            time.sleep(0.05)
        weights = ray.get(learner.publish.remote("lora"))
        ray.get(live.set.remote(weights))
        refs = [g.load_weights.remote(weights, True) for g in gens] + [learner.send_weights.remote(weights.version)]
        loads, send_s = broadcaster.collect(refs, 2, 120)
        assert send_s is None and broadcaster._broken and {x["version"] for x in loads} == {4}
        assert loads[1]["fallback"]
        weights, loads, send_s = broadcast("lora")
        assert broadcaster.generation == 4 and send_s is not None and [x["fallback"] for x in loads] == [None, None]
        assert ray.get([g.weights_version.remote() for g in gens]) == [5, 5]
    finally:
        placement.release_pinned()
        ray.shutdown()


def _nccl_receiver(rendezvous, flat, queue) -> None:
    import torch

    torch.cuda.set_device(1)
    g = WeightsGroup()
    g.join(rendezvous, 1)
    queue.put(g.receive(len(flat)).tobytes() == flat.tobytes())


@pytest.mark.gpu
def test_nccl_carries_a_bucket_gpu_to_gpu_bit_for_bit():
    """Rank 0 here on GPU 0, rank 1 in a child on GPU 1: the sender stages chunks through its GPU,
    the receiver takes them on its own and copies them to host memory."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("nccl needs two GPUs (one rank per GPU); this host has fewer")
    lead = WeightsGroup()
    rendezvous = lead.host("nccl", 2, 1, 60)
    flat = np.random.default_rng(1).standard_normal(weights_group.CHUNK + 999).astype(np.float32)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_nccl_receiver, args=(rendezvous, flat, queue))
    child.start()
    lead.join(rendezvous, 0)
    assert lead.send(flat) > 0 and queue.get(timeout=120) is True
    child.join(60)
