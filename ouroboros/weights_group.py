"""A process group that carries each published version from the learner to the generators.

By default (`generator.weights_transport: store`) a version travels through Ray's object store:
the learner puts one flat buffer (ouroboros/weights.py) and every generator fetches it, with no
copy on the learner's node and one transfer per node elsewhere. With `gloo` or `nccl` the learner
instead broadcasts the same flat buffer over a torch.distributed process group, in fixed-size
chunks: rank 0 is the learner, ranks 1.. are the generators. gloo runs over TCP on any host
(CPU clusters; it is also how CI exercises the protocol); nccl runs GPU to GPU over NVLink or
InfiniBand, and needs every rank on a GPU of its own.

Why the published bucket and not vLLM's weight-transfer engine: vLLM's engines hand each
received tensor straight to the model's `load_weights`, so nothing could check the version
before it is live. A generator here receives the bucket whole, verifies its checksum, and then
loads it exactly as a bucket fetched from the store is loaded. The price is one bucket of host
memory per generator.

The groups are built from a TCPStore with torch's process-group classes, not with
`init_process_group`, so no process-wide default group is touched: a Generator actor that also
runs a vLLM engine (which has its own groups) can join one.
"""
from __future__ import annotations

import datetime
import logging
import os
import socket
from dataclasses import dataclass

import numpy as np

from ouroboros.backends.base import BackendError

# 16 Mi floats (64 MiB) per broadcast: large enough that per-call latency is noise, small enough
# that nccl's staging buffer on each GPU stays small.
CHUNK = 16 << 20
log = logging.getLogger(__name__)
TRANSPORTS = ("store", "gloo", "nccl")


class TransferError(BackendError):
    """A group could not form, or a broadcast failed or timed out."""


@dataclass(frozen=True)
class Rendezvous:
    """Where a group's ranks meet: the learner's TCPStore. `generation` counts the groups formed in
    a run; a generator restarted by Ray holds none until the next one forms."""

    backend: str
    host: str
    port: int
    world: int
    generation: int
    timeout_s: float


def node_address() -> str:
    """This node's address as the other nodes of the Ray cluster reach it (loopback outside Ray)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:
        pass
    return "127.0.0.1"


def device_identity() -> str | None:
    """The node and GPU this process uses (nccl allows one rank per GPU), or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    uuid = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "uuid", None)
    return f"{socket.gethostname()}:{uuid if uuid is not None else torch.cuda.current_device()}"


