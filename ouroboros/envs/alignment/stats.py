"""The statistics behind the alignment environment's evaluator pack and its reward-hacking guards.

Pairwise preferences between policies become Bradley-Terry strengths, Elo ratings and win rates
with bootstrap intervals (a cluster bootstrap when one prompt yields several outcomes), and a
length-controlled win rate in the manner of AlpacaEval 2, so that a policy cannot win by
writing longer answers. The diversity guards (distinct-n, self-BLEU) and the clustering of
answers (hashed tf-idf n-grams, k-means) catch a policy that collapses onto one answer the
judges happen to like.

Everything is written from the definitions with numpy alone (no statistics library), as pure
functions that are deterministic given a seed.
"""
from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

Outcome = tuple[str, str, float]

# A player who never won (possible only with prior=0) has MLE strength 0; flooring it keeps the
# logs and the geometric-mean normalisation finite.
_FLOOR = 1e-12


# --- Bradley-Terry ---------------------------------------------------------------------------


def _players(outcomes: Sequence[Outcome], players: Sequence[str] | None) -> list[str]:
    names = set(players or ())
    for a, b, _ in outcomes:
        names.add(a)
        names.add(b)
    return sorted(names)


def _encode(outcomes: Sequence[Outcome], index: dict[str, int]):
    ia = np.array([index[a] for a, _, _ in outcomes], dtype=np.int64)
    ib = np.array([index[b] for _, b, _ in outcomes], dtype=np.int64)
    r = np.array([float(x) for _, _, x in outcomes], dtype=np.float64)
    if r.size and (r.min() < 0.0 or r.max() > 1.0):
        raise ValueError("an outcome's result must lie in [0, 1]")
    return ia, ib, r


def _aggregate(ia, ib, r, w, m: int, prior: float):
    """Wins W[i] and games N[i, j] from weighted outcomes, the prior's virtual ties included."""
    # A game of a player against itself says nothing about strength; it would also put mass on
    # the diagonal, where the MM update has no term.
    w = np.where(ia == ib, 0.0, w)
    wins = np.bincount(ia, weights=w * r, minlength=m) + np.bincount(ib, weights=w * (1.0 - r), minlength=m)
    games = np.zeros((m, m))
    np.add.at(games, (ia, ib), w)
    games = games + games.T
    if prior > 0 and m > 1:
        games += prior * (1.0 - np.eye(m))
        wins += prior * (m - 1) / 2.0
    return wins, games


def _bt_fit(wins, games, iters: int, tol: float, init=None) -> np.ndarray:
    m = wins.size
    s = np.ones(m) if init is None else np.asarray(init, dtype=np.float64).copy()
    for _ in range(iters):
        denom = (games / (s[:, None] + s[None, :])).sum(axis=1)
        # A player with no games (prior=0) has no likelihood term: leave it where it is.
        new = np.where(denom > 0, wins / np.where(denom > 0, denom, 1.0), s)
        new = np.maximum(new, _FLOOR)
        # The likelihood is invariant to a common scale; pinning the geometric mean fixes it, so
        # the convergence test compares like with like.
        new /= math.exp(float(np.mean(np.log(new))))
        done = float(np.max(np.abs(np.log(new) - np.log(s)))) < tol
        s = new
        if done:
            break
    return s


def bradley_terry(outcomes: Sequence[Outcome], players: Sequence[str] | None = None, iters: int = 500,
                  tol: float = 1e-10, prior: float = 0.5) -> dict[str, float]:
    """Bradley-Terry strengths fitted by Hunter's (2004) MM algorithm, normalised to geometric mean 1.

    `outcomes` are (a, b, result): 1.0 a beat b, 0.0 b beat a, 0.5 a tie, which counts half a
    win to each side. Every pair of players also gets `prior` virtual ties, so that a player who
    never lost keeps a finite strength; for two players the fit is then in closed form:
    s_a / (s_a + s_b) = (wins + ties/2 + prior/2) / (games + prior).
    `players` adds players that may have no outcomes (they get strength 1 through the prior).
    """
    names = _players(outcomes, players)
    if not names:
        return {}
    index = {p: i for i, p in enumerate(names)}
    ia, ib, r = _encode(outcomes, index)
    wins, games = _aggregate(ia, ib, r, np.ones(r.size), len(names), prior)
    s = _bt_fit(wins, games, iters, tol)
    return {p: float(s[i]) for p, i in index.items()}


