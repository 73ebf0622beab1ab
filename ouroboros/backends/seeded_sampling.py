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
    """A transformers LogitsProcessor: per-row seeded sampling with temperature and top-p.

    A row's token is drawn by inverse CDF: one uniform number from the row's stream, looked up in
    the cumulative probabilities of the tokens top-p keeps. The nucleus comes from `topk` of a
    growing size rather than a sort of the whole vocabulary, since the kept tokens are almost
    always a few hundred of the 49k. Sorting every row's vocabulary and calling
    `torch.multinomial` per row took three quarters of a tiny model's generation time on CPU
    (48 ms a step for 8 rows; benchmarks/README.md)."""

    FIRST_K = 256  # the nucleus is looked for among this many tokens first, then 4x as many

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

    def nucleus(self, probs):
        """(probabilities, token ids) of the tokens top-p keeps in one row, most likely first: a
        token is kept while the tokens ranked above it cover less than top_p (the first always)."""
        torch = self.torch
        vocab = probs.shape[-1]
        k = min(self.FIRST_K, vocab)
        while True:
            values, ids = torch.topk(probs, k)  # sorted, most likely first
            covered = torch.cumsum(values, dim=-1)
            # Once the k tokens cover top_p, every token after them is dropped: the nucleus is inside.
            if k == vocab or float(covered[-1]) >= self.top_p:
                keep = max(int(((covered - values) < self.top_p).sum()), 1)
                return values[:keep], ids[:keep]
            k = min(4 * k, vocab)

    def __call__(self, input_ids, scores):
        torch = self.torch
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        chosen = []
        for row, g in enumerate(self.generators):
            if self.top_p < 1.0:
                values, ids = self.nucleus(probs[row])
            else:
                values, ids = probs[row], None
            cdf = torch.cumsum(values, dim=-1)
            u = torch.rand((), generator=g, device=cdf.device, dtype=cdf.dtype) * cdf[-1]
            # The first token whose cumulative probability passes u (never a zero-probability one).
            at = min(int(torch.searchsorted(cdf, u.reshape(1), right=True)), cdf.shape[-1] - 1)
            chosen.append(int(ids[at]) if ids is not None else at)
        out = torch.full_like(scores, float("-inf"))
        index = torch.tensor(chosen, device=scores.device).unsqueeze(-1)
        return out.scatter(-1, index, 0.0)
