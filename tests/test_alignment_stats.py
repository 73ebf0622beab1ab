"""The alignment evaluator's statistics checked against their definitions (fast, numpy only)."""
import hashlib
import math

import numpy as np
import pytest

from ouroboros.envs.alignment.stats import (
    bootstrap_win_rate,
    bradley_terry,
    cluster_texts,
    distinct_n,
    elo,
    kmeans,
    length_controlled_win_rate,
    ngram_features,
    self_bleu,
    win_probability,
)


def _simulate(strengths: dict[str, float], games: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    names = list(strengths)
    out = []
    for _ in range(games):
        i, j = rng.choice(len(names), 2, replace=False)
        a, b = names[i], names[j]
        out.append((a, b, float(rng.random() < strengths[a] / (strengths[a] + strengths[b]))))
    return out


def _raw_rate(outcomes, a):
    return float(np.mean([r if x == a else 1.0 - r for x, _, r in outcomes]))


# --- Bradley-Terry, win probability, Elo ------------------------------------------------------


def test_bt_recovers_the_order_of_known_strengths():
    true = {"w": 8.0, "x": 4.0, "y": 2.0, "z": 1.0}
    s = bradley_terry(_simulate(true, 600, seed=1))
    assert sorted(s, key=s.get, reverse=True) == ["w", "x", "y", "z"]
    assert math.exp(np.mean(np.log(list(s.values())))) == pytest.approx(1.0)
    # The ratios, not only the order, come back roughly (true w/z = 8).
    assert 4.0 < s["w"] / s["z"] < 16.0


@pytest.mark.parametrize("wins,losses,ties,prior", [(7, 3, 0, 0.5), (7, 3, 2, 0.5), (5, 0, 0, 0.5),
                                                    (6, 2, 4, 0.0), (3, 9, 1, 2.0)])
def test_bt_two_players_match_the_mm_fixed_point(wins, losses, ties, prior):
    # For two players the MM fixed point s_a = W_a / (N / (s_a + s_b)) gives
    # p = W_a / N, where a tie is half a win and the prior adds `prior` tied games:
    # W_a = wins + ties/2 + prior/2, N = wins + losses + ties + prior.
    outcomes = [("a", "b", 1.0)] * wins + [("b", "a", 1.0)] * losses + [("a", "b", 0.5)] * ties
    s = bradley_terry(outcomes, prior=prior)
    n = wins + losses + ties
    assert win_probability(s, "a", "b") == pytest.approx((wins + ties / 2 + prior / 2) / (n + prior), abs=1e-9)
    assert s["a"] * s["b"] == pytest.approx(1.0)
    assert all(math.isfinite(v) and v > 0 for v in s.values())


def test_bt_all_ties_and_unplayed_players_are_equal():
    s = bradley_terry([("a", "b", 0.5), ("b", "a", 0.5)], players=["c"])
    assert s == pytest.approx({"a": 1.0, "b": 1.0, "c": 1.0})
    assert bradley_terry([]) == {}


def test_bt_rejects_results_outside_zero_one():
    with pytest.raises(ValueError):
        bradley_terry([("a", "b", 2.0)])


def test_win_probability_is_the_strength_share():
    s = {"a": 3.0, "b": 1.0}
    assert win_probability(s, "a", "b") == pytest.approx(0.75)
    assert win_probability(s, "b", "a") == pytest.approx(0.25)
    assert win_probability(s, "a", "a") == pytest.approx(0.5)


def test_elo_anchor_and_400_points_per_factor_of_ten():
    s = {"b": 10.0, "a": 1.0, "c": 0.1}
    e = elo(s)
    assert e["a"] == pytest.approx(1000.0)  # the first player in sorted order is the anchor
    assert e["b"] - e["a"] == pytest.approx(400.0)
    assert e["a"] - e["c"] == pytest.approx(400.0)
    e2 = elo(s, anchor="b", base=1500.0)
    assert e2 == pytest.approx({"b": 1500.0, "a": 1100.0, "c": 700.0})
    # Elo differences reproduce the BT win probability: 1 / (1 + 10^(-diff/400)).
    assert 1 / (1 + 10 ** (-(e["b"] - e["c"]) / 400)) == pytest.approx(win_probability(s, "b", "c"))


# --- bootstrap intervals ----------------------------------------------------------------------


def test_bootstrap_excludes_half_for_a_clearly_better_player_and_counts_both_orders():
    outcomes = [("a", "b", 1.0)] * 20 + [("b", "a", 0.0)] * 16 + [("a", "b", 0.0)] * 3 + [("b", "a", 0.5)] * 2
    outcomes += [("a", "c", 1.0)] * 3  # a third player: in the fit, not in the head-to-head counts
    r = bootstrap_win_rate(outcomes, "a", "b", samples=300, seed=0)
    assert r["low"] <= r["p"] <= r["high"]
    assert r["low"] > 0.5
    assert (r["n"], r["wins"], r["losses"], r["ties"]) == (len(outcomes), 36, 3, 2)
    assert r["p"] == pytest.approx(win_probability(bradley_terry(outcomes), "a", "b"))


def test_bootstrap_includes_half_for_a_coin_flip():
    rng = np.random.default_rng(5)
    outcomes = [("a", "b", float(rng.random() < 0.5)) for _ in range(60)]
    r = bootstrap_win_rate(outcomes, "a", "b", samples=300, seed=0)
    assert r["low"] <= r["p"] <= r["high"]
    assert r["low"] < 0.5 < r["high"]


def test_bootstrap_is_deterministic_for_a_seed():
    outcomes = _simulate({"a": 2.0, "b": 1.0, "c": 1.0}, 80, seed=2)
    one = bootstrap_win_rate(outcomes, "a", "b", samples=100, seed=7)
    assert one == bootstrap_win_rate(outcomes, "a", "b", samples=100, seed=7)
    assert one != bootstrap_win_rate(outcomes, "a", "b", samples=100, seed=8)


def test_cluster_bootstrap_is_at_least_as_wide_on_identical_pairs():
    # Each prompt judged twice (both orders) with the same verdict: 2n outcomes carrying the
    # information of n, which only the cluster bootstrap knows.
    rng = np.random.default_rng(3)
    outcomes, groups = [], []
    for prompt in range(40):
        won = float(rng.random() < 0.65)
        outcomes += [("a", "b", won), ("b", "a", 1.0 - won)]
        groups += [prompt, prompt]
    plain = bootstrap_win_rate(outcomes, "a", "b", samples=400, seed=0)
    clustered = bootstrap_win_rate(outcomes, "a", "b", samples=400, seed=0, groups=groups)
    assert clustered["p"] == plain["p"]
    assert clustered["high"] - clustered["low"] >= plain["high"] - plain["low"]
    with pytest.raises(ValueError):
        bootstrap_win_rate(outcomes, "a", "b", samples=10, groups=groups[:-1])


# --- length-controlled win rate ---------------------------------------------------------------


def test_lc_win_rate_discounts_wins_that_come_only_from_length():
    # a is longer in 3 of 4 prompts and wins exactly those: the raw rate is 0.75.
    outcomes, la, lb = [], [], []
    for i in range(40):
        longer = i % 4 != 0
        la.append(120 if longer else 80)
        lb.append(100)
        outcomes.append(("a", "b", 1.0 if longer else 0.0) if i % 2 else ("b", "a", 0.0 if longer else 1.0))
    raw = _raw_rate(outcomes, "a")
    r = length_controlled_win_rate(outcomes, la, lb, "a", "b", samples=200, seed=0)
    assert raw == pytest.approx(0.75)
    assert abs(r["p"] - 0.5) < abs(raw - 0.5)
    assert r["phi"] > 0 and r["n"] == 40


def test_lc_win_rate_near_half_when_win_odds_depend_only_on_length():
    # Noisy judge: P(a wins) = sigmoid(3 tanh(d / 40)), so the true theta is 0 while a is
    # usually the longer answer and its raw win rate is far above 0.5.
    rng = np.random.default_rng(3)
    outcomes, la, lb = [], [], []
    for i in range(300):
        d = rng.normal(30, 40)
        la.append(100 + d)
        lb.append(100)
        won = rng.random() < 1 / (1 + math.exp(-3 * math.tanh(d / 40)))
        outcomes.append(("a", "b", float(won)) if i % 2 else ("b", "a", float(not won)))
    raw = _raw_rate(outcomes, "a")
    r = length_controlled_win_rate(outcomes, la, lb, "a", "b", samples=200, seed=0)
    assert raw > 0.7
    assert r["low"] <= 0.5 <= r["high"]
    assert abs(r["p"] - 0.5) < abs(raw - 0.5)


def test_lc_win_rate_matches_the_raw_rate_when_lengths_are_equal():
    outcomes = [("a", "b", 1.0)] * 30 + [("b", "a", 1.0)] * 10 + [("b", "a", 0.5)] * 4 + [("a", "c", 1.0)] * 5
    lengths = [100] * len(outcomes)
    r = length_controlled_win_rate(outcomes, lengths, lengths, "a", "b", samples=200, seed=0)
    assert r["n"] == 44  # only the head-to-head outcomes enter
    assert r["p"] == pytest.approx((30 + 2) / 44, abs=1e-3)  # ties are half a win
    assert r["phi"] == pytest.approx(0.0, abs=1e-9)
    assert r["low"] <= r["p"] <= r["high"]


# --- diversity --------------------------------------------------------------------------------


def test_distinct_n_on_hand_counted_examples():
    texts = ["the cat the cat", "The dog"]
    # unigrams: the cat the cat the dog -> 3 distinct of 6
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)
    # bigrams: (the cat) (cat the) (the cat) | (the dog) -> 3 distinct of 4; none spans two texts
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(texts, 3) == pytest.approx(2 / 2)
    assert distinct_n(["one"], 2) == 0.0
    assert distinct_n([], 1) == 0.0