def win_probability(strengths: dict[str, float], a: str, b: str) -> float:
    """P(a beats b) under Bradley-Terry: s_a / (s_a + s_b)."""
    sa, sb = strengths[a], strengths[b]
    return sa / (sa + sb)


def elo(strengths: dict[str, float], anchor: str | None = None, base: float = 1000.0) -> dict[str, float]:
    """Strengths on the Elo scale (400 points = 10x the strength), `anchor` (default: the first
    player in sorted order) at `base`; only differences mean anything, the anchor says where zero is."""
    if not strengths:
        return {}
    anchor = min(strengths) if anchor is None else anchor
    ref = 400.0 * math.log10(strengths[anchor])
    return {p: base + 400.0 * math.log10(s) - ref for p, s in strengths.items()}


# --- bootstrap intervals ---------------------------------------------------------------------


def _units(n: int, groups: Sequence | None) -> tuple[np.ndarray, int]:
    """Each outcome's resampling unit: itself, or its group (a cluster bootstrap)."""
    if groups is None:
        return np.arange(n), n
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} outcomes")
    ids: dict = {}
    unit = np.array([ids.setdefault(g, len(ids)) for g in groups], dtype=np.int64)
    return unit, len(ids)


def _resample_weights(rng: np.random.Generator, unit: np.ndarray, n_units: int) -> np.ndarray:
    # Drawing units with replacement is the same as weighting each outcome by how many times its
    # unit was drawn, which lets every resample reuse the same encoded arrays.
    counts = np.bincount(rng.integers(0, n_units, size=n_units), minlength=n_units)
    return counts[unit].astype(np.float64)


def _interval(values: list[float], level: float) -> tuple[float, float]:
    lo, hi = np.quantile(np.asarray(values), [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def _head_to_head(outcomes: Sequence[Outcome], a: str, b: str) -> tuple[list[int], list[float]]:
    """The outcomes between a and b (either order) and each one's result from a's side."""
    sel, ys = [], []
    for i, (x, y, r) in enumerate(outcomes):
        if x == a and y == b:
            sel.append(i)
            ys.append(float(r))
        elif x == b and y == a:
            sel.append(i)
            ys.append(1.0 - float(r))
    return sel, ys


def bootstrap_win_rate(outcomes: Sequence[Outcome], a: str, b: str, samples: int = 1000, seed: int = 0,
                       groups: Sequence | None = None, level: float = 0.95) -> dict:
    """a's Bradley-Terry win probability over b, fitted on all outcomes (so games against third
    players count too), with a percentile bootstrap interval.

    With `groups` (one cluster key per outcome, e.g. the prompt id) whole groups are resampled:
    the two presentation orders of one prompt are not independent evidence, and treating them
    as such would make the interval too narrow. wins/losses/ties count a's head-to-head games.
    """
    if a == b:
        raise ValueError("a and b must be different players")
    _, ys = _head_to_head(outcomes, a, b)
    counts = {"n": len(outcomes), "wins": sum(y == 1.0 for y in ys), "losses": sum(y == 0.0 for y in ys),
              "ties": sum(0.0 < y < 1.0 for y in ys)}
    if not outcomes:
        return {"p": 0.5, "low": 0.0, "high": 1.0, **counts}
    names = _players(outcomes, [a, b])
    index = {p: i for i, p in enumerate(names)}
    ia, ib, r = _encode(outcomes, index)
    m, iters, tol, prior = len(names), 500, 1e-10, 0.5
    full = _bt_fit(*_aggregate(ia, ib, r, np.ones(r.size), m, prior), iters, tol)
    p = float(full[index[a]] / (full[index[a]] + full[index[b]]))
    unit, n_units = _units(len(outcomes), groups)
    rng = np.random.default_rng(seed)
    ps = []
    for _ in range(samples):
        w = _resample_weights(rng, unit, n_units)
        # Starting from the full-data fit only saves iterations; the fixed point is the same.
        s = _bt_fit(*_aggregate(ia, ib, r, w, m, prior), iters, tol, init=full)
        ps.append(float(s[index[a]] / (s[index[a]] + s[index[b]])))
    low, high = _interval(ps, level) if ps else (p, p)
    return {"p": p, "low": low, "high": high, **counts}


# --- length-controlled win rate --------------------------------------------------------------


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0)))