class WeightsGroup:
    """One rank's end of a group. Rank 0 (the learner) opens the rendezvous with `host`; every
    rank then calls `join` at the same time (forming the group is a collective)."""

    def __init__(self) -> None:
        self.rendezvous: Rendezvous | None = None
        self.rank: int | None = None
        self._store = None  # the TCPStore server, on rank 0
        self._group = None
        self._device = None

    @property
    def generation(self) -> int | None:
        # Read once each: a receive that fails closes the group from another of the actor's threads.
        group, rendezvous = self._group, self.rendezvous
        return rendezvous.generation if group is not None and rendezvous is not None else None

    def host(self, backend: str, world: int, generation: int, timeout_s: float) -> Rendezvous:
        """Rank 0: start the rendezvous store on a free port of this node."""
        import torch.distributed as dist

        if backend not in ("gloo", "nccl"):
            raise TransferError(f"unknown weights transport {backend!r}: expected one of {', '.join(TRANSPORTS)}")
        self.close()
        # The store listens on every interface whatever host it is given (README: vLLM generators
        # says what that means for a cluster's network); port 0 takes a free one.
        self._store = dist.TCPStore("0.0.0.0", 0, world, True, timeout=datetime.timedelta(seconds=timeout_s),
                                    wait_for_workers=False)
        return Rendezvous(backend, node_address(), int(self._store.port), world, generation, timeout_s)

    def join(self, rendezvous: Rendezvous, rank: int) -> None:
        """Form the group; blocks until every rank has joined or `timeout_s` passes."""
        import torch
        import torch.distributed as dist

        if rank != 0:
            self.close()
        timeout = datetime.timedelta(seconds=rendezvous.timeout_s)
        try:
            store = self._store if rank == 0 else dist.TCPStore(
                rendezvous.host, rendezvous.port, rendezvous.world, False, timeout=timeout)
            prefixed = dist.PrefixStore(f"ouroboros-weights/{rendezvous.generation}", store)
            if rendezvous.backend == "nccl":
                if not torch.cuda.is_available():
                    raise TransferError("generator.weights_transport is nccl but this process sees no GPU: give the "
                                        "learner and every generator a GPU (num_gpus), or use gloo or store")
                self._device = torch.device("cuda", torch.cuda.current_device())
                # nccl's wait otherwise only orders streams and never raises: a missing or dead rank
                # would block the host until nccl's watchdog kills the whole process, where a
                # blocking wait raises after the timeout and the store fallback can take over.
                # (Read when a group is made; only groups made after this see it.)
                os.environ["TORCH_NCCL_BLOCKING_WAIT"] = "1"
                os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "0"
                options = dist.ProcessGroupNCCL.Options()
                options._timeout = timeout
                self._group = dist.ProcessGroupNCCL(prefixed, rank, rendezvous.world, options)
            else:
                self._device = torch.device("cpu")
                # On the address other nodes reach this one by: gloo would otherwise take the
                # hostname's, which is 127.0.1.1 on a stock Debian or Ubuntu host.
                options = dist.ProcessGroupGloo._Options()
                options._devices = [dist.ProcessGroupGloo.create_device(hostname=node_address())]
                options._timeout = timeout
                self._group = dist.ProcessGroupGloo(prefixed, rank, rendezvous.world, options)
            # The first collective is where a missing rank shows, within the timeout. A broadcast
            # on this rank's own device, not a barrier: nccl's barrier guesses a device from the
            # rank, which is wrong where each actor sees its one GPU as cuda:0.
            probe = torch.tensor([float(rendezvous.generation)], device=self._device)
            self._group.broadcast(probe, 0).wait()
            if self._device.type == "cuda":
                torch.cuda.synchronize(self._device)
        except TransferError:
            raise
        except Exception as exc:
            self._group = None
            self._store = None  # rank 0: stop listening; the next group gets a new rendezvous
            raise TransferError(
                f"the {rendezvous.backend} weights group (rank {rank} of {rendezvous.world}, rendezvous "
                f"{rendezvous.host}:{rendezvous.port}) did not form within {rendezvous.timeout_s:g} s "
                f"({type(exc).__name__}: {_first_line(exc)}); check that the nodes reach each other on that port "
                f"and on the {rendezvous.backend} ports each rank opens (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME pick "
                "the interface), or use generator.weights_transport: store") from None
        self.rendezvous, self.rank = rendezvous, rank

    def send(self, flat: np.ndarray) -> float:
        """Rank 0: broadcast the published buffer; returns the seconds it took."""
        import time
        import warnings

        import torch

        group = self._require(0)
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # numpy buffers torch did not allocate
            source = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32))
        staging = self._staging(len(source))
        for lo in range(0, len(source), CHUNK):
            part = source[lo:lo + CHUNK]
            if staging is not None:
                staging[:len(part)].copy_(part)
                part = staging[:len(part)]
            self._wait(group.broadcast(part, 0), "sending")
        if staging is not None:
            torch.cuda.synchronize(self._device)  # nccl's wait only orders the streams
        return time.perf_counter() - started

    def receive(self, numel: int) -> np.ndarray:
        """Ranks 1..: the broadcast buffer, `numel` float32 values, in host memory."""
        import torch

        group = self._require(None)
        out = torch.empty(numel, dtype=torch.float32)
        staging = self._staging(numel)
        for lo in range(0, numel, CHUNK):
            part = out[lo:lo + CHUNK]
            target = part if staging is None else staging[:len(part)]
            self._wait(group.broadcast(target, 0), "receiving")
            if staging is not None:
                part.copy_(target)
        return out.numpy()

    def close(self) -> None:
        """Leave the group (a later `join` forms a new one); rank 0 also stops its store."""
        group, self._group = self._group, None
        if group is not None:
            try:
                group.abort() if hasattr(group, "abort") else None
            except Exception:  # noqa: BLE001 - a broken group may not abort cleanly; it is dropped either way
                pass
        self.rendezvous = self.rank = None
        self._store = None

    # -- helpers ---------------------------------------------------------------
    def _require(self, rank: int | None):
        if self._group is None:
            raise TransferError("this process is not in a weights group (it restarted, or the last one broke); "
                                "the driver forms a new group before the next broadcast")
        if rank is not None and self.rank != rank:
            raise TransferError(f"only rank {rank} sends; this is rank {self.rank}")
        return self._group

    def _staging(self, numel: int):
        """nccl moves device memory: one chunk-sized buffer on this rank's GPU."""
        import torch

        if self._device is None or self._device.type == "cpu":
            return None
        return torch.empty(min(numel, CHUNK), dtype=torch.float32, device=self._device)

    def _wait(self, work, what: str) -> None:
        try:
            work.wait()
        except Exception as exc:
            r = self.rendezvous
            self.close()  # a failed collective leaves the group unusable
            raise TransferError(f"{what} weights over the {r.backend if r else ''} group failed "
                                f"({type(exc).__name__}: {_first_line(exc)}): a rank died or timed out "
                                f"after {r.timeout_s if r else 0:g} s") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:300]


