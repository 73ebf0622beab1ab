"""Generator: owns one model backend; generates and loads published weights.

It runs as a threaded actor (`generator_actor`). Calls on the hf backend coalesce into batches
(backends/coalesce.py), and a weights load waits for the batch in flight and holds the model
alone. The vllm backend takes concurrent calls straight into its engine's continuous batching
and orders weight loads against requests itself; API and scripted backends take their calls
concurrently.
"""
from __future__ import annotations

import logging
import time

from ouroboros.backends import BackendError, backend_class
from ouroboros.backends.coalesce import Coalescer
from ouroboros.config import Config
from ouroboros.types import Completion, Request, WeightsRef

log = logging.getLogger(__name__)


def backend_kwargs(cfg: Config) -> dict:
    """Constructor arguments of the configured backend, from the config sections it reads."""
    g = cfg.generator
    if g.backend == "hf":
        from ouroboros import models

        return {
            "model": models.resolve(cfg.policy.model),
            "dtype": cfg.policy.dtype,
            "threads": g.threads,
            "max_batch": g.max_batch,
            "lora": lora_settings(cfg),
        }
    if g.backend == "vllm":
        from ouroboros import models

        v = g.vllm
        return {
            "model": models.resolve(cfg.policy.model),
            "dtype": cfg.policy.dtype if v.dtype == "auto" else v.dtype,
            "max_model_len": v.max_model_len,
            "kv_cache_gb": v.kv_cache_gb,
            "gpu_memory_utilization": v.gpu_memory_utilization,
            "enforce_eager": v.enforce_eager,
            "tensor_parallel_size": v.tensor_parallel_size,
            "max_num_seqs": v.max_num_seqs,
            "multiprocess": v.multiprocess,
            "threads": g.threads,
            "lora": lora_settings(cfg),
            "lora_sync": v.lora_sync,
            "seed": cfg.run.seed,
            "sync_timeout_s": g.sync_timeout_s,
        }
    if g.backend == "scripted":
        return {"script": g.script, "script_file": g.script_file}
    if g.backend == "human":
        import os

        return {"console_dir": g.human.console_dir or os.path.join(cfg.run.out, "console"),
                "timeout_s": g.human.timeout_s}
    if g.backend in ("anthropic", "openai"):
        if not g.api.model:
            raise BackendError(f"generator.api.model is empty: name the {g.backend} model to call")
        kw = {"model": g.api.model, "base_url": g.api.base_url, "max_retries": g.api.max_retries,
              "timeout_s": g.api.timeout_s}
        if g.api.api_key_env:
            kw["api_key_env"] = g.api.api_key_env
        return kw
    return {"model": cfg.policy.model}


def lora_settings(cfg: Config) -> dict:
    l = cfg.learner
    return {"r": l.lora_r, "lora_alpha": l.lora_alpha, "lora_dropout": l.lora_dropout,
            "target_modules": list(l.target_modules), "task_type": "CAUSAL_LM"}


# hf runs one batch at a time, so concurrent calls are gathered into it. vLLM batches
# continuously by itself (requests join the running batch), and API backends are concurrent.
COALESCED = ("hf",)


def generator_actor(cfg: Config):
    """The Generator class as a Ray actor with its resources: threaded, so concurrent calls
    (many experiment cycles) meet in one batch, or run side by side on an API."""
    from ouroboros import placement

    return placement.actor(Generator, "generator", num_cpus=cfg.generator.num_cpus, num_gpus=cfg.generator.num_gpus,
                           max_concurrency=cfg.generator.concurrency)


class Generator:
    def __init__(self, cfg: Config, live=None) -> None:
        """`live`: the run's LiveWeights (actors/live_weights.py). Ray restarts a dead generator by
        calling this again; it then loads the version its peers serve before it takes a call."""
        from ouroboros.actors.handles import resolve, submit

        self.group = None  # its end of the learner's weights group, once the driver forms one
        self.backend = backend_class(cfg.generator.backend)(**backend_kwargs(cfg))
        self.coalescer = Coalescer(self.backend.generate, cfg.generator.max_batch) \
            if cfg.generator.backend in COALESCED else None
        weights = resolve(submit(live, "get")) if live is not None else None
        if weights is not None and weights.version != self.backend.weights_version:
            self.load_weights(weights)

    def generate(self, requests: list[Request]) -> list[Completion]:
        if self.coalescer is not None:
            return self.coalescer.generate(requests)
        return self.backend.generate(requests)

    def batching(self) -> dict:
        """Backend calls against requests served so far (coalesced backends)."""
        c = self.coalescer
        return {"batches": c.batches, "requests": c.requests} if c else {}

    def join_weights_group(self, rendezvous, rank: int) -> int:
        """Join the learner's weights group as `rank` (generator.weights_transport gloo or nccl)."""
        from ouroboros.weights_group import WeightsGroup

        if self.group is None:
            self.group = WeightsGroup()
        self.group.join(rendezvous, rank)
        return rendezvous.generation

    def weights_group(self) -> dict:
        """The group this generator is in (generation None: none, e.g. after a restart), and the GPU
        it would use, so the driver can refuse two nccl ranks on one GPU."""
        from ouroboros.weights_group import device_identity

        return {"generation": self.group.generation if self.group is not None else None,
                "device": device_identity()}

    def load_weights(self, weights: WeightsRef, over_group: bool = False) -> dict:
        """Make `weights` live, after checking they are what the learner published. `over_group`:
        receive the buffer from the learner's broadcast instead of the object store. Returns how
        long each part took, for the broadcast benchmark."""
        from ouroboros.actors.handles import resolve
        from ouroboros.weights import checksum
        from ouroboros.weights_group import TransferError

        started = time.perf_counter()
        flat, fallback = None, None
        if over_group and self.group is not None and self.group.generation is not None:
            try:
                flat = self.group.receive(weights.num_bytes // 4)
            except TransferError as exc:
                # The group broke (a rank died, or timed out): the version is in the store as well.
                fallback = str(exc)
                log.warning("weights v%d: %s; loading it from the object store instead", weights.version, exc)
        elif over_group:
            # Not in the group: Ray restarted this generator (a retried call) after the group formed.
            fallback = "this generator is in no weights group (restarted)"
        if flat is None:
            flat = resolve(weights.ref)  # zero-copy from the object store
        fetched = time.perf_counter()
        # A corrupted or mixed-up buffer would silently become the policy every agent samples.
        got = checksum(flat, weights.index)
        if got != weights.checksum:
            raise BackendError(
                f"weights v{weights.version} failed their checksum ({got} received, {weights.checksum} published): "
                "the buffer was corrupted or replaced on the way; the generator kept "
                f"v{self.backend.weights_version}. Rerun; if it repeats, check the node's memory and Ray's object store")
        checked = time.perf_counter()
        if self.coalescer is not None:
            with self.coalescer.exclusive():  # never under a batch in flight
                self.backend.load_weights(flat, weights.index, weights.kind, weights.version)
        else:
            self.backend.load_weights(flat, weights.index, weights.kind, weights.version)
        done = time.perf_counter()
        return {"version": weights.version, "fetch_s": fetched - started, "checksum_s": checked - fetched,
                "copy_s": done - checked, "total_s": done - started, "fallback": fallback}

    def weights_version(self) -> int:
        return self.backend.weights_version