def _logistic(X: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float = 1e-4, iters: int = 100) -> np.ndarray:
    """Weighted logistic regression with fractional targets, by damped Newton (IRLS).

    A fractional target y is the same likelihood as two rows, y=1 with weight y and y=0 with
    weight 1-y, so a tie is its half-win/half-loss pair without doubling the rows. The ridge
    keeps the Hessian invertible when a column is constant (equal lengths make phi's column 0)
    and keeps the fit finite when length separates the outcomes perfectly.
    """
    beta = np.zeros(X.shape[1])
    eye = np.eye(X.shape[1])

    def loss(bt):
        z = X @ bt
        return float(np.sum(w * (np.logaddexp(0.0, z) - y * z)) + 0.5 * ridge * bt @ bt)

    f = loss(beta)
    for _ in range(iters):
        p = _sigmoid(X @ beta)
        grad = X.T @ (w * (p - y)) + ridge * beta
        hess = (X * (w * p * (1.0 - p))[:, None]).T @ X + ridge * eye
        step = np.linalg.solve(hess, grad)
        # Near separation a full Newton step can overshoot; halve until the loss goes down.
        t = 1.0
        while True:
            cand = beta - t * step
            fc = loss(cand)
            if fc <= f - 1e-4 * t * float(grad @ step) or t < 1e-10:
                break
            t /= 2.0
        beta, f = cand, fc
        if float(np.max(np.abs(t * step))) < 1e-10:
            break
    return beta