def test_self_bleu_identical_texts_score_one_and_different_texts_lower():
    same = ["the answer is forty two"] * 3
    assert self_bleu(same) == pytest.approx(1.0)
    different = ["the answer is forty two", "bananas grow in warm wet climates", "please restart the router first"]
    assert self_bleu(different) < 0.3
    assert self_bleu(["only one"]) == 0.0


def test_self_bleu_hand_computed_with_add_one_smoothing():
    # "a b c d" against "a b c e", max_n=2: unigram 3/4; bigram 2 of 3 matched, smoothed
    # (2+1)/(3+1) = 3/4; equal lengths so no brevity penalty; geometric mean 3/4.
    assert self_bleu(["a b c d", "a b c e"], max_n=2) == pytest.approx(0.75)
    # Brevity penalty: "a b" against "a b c d" has precision 1 but a penalty exp(1 - 4/2);
    # "a b c d" against "a b" is longer (no penalty) with unigram precision 2/4.
    assert self_bleu(["a b", "a b c d"], max_n=1) == pytest.approx((math.exp(1 - 4 / 2) + 2 / 4) / 2)


# --- features and clustering ------------------------------------------------------------------


def _blake_bucket(gram: str, dims: int) -> int:
    return int.from_bytes(hashlib.blake2b(gram.encode("utf-8"), digest_size=8).digest(), "little") % dims


