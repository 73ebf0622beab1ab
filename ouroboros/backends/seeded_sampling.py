"""Sampling in a batch where each row draws from its own random stream.

`transformers.generate` samples every row of a batch from the one global torch RNG, so what a
request gets depends on which other requests shared its batch, and in what order. The
generator coalesces concurrent calls into batches as they arrive, so that would make the samples,
and then everything a run learns from them, depend on timing. Here each request's tokens come
from its own `torch.Generator`, seeded from the request's seed and id: a request samples the same
tokens whichever batch it lands in, and two runs with the same seed make the same samples.

It runs as the last logits processor of a greedy `generate`: it applies the request's temperature
and top-p, draws the token from the row's stream, and leaves that token the only one with a
finite score, which greedy decoding then picks.
"""
from __future__ import annotations

import hashlib


def request_seed(seed: int, request_id: str) -> int:
    """A row's stream seed from the request's seed and its id: two requests of one call that share
    a seed (one per call, as some agents give) still get different streams."""
    digest = hashlib.sha256(f"{seed}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class SeededSampler:
    """A transformers LogitsProcessor: per-row seeded sampling with temperature and top-p."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device="cpu") -> None:
        import torch

        if temperature <= 0:
            raise ValueError("seeded sampling needs a temperature above 0 (0 is greedy, which needs no seed)")
        self.torch = torch
        self.temperature = temperature
        self.top_p = top_p
        self.generators = []
        for seed in seeds:
            g = torch.Generator(device=device)
            g.manual_seed(seed)
            self.generators.append(g)

    def __call__(self, input_ids, scores):
        torch = self.torch
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
            # Drop a token when the tokens ranked above it already cover top_p; the first always stays.
            drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= self.top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        chosen = torch.stack([torch.multinomial(probs[row], 1, generator=g)
                              for row, g in enumerate(self.generators)])  # [batch, 1]
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, chosen, 0.0)
