"""Learner: the LoRA policy, its optimizer, and one update per round.

`learner.algorithm` picks the update: DPO through TRL on preference pairs (`learn/dpo.py`), or
a policy gradient (GRPO, PPO, REINFORCE: `learn/policy_gradient.py`) on each policy turn's
sampled tokens. The frozen base model is the reference of every algorithm. The AdamW optimizer
lives across rounds. `publish` copies the adapter (or the merged weights) out once, puts it in
the object store and returns a versioned, checksummed `WeightsRef`; `checkpoint` returns the
version's checkpoint files for the recorder to write.
"""
from __future__ import annotations

import logging
import time

from ouroboros.actors.generator import lora_settings
from ouroboros.actors.handles import gather
from ouroboros.config import Config
from ouroboros.types import WeightsRef
from ouroboros.weights import checksum, pack

log = logging.getLogger(__name__)


class Learner:
    def __init__(self, cfg: Config) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ouroboros import models

        self.cfg = cfg
        l = cfg.learner
        torch.set_num_threads(l.threads)
        torch.manual_seed(cfg.run.seed)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        cuda = self.device == "cuda"
        if l.quantize == "4bit" and not cuda:
            raise RuntimeError("learner.quantize is 4bit (QLoRA), which needs a GPU, and this learner has none: "
                               "give it one (learner.num_gpus) or set learner.quantize: none")
        path = models.resolve(cfg.policy.model)
        self.base_model = cfg.policy.model
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.bf16 = bool(l.bf16 if l.bf16 is not None else cuda)
        kwargs = {"dtype": getattr(torch, cfg.policy.dtype)}
        if l.quantize == "4bit":
            try:
                from transformers import BitsAndBytesConfig
                import bitsandbytes  # noqa: F401
            except ImportError:
                raise RuntimeError("learner.quantize is 4bit but bitsandbytes is not installed: "
                                   "pip install bitsandbytes (GPU nodes), or set learner.quantize: none") from None
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
            kwargs["device_map"] = {"": 0}
        base = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if l.quantize == "4bit":
            from peft import prepare_model_for_kbit_training

            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=True)
        else:
            base = base.to(self.device)
        checkpointing = bool(l.gradient_checkpointing if l.gradient_checkpointing is not None else cuda)
        if checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # B starts at zero, so version 0 (no adapter) and the fresh adapter are the same policy.
        self.model = get_peft_model(base, LoraConfig(**lora_settings(cfg)))
        self.value_head = None
        if l.value_head:
            hidden = base.config.hidden_size
            self.value_head = torch.nn.Linear(hidden, 1).to(self.device)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.value_head is not None:
            params += list(self.value_head.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=l.learning_rate)
        self.version = 0
        self.steps = 0
        self._last_published = None  # the buffer of the latest version, for copy_benchmark and send_weights
        self._group = None  # rank 0 of the weights group, where the config has one
        autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if self.bf16 and cuda else None
        if l.algorithm == "dpo":
            from ouroboros.learn.dpo import DPO

            self.update = DPO(cfg, self.model, self.tokenizer, self.device, self.bf16, checkpointing)
        else:
            from ouroboros.learn.policy_gradient import PolicyGradient

            self.update = PolicyGradient(cfg, self.model, self.tokenizer, self.device, self.value_head, autocast)

    def train(self, batch_refs) -> tuple[dict, list[dict]]:
        """One policy update from the round's batch (refs, or plain lists in tests): preference
        pairs for dpo, policy turns otherwise. Returns (metrics, per-turn rows for the store).
        A batch refused as a whole (NaN rewards) leaves the policy as it was and says why."""
        from ouroboros.learn.policy_gradient import BatchRefused

        batch = gather(batch_refs)
        try:
            metrics, rows = self.update.update(batch, self.version, self.optimizer, self.steps,
                                               self.cfg.run.seed + self.version)
        except BatchRefused as exc:
            log.error("learner refused the batch: %s", exc)
            return {"algorithm": self.cfg.learner.algorithm, "steps": 0, "loss": None, "refused": str(exc),
                    "refused_ids": exc.ids, "nothing_to_learn": f"batch refused: {exc}"}, []
        self.steps += metrics["steps"]
        return metrics, rows

    def _named(self, kind: str) -> list:
        """What a version of `kind` publishes, as (name, tensor): the adapter alone, or the base
        weights with the adapter merged in (call `pack` before unmerging)."""
        if kind == "lora":
            return [(n, p) for n, p in self.model.named_parameters() if "lora_" in n]
        # Base-model names: PEFT renames each adapted weight to `<module>.base_layer.weight`.
        return [(n.replace(".base_layer", ""), p) for n, p in self.model.get_base_model().named_parameters()
                if "lora_" not in n]

    def publish(self, kind: str | None = None, new_version: bool = True) -> WeightsRef:
        """A new policy version: its tensors packed once into one bucket and put in the object store
        (or kept as the buffer itself, for a learner used without Ray). `new_version=False`
        publishes the version it holds again (a resumed run's generators load it)."""
        kind = kind or self.cfg.learner.publish
        if kind == "full":
            self.model.merge_adapter()
        try:
            bucket = pack(self._named(kind))
        finally:
            if kind == "full":
                self.model.unmerge_adapter()
        if new_version:
            self.version += 1
        self._last_published = bucket.flat
        ref = _put(bucket.flat)
        return WeightsRef(version=self.version, kind=kind, ref=ref, checksum=checksum(bucket.flat, bucket.index),
                          num_bytes=bucket.flat.nbytes, base_model=self.base_model, index=bucket.index)

    def checkpoint(self) -> dict[str, bytes]:
        """The latest published version's checkpoint files (learn/checkpoint.py), for the recorder."""
        from ouroboros.learn.checkpoint import snapshot

        extra = {"reference_return": getattr(self.update, "reference_return", {})}
        return snapshot(self.model, self.optimizer, self.value_head, self.version, self.steps,
                        self.cfg.model_dump(by_alias=True), self.base_model, extra)

    def restore(self, files) -> int:
        """Come back from a version's checkpoint (learn/checkpoint.py, `files` as the recorder
        wrote them): adapter, optimizer, value head, counters and RNG states, so the next update
        is the one an uninterrupted learner would make. Returns the restored version."""
        from ouroboros.actors.handles import resolve
        from ouroboros.learn.checkpoint import restore

        state = restore(resolve(files), self.model, self.optimizer, self.value_head)
        self.version, self.steps = int(state["version"]), int(state["step"])
        if hasattr(self.update, "reference_return"):
            self.update.reference_return = dict(state.get("reference_return") or {})
        return self.version

    def weights_version(self) -> int:
        """The latest published version (0 before any): also a cheap call to see the actor is up."""
        return self.version

    # -- a weights group (generator.weights_transport gloo or nccl; ouroboros/weights_group.py) --
    def host_weights_group(self, backend: str, world: int, generation: int, timeout_s: float):
        """Open the rendezvous of a new group, with the learner as rank 0."""
        from ouroboros.weights_group import WeightsGroup

        if self._group is None:
            self._group = WeightsGroup()
        return self._group.host(backend, world, generation, timeout_s)

    def weights_device(self) -> str | None:
        from ouroboros.weights_group import device_identity

        return device_identity()

    def join_weights_group(self, rendezvous) -> int:
        self._group.join(rendezvous, 0)
        return rendezvous.generation

    def send_weights(self, version: int) -> float:
        """Broadcast the buffer of `version` (the latest published) to the group; returns seconds."""
        if self._group is None or self._last_published is None or version != self.version:
            raise RuntimeError(f"send_weights(v{version}): the learner's latest version is v{self.version}"
                               f"{'' if self._group is not None else ' and it is in no weights group'}")
        return self._group.send(self._last_published)

    def copy_benchmark(self) -> float:
        """Seconds for one in-memory copy of the last published buffer (into memory already
        allocated, the cheapest copy there is): the yardstick a broadcast is measured against."""
        import numpy as np

        flat = self._last_published
        if flat is None:
            raise RuntimeError("copy_benchmark measures a published version: call publish() first")
        dst = np.empty_like(flat)
        np.copyto(dst, flat)  # touch the pages once so the timed copy measures bandwidth, not faults
        started = time.perf_counter()
        np.copyto(dst, flat)
        return time.perf_counter() - started


def _put(flat):
    try:
        import ray
    except ImportError:  # a plain learner (a benchmark on a machine without Ray)
        return flat
    return ray.put(flat) if ray.is_initialized() else flat
