"""transformers backend: batched generation with the chat template, and live weight loads.

Completions carry the sampled token ids and their log-probabilities under the
policy itself (log-softmax of the raw logits, before temperature or top-p), which
is what a policy-gradient learner needs.
"""
from __future__ import annotations

from typing import Any

from ouroboros.backends.base import BackendError, ModelBackend
from ouroboros.backends.local_model import chat_prompt_ids, eos_ids, unavailable
from ouroboros.types import Completion, Request


class HFBackend(ModelBackend):
    name = "hf"
    accepts_weights = True

    def __init__(
        self,
        model: str,
        dtype: str = "float32",
        threads: int | None = None,
        max_batch: int = 32,
        lora: dict[str, Any] | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).to(self.device)
        except OSError as exc:
            raise unavailable(model, exc) from None
        self.model.eval()
        self.tokenizer.padding_side = "left"  # generation appends on the right
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_batch = max_batch
        self.lora = lora  # the learner's LoRA settings; the adapter is attached on the first LoRA load
        self._flat = None  # FlatParams, built on the first load of a given layout

    # -- weights -------------------------------------------------------------
    def _attach_lora(self) -> None:
        from peft import LoraConfig, get_peft_model

        if self.lora is None:
            raise BackendError("received LoRA weights but the generator was built without the learner's LoRA settings")
        self.model = get_peft_model(self.model, LoraConfig(**self.lora))
        self.model.eval()

    def load_weights(self, flat: Any, index: tuple, kind: str, version: int) -> None:
        """Make a published version live with one copy into a flat tensor the parameters live in."""
        from ouroboros.weights import FlatParams

        if kind == "lora" and not hasattr(self.model, "peft_config"):
            self._attach_lora()
            self._flat = None
        if kind == "full" and hasattr(self.model, "peft_config"):
            # Full weights already hold any adapter merged in: drop ours so it is not applied twice.
            self.model = self.model.unload()
            self._flat = None
        if self._flat is None or not self._flat.matches(index):
            try:
                self._flat = FlatParams(dict(self.model.named_parameters()), index)
            except (KeyError, ValueError) as exc:
                raise BackendError(f"weights version {version} does not fit this model: {exc}") from None
        self._flat.load(flat)
        self.weights_version = version

    # -- generation ------------------------------------------------------------
    def _prompts(self, requests: list[Request]) -> list[list[int]]:
        return [chat_prompt_ids(self.tokenizer, r.messages) for r in requests]

    def generate(self, requests: list[Request]) -> list[Completion]:
        if not requests:
            return []
        prompts = self._prompts(requests)
        # Batches group equal sampling settings, and similar lengths to waste less on padding.
        order = sorted(range(len(requests)), key=lambda i: (requests[i].temperature, requests[i].top_p,
                                                             requests[i].max_new_tokens, len(prompts[i])))
        out: list[Completion | None] = [None] * len(requests)
        batch: list[int] = []
        for i in order:
            if batch and (len(batch) >= self.max_batch or not self._same_settings(requests[batch[0]], requests[i])):
                self._run_batch(requests, prompts, batch, out)
                batch = []
            batch.append(i)
        if batch:
            self._run_batch(requests, prompts, batch, out)
        return out  # type: ignore[return-value]

    @staticmethod
    def _same_settings(a: Request, b: Request) -> bool:
        return (a.temperature, a.top_p, a.max_new_tokens) == (b.temperature, b.top_p, b.max_new_tokens)

    def _run_batch(self, requests, prompts, idx: list[int], out: list) -> None:
        torch = self.torch
        first = requests[idx[0]]
        width = max(len(prompts[i]) for i in idx)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in idx], device=self.device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx], device=self.device)
        sampling = first.temperature > 0
        greedy = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        if sampling and all(requests[i].seed is not None for i in idx):
            # Each request from its own stream, whatever else shares the batch (seeded_sampling.py).
            from transformers import LogitsProcessorList

            from ouroboros.backends.seeded_sampling import SeededSampler, request_seed

            sampler = SeededSampler([request_seed(requests[i].seed, requests[i].id) for i in idx], first.temperature,
                                    first.top_p, device=self.device)
            kwargs = dict(greedy, logits_processor=LogitsProcessorList([sampler]))
        elif sampling:
            if first.seed is not None:
                torch.manual_seed(first.seed)
            kwargs = dict(do_sample=True, temperature=first.temperature, top_p=first.top_p)
        else:
            kwargs = greedy
        with torch.no_grad():
            gen = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=first.max_new_tokens,
                pad_token_id=pad,
                return_dict_in_generate=True,
                output_logits=True,
                **kwargs,
            )
        new = gen.sequences[:, width:]
        # The sampled tokens' log-probabilities under the raw logits, a step at a time: stacking
        # every step first held [batch, steps, vocab] floats three times over (600 MB each for
        # 32 rows of 96 tokens over a 49k vocabulary).
        logprobs = torch.stack([torch.log_softmax(step.float(), dim=-1).gather(-1, new[:, k:k + 1]).squeeze(-1)
                                for k, step in enumerate(gen.logits)], dim=1)
        eos = eos_ids(self.model.generation_config.eos_token_id, self.tokenizer)
        for row, i in enumerate(idx):
            ids = new[row].tolist()
            cut = next((k for k, t in enumerate(ids) if t in eos), None)
            finish = "stop" if cut is not None else "length"
            ids = ids[:cut] if cut is not None else ids
            out[i] = Completion(
                request_id=requests[i].id,
                text=self.tokenizer.decode(ids, skip_special_tokens=True),
                token_ids=ids,
                logprobs=logprobs[row, : len(ids)].tolist(),
                weights_version=self.weights_version,
                backend=self.name,
                prompt_tokens=len(prompts[i]),
                finish_reason=finish,
            )