def test_ngram_features_use_a_stable_hash():
    x = ngram_features(["Hello!"], n=(1,), dims=2048)
    assert x.shape == (1, 2048)
    nz = np.flatnonzero(x[0])
    # Hard-coded, so a salted or changed hash fails here in any process.
    assert list(nz) == [_blake_bucket("hello", 2048)] == [1703]
    assert x[0, 1703] == pytest.approx(1.0)
    y = ngram_features(["hello world"], n=(1, 2), dims=2048)
    assert set(np.flatnonzero(y[0])) == {1703, 344, 1671}


def test_ngram_features_rows_are_unit_or_zero():
    x = ngram_features(["The cat sat.", "the CAT sat", "", "a dog, a bone; a walk"], dims=512)
    norms = np.linalg.norm(x, axis=1)
    assert norms == pytest.approx([1.0, 1.0, 0.0, 1.0])
    assert np.allclose(x[0], x[1])  # case and punctuation do not matter


def _blobs(seed=0):
    rng = np.random.default_rng(seed)
    return np.vstack([rng.normal(0.0, 0.3, (20, 2)), rng.normal(10.0, 0.3, (20, 2))])


def test_kmeans_separates_two_blobs_and_is_deterministic():
    X = _blobs()
    labels, centres = kmeans(X, 2, seed=0)
    assert len(set(labels[:20])) == 1 and len(set(labels[20:])) == 1 and labels[0] != labels[20]
    assert sorted(np.round(centres[:, 0]).tolist()) == [0.0, 10.0]
    labels2, centres2 = kmeans(X, 2, seed=0)
    assert np.array_equal(labels, labels2) and np.array_equal(centres, centres2)


def test_kmeans_cuts_k_to_the_distinct_rows():
    X = np.array([[0.0, 0.0]] * 5 + [[1.0, 1.0]] * 5)
    labels, centres = kmeans(X, 6, seed=1)
    assert centres.shape == (2, 2)
    assert len(set(labels[:5])) == 1 and len(set(labels[5:])) == 1 and labels[0] != labels[5]
    labels, centres = kmeans(np.ones((4, 3)), 3)
    assert centres.shape == (1, 3) and set(labels) == {0}


def test_cluster_texts_groups_two_topics_apart_with_sensible_terms():
    texts = [
        "I cook pasta with tomato sauce",
        "the telescope shows stars and planets",
        "pasta with garlic and tomato sauce is dinner",
        "planets orbit stars in the night sky",
        "boil the pasta then add tomato sauce",
        "a telescope reveals distant stars",
        "fresh pasta needs a rich tomato sauce",
    ]
    clusters = cluster_texts(texts, 2, seed=0)
    assert [c["size"] for c in clusters] == [4, 3]
    assert [c["cluster"] for c in clusters] == [0, 1]
    assert clusters[0]["members"] == [0, 2, 4, 6]
    assert clusters[1]["members"] == [1, 3, 5]
    assert "pasta" in clusters[0]["terms"] and "tomato sauce" in clusters[0]["terms"]
    assert "stars" in clusters[1]["terms"]
    assert all(len(c["terms"]) <= 5 for c in clusters)
    assert cluster_texts([], 3) == []
