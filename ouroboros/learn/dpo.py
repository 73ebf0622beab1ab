"""DPO through TRL's DPOTrainer, on the learner's LoRA policy; the frozen base is the reference.

The round's preference pairs become a `datasets.Dataset`, and TRL runs `epochs` passes over them
with the learner's AdamW optimizer, which lives across rounds. The reference's log-probs are
computed once per round, and `learner.length_desensitize` (LD-DPO) weighs a longer reply's tokens
past the shorter one's length.
"""
from __future__ import annotations

import logging
import tempfile
import time

from ouroboros.types import PreferencePair

log = logging.getLogger(__name__)


class DPO:
    def __init__(self, cfg, model, tokenizer, device: str, bf16: bool = False, checkpointing: bool = False) -> None:
        """`bf16`, `checkpointing`: as the learner resolved them for its device."""
        from ouroboros.learn.trl_cpu import score_completion_tokens_only_on_cpu

        score_completion_tokens_only_on_cpu()
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.bf16 = bf16
        self.checkpointing = checkpointing

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

    def update(self, pairs: list[PreferencePair], version: int, optimizer, first_step: int, seed: int) -> tuple[dict, list]:
        from trl import DPOConfig, DPOTrainer

        pairs, too_long = self._fitting(pairs)
        if not pairs:
            why = (f"all {too_long} pairs are longer than learner.max_length" if too_long
                   else "no preference pairs (all rewards tied)")
            return {"algorithm": "dpo", "dpo_loss": None, "loss": None, "pairs": 0, "steps": 0, "seconds": 0.0,
                    "pairs_too_long": too_long, "nothing_to_learn": why}, []
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
                ld_alpha=l.length_desensitize,
                max_length=l.max_length,
                logging_steps=1,
                report_to=[],
                save_strategy="no",
                disable_tqdm=True,
                gradient_checkpointing=self.checkpointing,
                use_cpu=self.device != "cuda",
                bf16=self.bf16,
                max_grad_norm=l.max_grad_norm,
                seed=seed,
                dataloader_num_workers=0,
            )
            trainer = DPOTrainer(model=self.model, args=args, train_dataset=self._dataset(pairs),
                                 processing_class=self.tokenizer, optimizers=(optimizer, None))
            # Handed a PeftModel, TRL copies the current adapter as a "ref" adapter. We want the
            # base model as the reference in every round, which TRL uses when no "ref" adapter exists.
            if "ref" in self.model.peft_config:
                self.model.delete_adapter("ref")
            self.model.set_adapter("default")
            ref_s = _reference_once(trainer, args) if l.epochs > 1 else None
            result = trainer.train()
        history = [h for h in trainer.state.log_history if "loss" in h]
        metrics = {
            "algorithm": "dpo",
            "dpo_loss": float(result.training_loss),
            "loss": float(result.training_loss),
            "pairs": len(pairs),
            "pairs_too_long": too_long,
            "steps": trainer.state.global_step,
            "seconds": time.monotonic() - started,
            "reference_s": ref_s,
        }
        metrics["per_step"] = [
            {"step": first_step + int(h["step"]), "loss": float(h["loss"]), "grad_norm": _number(h.get("grad_norm")),
             "learning_rate": _number(h.get("learning_rate")), "rewards_margins": _number(h.get("rewards/margins")),
             "rewards_accuracies": _number(h.get("rewards/accuracies"))}
            for h in history if "step" in h]
        if history:
            last = history[-1]
            for key in ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen",
                        "logps/rejected"):
                if key in last:
                    metrics[key.replace("/", "_")] = float(last[key])
        self.model.eval()
        return metrics, []


def _reference_once(trainer, args) -> float | None:
    """The reference's log-probs of every pair, computed once before training instead of once per
    epoch (the reference is the frozen base, the same in every epoch): with 2 epochs a third fewer
    forward passes. TRL does this itself with `precompute_ref_log_probs`, but in its constructor,
    before the "ref" adapter it made is deleted, so against the current policy rather than the
    base; it is asked again here, after. Returns the seconds it took, or None where this TRL has
    no such step (each epoch then runs the reference as before)."""
    import uuid

    compute = getattr(trainer, "_precompute_ref_logps", None)
    if compute is None or not hasattr(trainer, "precompute_ref_logps"):
        return None
    started = time.monotonic()
    # The datasets cache is keyed by this and the dataset's fingerprint: a fresh key per update,
    # so a round never reads another round's reference log-probs.
    trainer._precompute_model_hash = uuid.uuid4().hex
    trainer.train_dataset = compute(trainer.train_dataset, "train", args.per_device_train_batch_size)
    trainer.precompute_ref_logps = True
    return time.monotonic() - started


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None