class Broadcaster:
    """The driver's side of making a version live on every generator: through the object store,
    or over the learner's group, which it forms before the first broadcast and again whenever a
    generator is not in the current one (Ray restarted it; it loaded the live version from the
    store on the way up).

    The group only speeds the store up; it never costs a run. Once a group has formed, a group
    that cannot form again, or a send that fails, falls back to the store for that version. Only a
    group that never formed at all stops the run: that is a network or config error to fix."""

    def __init__(self, transport: str, timeout_s: float) -> None:
        if transport not in TRANSPORTS:
            raise TransferError(f"unknown weights transport {transport!r}: expected one of {', '.join(TRANSPORTS)}")
        self.transport = transport
        self.timeout_s = timeout_s
        self.generation = 0
        self._formed = False  # a group formed once in this run
        self._broken = False  # the last send failed: form a new group even if every rank thinks it is in one

    def limit_s(self) -> float:
        """How long the driver waits for a broadcast: over a group, a receive may wait `timeout_s`
        before it falls back to the store, whose load has its own `timeout_s`."""
        return self.timeout_s * (1 if self.transport == "store" else 2) + 60

    def launch(self, learner, generators: list, weights) -> list:
        """Start the loads; returns refs whose values are each generator's load timings, and, last
        when a group carries the bytes, the learner's sending seconds."""
        if self.transport == "store":
            return [g.load_weights.remote(weights) for g in generators]
        try:
            self._ensure(learner, generators)
        except Exception as exc:  # noqa: BLE001 - TransferError, RayTaskError, RayActorError alike
            if not self._formed:
                raise
            log.warning("the %s weights group did not form again (%s); v%d goes through the object store",
                        self.transport, _first_line(getattr(exc, "cause", None) or exc), weights.version)
            self._broken = True
            return [g.load_weights.remote(weights) for g in generators]
        loads = [g.load_weights.remote(weights, True) for g in generators]
        return loads + [learner.send_weights.remote(weights.version)]

    def collect(self, refs: list, generators: int, timeout_s: float) -> tuple[list[dict], float | None]:
        """Wait for what `launch` started: (each generator's load timings, the learner's sending
        seconds or None). A failed send does not fail the broadcast: a generator that missed the
        bytes loads them from the store (its timings say so); the group forms anew next time."""
        import ray

        loads = ray.get(refs[:generators], timeout=timeout_s)
        if len(refs) == generators:
            return loads, None
        try:
            return loads, ray.get(refs[generators], timeout=self.timeout_s + 30)
        except (ray.exceptions.RayTaskError, ray.exceptions.GetTimeoutError) as exc:
            log.warning("the learner's weights broadcast failed (%s); the group forms again before the next one",
                        _first_line(getattr(exc, "cause", None) or exc))
            self._broken = True
            return loads, None

    def _ensure(self, learner, generators: list) -> None:
        import ray

        try:
            states = ray.get([g.weights_group.remote() for g in generators], timeout=self.timeout_s)
            if self.generation and not self._broken and all(s["generation"] == self.generation for s in states):
                return
            if self.transport == "nccl":
                devices = [ray.get(learner.weights_device.remote(), timeout=self.timeout_s)]
                _check_one_rank_per_gpu(devices + [s["device"] for s in states])
            self.generation += 1
            rendezvous = ray.get(learner.host_weights_group.remote(
                self.transport, len(generators) + 1, self.generation, self.timeout_s), timeout=self.timeout_s)
            joins = [learner.join_weights_group.remote(rendezvous)]
            joins += [g.join_weights_group.remote(rendezvous, rank) for rank, g in enumerate(generators, start=1)]
            # Each rank gives up after timeout_s; this bounds a rank that never answers at all.
            ray.get(joins, timeout=self.timeout_s + 30)
        except ray.exceptions.GetTimeoutError:
            raise TransferError(f"the {self.transport} weights group did not form within {self.timeout_s + 30:g} s: "
                                "a rank did not answer; see the actors' logs") from None
        self._formed, self._broken = True, False


def _check_one_rank_per_gpu(devices: list) -> None:
    """nccl cannot put two ranks of a group on one GPU; say so before it fails obscurely."""
    names = ["the learner"] + [f"generator {i}" for i in range(len(devices) - 1)]
    missing = [n for n, d in zip(names, devices) if d is None]
    if missing:
        raise TransferError(f"generator.weights_transport is nccl but {', '.join(missing)} has no GPU: give the "
                            "learner and every generator one (learner.num_gpus, generator.num_gpus), or use store")
    seen: dict[str, str] = {}
    for name, device in zip(names, devices):
        if device in seen:
            raise TransferError(f"generator.weights_transport is nccl but {seen[device]} and {name} share a GPU, "
                                "which nccl does not allow: give each its own GPU, or use store (one node, shared "
                                "GPUs: the object store's buffer reaches every rank with one host-to-device copy)")
        seen[device] = name
