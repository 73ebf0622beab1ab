"""The seeded sampler: its nucleus is top-p's as a full sort finds it, its draws follow the
nucleus' renormalized probabilities, and a row's draws depend on its seed only."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from ouroboros.backends.seeded_sampling import SeededSampler  # noqa: E402


def sorted_nucleus(probs, top_p: float) -> set[int]:
    """Top-p by the textbook: sort the whole vocabulary, keep a token while those above it cover
    less than top_p."""
    values, order = torch.sort(probs, descending=True)
    before = torch.cumsum(values, 0) - values
    return set(order[before < top_p].tolist())


@pytest.mark.parametrize("shape", ["peaked", "flat", "one-token"])
def test_the_nucleus_is_the_one_a_full_sort_finds(shape):
    gen = torch.Generator().manual_seed(3)
    vocab = 49152
    for top_p in (0.5, 0.9, 0.95, 0.999):
        if shape == "peaked":
            logits = torch.randn(vocab, generator=gen) * 4
        elif shape == "flat":  # thousands of tokens in the nucleus: the search grows past its first k
            logits = torch.randn(vocab, generator=gen) * 0.05
        else:
            logits = torch.full((vocab,), -30.0)
            logits[123] = 30.0
        probs = torch.softmax(logits, 0)
        values, ids = SeededSampler([0], 1.0, top_p).ranked(probs.unsqueeze(0))
        kept = ids[0][values[0] > 0]
        assert set(kept.tolist()) == sorted_nucleus(probs, top_p)
        assert torch.all(values[0][:-1] >= values[0][1:])
        if shape == "flat":
            assert len(kept) > SeededSampler.FIRST_K


def test_draws_follow_the_renormalized_nucleus():
    logits = torch.log(torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05]))
    rows = 20000
    sampler = SeededSampler(list(range(rows)), 1.0, 0.8)  # keeps 0.4, 0.3, 0.15 (0.7 before the third < 0.8)
    picked = sampler(None, logits.repeat(rows, 1)).argmax(-1)
    counts = torch.bincount(picked, minlength=5).tolist()
    assert counts[3] == counts[4] == 0
    for token, p in enumerate((0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85)):
        assert abs(counts[token] / rows - p) < 4 * math.sqrt(p * (1 - p) / rows), (token, counts)
    # Temperature reshapes before the nucleus: at 0.5 the top token alone covers 0.8 of the mass.
    hot = SeededSampler(list(range(2000)), 0.5, 0.5)(None, logits.repeat(2000, 1)).argmax(-1)
    assert set(hot.tolist()) == {0}


def test_a_row_draws_the_same_tokens_whatever_rows_share_its_batch():
    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(1))
    alone = [SeededSampler([77], 1.0, 0.9)(None, logits[r:r + 1]).argmax(-1).item() for r in range(4)]
    for r in range(4):
        together = SeededSampler([5, 77, 9], 1.0, 0.9)  # the same row between two others
        assert together(None, torch.stack([logits[(r + 1) % 4], logits[r], logits[(r + 2) % 4]]))[1].argmax().item() \
            == alone[r]
    # A stream goes on from call to call: a sampler's later draws are not its first one again.
    one = SeededSampler([77], 1.0, 1.0)
    flat = torch.zeros(1, 1000)
    assert len({one(None, flat).argmax().item() for _ in range(20)}) > 1
    # The output leaves the drawn token the only one greedy decoding can pick.
    out = SeededSampler([1, 2], 1.0, 1.0)(None, logits[:2])
    assert torch.isfinite(out).sum(-1).tolist() == [1, 1]


def test_tied_tokens_are_drawn_alike_whether_their_row_took_topk_or_the_whole_sort():
    vocab = 5000
    tied = torch.full((vocab,), -20.0)
    tied[torch.arange(40, 4000, 400)] = 5.0  # ten equal top tokens; top-p 0.5 keeps five of them
    flat = torch.zeros(vocab)  # its nucleus is wider than the first k: that row is sorted whole
    for seed in range(50):
        alone = SeededSampler([seed], 1.0, 0.5)(None, tied.unsqueeze(0)).argmax(-1).item()
        mixed = SeededSampler([seed, 1], 1.0, 0.5)(None, torch.stack([tied, flat]))[0].argmax().item()
        assert alone == mixed and alone in range(40, 2000, 400)  # the five with the lowest ids
