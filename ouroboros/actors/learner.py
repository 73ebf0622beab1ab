"""Learner: DPO with TRL on a PEFT LoRA adapter; the frozen base model is the reference.

One step, top to bottom: the round's preference pairs arrive as object refs,
become a `datasets.Dataset`, and TRL's DPOTrainer runs `epochs` passes over
them with an AdamW optimizer that lives across rounds. `publish` then copies
the adapter tensors out once, puts them in the object store and returns a
versioned, checksummed `WeightsRef`.
"""
from __future__ import annotations

import logging
import tempfile
import time

from ouroboros.actors.generator import lora_settings
from ouroboros.actors.handles import gather
from ouroboros.config import Config
from ouroboros.types import PreferencePair, WeightsRef
from ouroboros.weights import checksum, pack

log = logging.getLogger(__name__)


class Learner:
    def __init__(self, cfg: Config) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ouroboros import models
        from ouroboros.learn.trl_cpu import score_completion_tokens_only_on_cpu

        score_completion_tokens_only_on_cpu()
        self.cfg = cfg
        torch.set_num_threads(cfg.learner.threads)
        torch.manual_seed(cfg.run.seed)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        path = models.resolve(cfg.policy.model)
        self.base_model = cfg.policy.model
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        base = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, cfg.policy.dtype)).to(self.device)
        # B starts at zero, so version 0 (no adapter) and the fresh adapter are the same policy.
        self.model = get_peft_model(base, LoraConfig(**lora_settings(cfg)))
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=cfg.learner.learning_rate)
        self.version = 0
        self.steps = 0
        self._last_published = None  # the buffer of the latest version, for copy_benchmark

    def _dataset(self, pairs: list[PreferencePair]):
        from datasets import Dataset

        return Dataset.from_list([
            {"prompt": p.prompt,
             "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]}
            for p in pairs
        ])

    def _fitting(self, pairs: list[PreferencePair]) -> tuple[list[PreferencePair], int]:
        """The pairs whose prompt and longer reply fit `learner.max_length`. TRL cuts a longer
        sequence at its end, which would cut the replies the pair is about and leave a pair
        with nothing to compare; those are left out and counted instead."""
        limit = self.cfg.learner.max_length
        fitting = []
        for p in pairs:
            prompt = self.tokenizer.apply_chat_template(p.prompt, add_generation_prompt=True, tokenize=True,
                                                        return_dict=False)
            reply = max(len(self.tokenizer(p.chosen, add_special_tokens=False)["input_ids"]),
                        len(self.tokenizer(p.rejected, add_special_tokens=False)["input_ids"]))
            if len(prompt) + reply + 2 <= limit:  # + end-of-turn tokens
                fitting.append(p)
        if len(fitting) < len(pairs):
            log.warning("%d of %d preference pairs do not fit learner.max_length=%d and are left out; raise it",
                        len(pairs) - len(fitting), len(pairs), limit)
        return fitting, len(pairs) - len(fitting)

    def train(self, batch_refs) -> dict:
        """One policy update from the round's pairs (refs, or lists of pairs in tests)."""
        from trl import DPOConfig, DPOTrainer

        pairs: list[PreferencePair] = gather(batch_refs)
        pairs, too_long = self._fitting(pairs)
        if not pairs:
            return {"dpo_loss": None, "pairs": 0, "steps": 0, "seconds": 0.0, "pairs_too_long": too_long}
        started = time.monotonic()
        l = self.cfg.learner
        with tempfile.TemporaryDirectory(prefix="ouroboros-dpo-") as tmp:
            args = DPOConfig(
                output_dir=tmp,
                per_device_train_batch_size=min(l.batch_size, len(pairs)),
                num_train_epochs=l.epochs,
                learning_rate=l.learning_rate,
                lr_scheduler_type="constant",
                beta=l.beta,
                max_length=l.max_length,
                logging_steps=1,
                report_to=[],
                save_strategy="no",
                disable_tqdm=True,
                gradient_checkpointing=False,
                use_cpu=self.device == "cpu",
                bf16=False,
                seed=self.cfg.run.seed + self.version,
                dataloader_num_workers=0,
            )
            trainer = DPOTrainer(model=self.model, args=args, train_dataset=self._dataset(pairs),
                                 processing_class=self.tokenizer, optimizers=(self.optimizer, None))
            # Handed a PeftModel, TRL copies the current adapter as a "ref" adapter. We want the
            # base model as the reference in every round, which TRL uses when no "ref" adapter exists.
            if "ref" in self.model.peft_config:
                self.model.delete_adapter("ref")
            self.model.set_adapter("default")
            result = trainer.train()
        history = [h for h in trainer.state.log_history if "loss" in h]
        self.steps += trainer.state.global_step
        metrics = {
            "dpo_loss": float(result.training_loss),
            "pairs": len(pairs),
            "pairs_too_long": too_long,
            "steps": trainer.state.global_step,
            "seconds": time.monotonic() - started,
        }
        if history:
            last = history[-1]
            for key in ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"):
                if key in last:
                    metrics[key.replace("/", "_")] = float(last[key])
        self.model.eval()
        return metrics

    def _named(self, kind: str) -> list:
        """What a version of `kind` publishes, as (name, tensor): the adapter alone, or the base
        weights with the adapter merged in (call `pack` before unmerging)."""
        if kind == "lora":
            return [(n, p) for n, p in self.model.named_parameters() if "lora_" in n]
        # Base-model names: PEFT renames each adapted weight to `<module>.base_layer.weight`.
        return [(n.replace(".base_layer", ""), p) for n, p in self.model.get_base_model().named_parameters()
                if "lora_" not in n]

    def publish(self, kind: str | None = None) -> WeightsRef:
        """A new policy version: its tensors packed once into one bucket and put in the object store."""
        import ray

        kind = kind or self.cfg.learner.publish
        if kind == "full":
            self.model.merge_adapter()
        try:
            bucket = pack(self._named(kind))
        finally:
            if kind == "full":
                self.model.unmerge_adapter()
        self.version += 1
        self._last_published = bucket.flat
        ref = ray.put(bucket.flat) if ray.is_initialized() else bucket.flat
        return WeightsRef(version=self.version, kind=kind, ref=ref, checksum=checksum(bucket.flat, bucket.index),
                          num_bytes=bucket.flat.nbytes, base_model=self.base_model, index=bucket.index)

    def weights_version(self) -> int:
        """The latest published version (0 before any): also a cheap call to see the actor is up."""
        return self.version

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
