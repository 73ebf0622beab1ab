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
    the cumulative probabilities of the tokens top-p keeps. The nucleus comes from one `topk` of
    the batch rather than a sort of the whole vocabulary, since the kept tokens are almost always
    within the first few hundred of the 49k; a flatter row alone is sorted whole. Sorting every row's
    vocabulary and calling `torch.multinomial` per row took three quarters of a tiny model's
    generation time on CPU (48 ms a step for 8 rows; benchmarks/README.md)."""

    FIRST_K = 256  # the nucleus is looked for among this many tokens first, else in the whole sort

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

    def ranked(self, probs):
        """(probabilities, token ids) of each row of `probs` [rows, vocab], most likely first and
        equal ones by token id, covering at least the tokens top-p keeps; past the nucleus a row's
        probabilities are zeroed. A token is kept while the tokens ranked above it cover less
        than top_p (the first always). The order, and so a row's draw, is the same whichever
        way it was found, which keeps a row's tokens independent of the rows sharing its batch."""
        torch = self.torch
        rows, vocab = probs.shape
        if vocab <= self.FIRST_K:
            values, ids = torch.sort(probs, dim=-1, descending=True, stable=True)
            return values * self._kept(values), ids
        values, ids = torch.topk(probs, self.FIRST_K, dim=-1)
        ids, by_id = torch.sort(ids, dim=-1)  # ties in topk's output come in no set order
        values, order = torch.sort(values.gather(-1, by_id), dim=-1, descending=True, stable=True)
        ids = ids.gather(-1, order)
        kept = self._kept(values)
        smallest_kept = torch.where(kept, values, torch.full_like(values, float("inf"))).min(-1).values
        # Every token outside the k is below such a row's nucleus: none of them could be kept or tie.
        flat = values[..., -1] >= smallest_kept
        if not bool(flat.any()):
            return values * kept, ids
        # A flat row's nucleus is wider than the first k: that row alone from the whole (stable)
        # sort. The others keep their k, padded with tokens of probability 0, which no draw picks.
        # (A tiny model's batch often has one flat row; sorting every row for it was a fifth of
        # its generation time.)
        wide_values = torch.zeros((rows, vocab), dtype=values.dtype, device=values.device)
        wide_ids = torch.zeros((rows, vocab), dtype=ids.dtype, device=ids.device)
        wide_values[:, : self.FIRST_K] = values * kept
        wide_ids[:, : self.FIRST_K] = ids
        which = flat.nonzero().squeeze(-1)
        sorted_values, sorted_ids = torch.sort(probs[which], dim=-1, descending=True, stable=True)
        wide_values[which] = sorted_values * self._kept(sorted_values)
        wide_ids[which] = sorted_ids
        return wide_values, wide_ids

    def _kept(self, values):
        kept = (self.torch.cumsum(values, dim=-1) - values) < self.top_p
        kept[..., 0] = True
        return kept

    def __call__(self, input_ids, scores):
        torch = self.torch
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            values, ids = self.ranked(probs)
        else:
            values, ids = probs, None
        cdf = torch.cumsum(values, dim=-1)
        # One uniform number from each row's own stream, scaled to the row's kept mass.
        u = torch.stack([torch.rand((), generator=g, device=cdf.device, dtype=cdf.dtype) for g in self.generators])
        u = (u * cdf[:, -1]).unsqueeze(-1)
        # The first token whose cumulative probability passes u (never a zero-probability one).
        at = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)
        chosen = ids.gather(-1, at) if ids is not None else at
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, chosen, 0.0)