def _lc_fit(d: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    total = float(w.sum())
    mean = float((w * d).sum() / total)
    sd = math.sqrt(float((w * (d - mean) ** 2).sum() / total))
    sd = sd if sd > 0 else 1.0
    X = np.column_stack([np.ones_like(d), np.tanh(d / sd)])
    theta, phi = _logistic(X, y, w)
    return float(theta), float(phi)


def length_controlled_win_rate(outcomes: Sequence[Outcome], length_a: Sequence[float], length_b: Sequence[float],
                               a: str, b: str, samples: int = 1000, seed: int = 0, groups: Sequence | None = None,
                               level: float = 0.95) -> dict:
    """AlpacaEval 2's length-controlled win rate of a over b: y ~ theta + phi * tanh(dlen / sd).

    y is 1 where a won and 0 where b won (a tie is half of each); dlen is a's answer length minus
    b's (`length_a[i]`, `length_b[i]` are a's and b's lengths in outcome i whichever side of the
    tuple they sit on), sd its standard deviation. sigmoid(theta) is the win rate the fit
    predicts at equal lengths: what is left of a's advantage once length is accounted for.
    Only the head-to-head outcomes enter; n counts them. The interval is a (cluster) bootstrap.
    """
    if len(length_a) != len(outcomes) or len(length_b) != len(outcomes):
        raise ValueError("length_a and length_b must be aligned with outcomes")
    sel, ys = _head_to_head(outcomes, a, b)
    if not sel:
        return {"p": 0.5, "low": 0.0, "high": 1.0, "n": 0, "phi": 0.0}
    d = np.array([float(length_a[i]) - float(length_b[i]) for i in sel])
    y = np.array(ys)
    theta, phi = _lc_fit(d, y, np.ones(y.size))
    p = float(_sigmoid(theta))
    unit, n_units = _units(len(sel), None if groups is None else [groups[i] for i in sel])
    rng = np.random.default_rng(seed)
    ps = []
    for _ in range(samples):
        w = _resample_weights(rng, unit, n_units)
        ps.append(float(_sigmoid(_lc_fit(d, y, w)[0])))
    low, high = _interval(ps, level) if ps else (p, p)
    return {"p": p, "low": low, "high": high, "n": len(sel), "phi": phi}


# --- diversity -------------------------------------------------------------------------------


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams, pooled over texts (lowercased whitespace tokens; an
    n-gram never spans two texts); 0.0 when there are none."""
    if n < 1:
        raise ValueError("n must be at least 1")
    grams = [g for t in texts for g in _ngrams(t.lower().split(), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _sentence_bleu(hyp: list[str], refs: list[list[str]], max_n: int) -> float:
    if not hyp:
        return 0.0
    log_p = 0.0
    for n in range(1, max_n + 1):
        counts = Counter(_ngrams(hyp, n))
        most = Counter()
        for ref in refs:
            for g, c in Counter(_ngrams(ref, n)).items():
                most[g] = max(most[g], c)
        matched = sum(min(c, most[g]) for g, c in counts.items())
        total = sum(counts.values())
        if n == 1:
            if matched == 0:
                return 0.0
            log_p += math.log(matched / total)
        else:
            # Lin & Och's (2004) add-one smoothing (Chen & Cherry's 2014 "method 2") for n > 1:
            # a short text with no shared 4-gram would otherwise score exactly 0 whatever it
            # shares, which makes self-BLEU useless on the short answers a collapse produces.
            log_p += math.log((matched + 1) / (total + 1))
    c = len(hyp)
    # The reference length closest to the hypothesis's, the shorter on a tie, as in sacreBLEU/NLTK.
    r = min((abs(len(ref) - c), len(ref)) for ref in refs)[1]
    bp = 1.0 if c > r else math.exp(1.0 - r / c)
    return bp * math.exp(log_p / max_n)


def self_bleu(texts: Sequence[str], max_n: int = 4) -> float:
    """Mean sentence BLEU of each text against all the others as references (uniform weights
    up to `max_n`, brevity penalty); 0.0 for fewer than 2 texts. Higher means less diverse."""
    if len(texts) < 2:
        return 0.0
    toks = [t.lower().split() for t in texts]
    scores = [_sentence_bleu(h, toks[:i] + toks[i + 1:], max_n) for i, h in enumerate(toks)]
    return float(sum(scores) / len(scores))


# --- n-gram features and clustering ----------------------------------------------------------


def _words(text: str) -> list[str]:
    # Punctuation becomes a break rather than vanishing, so "end.Next" stays two words.
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def _bucket(gram: str, dims: int) -> int:
    # Python's hash() of a str is salted per process; features must mean the same in every
    # worker and every run, so the bucket comes from a fixed cryptographic hash.
    return int.from_bytes(hashlib.blake2b(gram.encode("utf-8"), digest_size=8).digest(), "little") % dims


def _ngram_table(texts: Sequence[str], n: int | Sequence[int], dims: int) -> tuple[np.ndarray, dict[int, str]]:
    """Hashed tf-idf rows and, per bucket, the corpus's most frequent n-gram that landed there."""
    sizes = (n,) if isinstance(n, int) else tuple(n)
    tf = np.zeros((len(texts), dims))
    freq: dict[int, Counter] = {}
    for row, text in enumerate(texts):
        words = _words(text)
        for size in sizes:
            for g in _ngrams(words, size):
                gram = " ".join(g)
                k = _bucket(gram, dims)
                tf[row, k] += 1.0
                freq.setdefault(k, Counter())[gram] += 1
    # idf per bucket, smoothed as if one extra document held every term (no zero division, and
    # a term in every document keeps weight 1 rather than 0); buckets are the features the
    # clustering sees, so their document frequency is the one that matters.
    df = (tf > 0).sum(axis=0)
    idf = np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0
    x = tf * idf
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    reps = {k: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for k, c in freq.items()}
    return x, reps


def ngram_features(texts: Sequence[str], n: int | Sequence[int] = (1, 2), dims: int = 2048) -> np.ndarray:
    """tf-idf of word n-grams (lowercased, punctuation stripped) hashed with blake2b into `dims`
    buckets; each row L2-normalised, a text with no n-grams a zero row."""
    return _ngram_table(texts, n, dims)[0]


def _sq_dist(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    d = (X * X).sum(1)[:, None] - 2.0 * X @ C.T + (C * C).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _kmeans_pp(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    idx = [int(rng.integers(X.shape[0]))]
    d2 = _sq_dist(X, X[idx]).min(1)
    while len(idx) < k:
        total = d2.sum()
        # D^2 sampling never repeats a chosen row; the uniform fallback is for rounding only.
        j = int(rng.choice(X.shape[0], p=d2 / total)) if total > 0 else int(rng.integers(X.shape[0]))
        idx.append(j)
        d2 = np.minimum(d2, _sq_dist(X, X[[j]])[:, 0])
    return X[idx].copy()


def _lloyd(X: np.ndarray, centres: np.ndarray, iters: int) -> tuple[np.ndarray, np.ndarray, float]:
    k = centres.shape[0]
    labels = None
    for _ in range(iters):
        d = _sq_dist(X, centres)
        new = d.argmin(1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        sizes = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, X)
        centres = np.where(sizes[:, None] > 0, sums / np.maximum(sizes, 1)[:, None], centres)
        empty = np.flatnonzero(sizes == 0)
        if empty.size:
            # An empty centre is wasted; the points worst served by their centre are where a
            # new one lowers the inertia most.
            far = np.argsort(-d[np.arange(X.shape[0]), labels], kind="stable")
            for c, j in zip(empty, far):
                centres[c] = X[j]
    d = _sq_dist(X, centres)
    labels = d.argmin(1)
    return labels, centres, float(d[np.arange(X.shape[0]), labels].sum())


def kmeans(X, k: int, seed: int = 0, iters: int = 100, restarts: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """k-means: k-means++ seeding, Lloyd iterations to convergence, the best of `restarts` by
    inertia. k is cut to the number of distinct rows; an empty cluster is re-seeded from the
    farthest point. Returns (labels, centres)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError("X must be 2-D")
    if k < 1:
        raise ValueError("k must be at least 1")
    if X.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, X.shape[1]))
    k = min(k, np.unique(X, axis=0).shape[0])
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(max(1, restarts)):
        labels, centres, inertia = _lloyd(X, _kmeans_pp(X, k, rng), iters)
        if best is None or inertia < best[2]:
            best = (labels, centres, inertia)
    return best[0].astype(np.int64), best[1]


def cluster_texts(texts: Sequence[str], k: int, seed: int = 0, top_terms: int = 5) -> list[dict]:
    """Texts clustered by their hashed tf-idf n-grams: one dict per cluster, largest first,
    {cluster (its rank), size, members (indices), terms (the n-grams heaviest in its centre)}."""
    if not texts:
        return []
    X, reps = _ngram_table(texts, (1, 2), 2048)
    labels, centres = kmeans(X, k, seed=seed)
    groups = [np.flatnonzero(labels == c) for c in range(centres.shape[0])]
    order = sorted((c for c in range(len(groups)) if groups[c].size),
                   key=lambda c: (-groups[c].size, int(groups[c][0])))
    out = []
    for rank, c in enumerate(order):
        weights = centres[c]
        top = [int(j) for j in np.argsort(-weights, kind="stable")[:top_terms] if weights[j] > 0]
        out.append({"cluster": rank, "size": int(groups[c].size), "members": [int(i) for i in groups[c]],
                    "terms": [reps[j] for j in top]})
    return out
