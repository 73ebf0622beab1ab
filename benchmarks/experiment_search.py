"""The `search` action over 10,000 stored experiments (target: under 50 ms per query).

    .venv/bin/python benchmarks/experiment_search.py [--quick] [--experiments 10000] [--seed 0] [--repeats 3]

1. Fill: an ExperimentStore in a temporary directory gets `--experiments` finished experiments
   through the real write path, `store.start(...)` then `store.finish(..., index=...)`, with
   synthetic text from a fixed seed: prose notes (Zipf-weighted words from a ~450-word
   research vocabulary plus filler words, identifiers, numbers), Python code (imports, defs,
   loops, prints, comments), results (stdout lines with metrics) and, for about 60% of them,
   errors (tracebacks with real exception names). About 320 words each. The time per
   `finish` is reported for the first and the last 5% of the fill: it grows with the table.
2. Search: `store.search(query, 5)` (FTS5, BM25, snippets; the text goes through
   `fts_query`) for 51 queries: single common and rare words, multi-word phrases, identifiers
   that occur in a few experiments, words that match nothing, a 30-word query (cut to 24
   terms), and text full of FTS5 syntax (`"`, `*`, `-`, `OR`, `NOT`, `NEAR(`, `:`, `^`,
   parentheses, braces) or non-ASCII. Each query runs `--repeats` times after one untimed
   warm-up pass; the figure per query is its median. Reported: median, p90 and max over the
   queries, medians by kind, and the slowest. A query that raises counts as a failure.
3. `_prev_data`: the cycle's prompt lookup (`ExperimentCycle._prev_data`, prev_experiments = 3):
   an OR of up to 24 words from the last three steps' notes and code, then `recent_finished`
   and `summaries`, for 20 synthetic step histories, timed the same way. Every action of every
   cycle pays it once.

Prints tables, then one line of JSON with every figure.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time

TOPICS = """gradient descent learning rate warmup schedule cosine decay transformer attention head layer
norm dropout batch size loss accuracy perplexity tokenizer embedding optimizer adam adamw momentum
nesterov weight decay curriculum reward policy value critic advantage ppo dpo grpo lora rank adapter
quantization int8 pruning distillation teacher student benchmark dataset split validation held-out
overfitting underfitting regularization numpy scipy pandas torch jax matrix eigenvalue singular vector
fourier transform convolution kernel stride padding recurrent lstm gru sampling temperature top-p
nucleus beam search greedy heuristic graph shortest path dijkstra dynamic programming memoization sort
quicksort mergesort hash table cache eviction memory allocation thread process pool latency throughput
bandwidth timeout retry traceback assertion overflow underflow nan inf divergence converged improved
regression baseline ablation hypothesis experiment result observation conclusion measured compared
seed variance confidence interval bootstrap mean median percentile histogram distribution gaussian
uniform bernoulli entropy kl divergence cross mutual information bits compression sparse dense
mixture experts routing capacity factor scaling law compute flops parameter count tokens context
window positional encoding rotary alibi kv cache prefill decode speculative draft verifier reward
model preference pairs chosen rejected margin beta reference frozen checkpoint resume shard
gradient clipping norm accumulation mixed precision bf16 fp16 fp32 loss scale optimizer state
sandbox container docker bwrap python script file json csv parquet arrow serialization pickle
random walk monte carlo markov chain simulation estimate pi integral derivative newton method root
finding bisection secant polynomial interpolation spline least squares linear algebra qr cholesky
prime sieve factorization modular arithmetic fibonacci closed form sum squares cubes triangle numbers
collatz conjecture sequence series convergence limit harmonic geometric arithmetic progression
string parsing regex tokenize unicode utf encoding byte pair vocabulary merge frequency zipf law
""".split()
FILLER = """the a of to and in is it that for on with as was this we by be are from at an not but
which or have has had were will can more than then so if when after before into over under again
""".split()
EXCEPTIONS = ["ZeroDivisionError: division by zero", "KeyError: 'loss'", "IndexError: list index out of range",
              "ValueError: math domain error", "TypeError: unsupported operand type(s) for +: 'int' and 'str'",
              "MemoryError", "RecursionError: maximum recursion depth exceeded",
              "ModuleNotFoundError: No module named 'sklearn'", "AssertionError: expected 285, got 284",
              "FileNotFoundError: [Errno 2] No such file or directory: 'squares.json'",
              "OverflowError: (34, 'Numerical result out of range')", "RuntimeError: CUDA not available",
              "timed out after 5 s (killed)", "killed: out of memory (oom)"]


class Text:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.topics = list(TOPICS)
        rng.shuffle(self.topics)
        # Zipf-ish weights: a few words are very common, most are rare.
        self.topic_w = [1.0 / (i + 1) ** 0.9 for i in range(len(self.topics))]

    def topic(self) -> str:
        return self.rng.choices(self.topics, self.topic_w)[0]

    def word(self) -> str:
        r = self.rng.random()
        if r < 0.45:
            return self.rng.choice(FILLER)
        if r < 0.93:
            return self.topic()
        if r < 0.97:
            return f"{self.rng.choice(self.topics)}_{self.rng.randrange(1000)}"  # identifiers, some unique
        return f"{self.rng.uniform(0, 100):.{self.rng.randrange(4)}f}"

    def prose(self, words: int) -> str:
        out, sentence = [], []
        for _ in range(words):
            sentence.append(self.word())
            if len(sentence) > self.rng.randrange(8, 20):
                out.append(" ".join(sentence).capitalize() + ".")
                sentence = []
        if sentence:
            out.append(" ".join(sentence).capitalize() + ".")
        return " ".join(out)

    def code(self, lines: int) -> str:
        rng = self.rng

        def t() -> str:
            return self.topic().replace("-", "_")

        out = [f"import {rng.choice(['math', 'json', 'random', 'numpy as np', 'time', 'itertools'])}"]
        for _ in range(lines):
            kind = rng.randrange(6)
            if kind == 0:
                out.append(f"def {t()}_{t()}(x, n={rng.randrange(100)}):")
            elif kind == 1:
                out.append(f"    for i in range({rng.choice([10, 100, 1000, 10**5])}):")
            elif kind == 2:
                out.append(f"        {t()} = {t()} * {rng.uniform(0, 1):.3f} + i")
            elif kind == 3:
                out.append(f"print('{t()}', {t()}, sum({t()}))")
            elif kind == 4:
                out.append(f"# {self.prose(rng.randrange(4, 12))}")
            else:
                out.append(f"{t()}_{rng.randrange(1000)} = json.load(open('{t()}.json'))")
        return "\n".join(out)

    def results(self, lines: int) -> str:
        rng, out = self.rng, []
        for _ in range(lines):
            if rng.random() < 0.5:
                out.append(f"exit code 0\nstdout:\nepoch {rng.randrange(20)} {self.topic()} {rng.uniform(0, 5):.4f} "
                           f"{self.topic()} {rng.uniform(0, 1):.3f} took {rng.uniform(0, 30):.2f} s")
            else:
                out.append(f"{self.topic()} {self.topic()} = {rng.randrange(10**6)} ({self.prose(rng.randrange(3, 10))})")
        return "\n".join(out)

    def errors(self, count: int) -> str:
        rng, out = self.rng, []
        for _ in range(count):
            out.append(f"exit code 1\nstderr:\nTraceback (most recent call last):\n  File \"/work/main.py\", line "
                       f"{rng.randrange(1, 80)}, in <module>\n    {self.code(1).splitlines()[-1].strip()}\n"
                       f"{rng.choice(EXCEPTIONS)}")
        return "\n".join(out)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def queries(ids: list[str], rng: random.Random) -> list[tuple[str, str]]:
    common = ["loss", "the", "learning", "import", "error", "gradient", "print", "attention"]
    rare = ["collatz", "cholesky", "bisection", "speculative", "zipf"]
    multi = ["learning rate warmup schedule", "closed form sum squares", "division by zero",
             "kv cache prefill decode", "monte carlo estimate pi", "dpo reference frozen beta margin",
             "lora rank adapter quantization int8", "out of memory oom killed", "no module named sklearn",
             "the loss converged after warmup and the accuracy improved over baseline"]
    nothing = ["xylophone", "quokka zebra narwhal", "zzzzzz"]
    special = ['"unbalanced quote', 'dpo*', '-loss', 'loss -nan', 'loss OR accuracy', 'NEAR(loss accuracy, 3)',
               'NEAR(', 'notes:loss', '^attention', '(((', 'a AND (b OR', 'NOT', '"" * - ^ :', 'loss AND NOT nan',
               "ZeroDivisionError: division by zero", "File \"/work/main.py\", line 12", "naïve café résumé",
               "损失 函数", "0.5", "x" * 300, "col:notes:code {notes code}: loss"]
    long30 = " ".join(rng.sample(TOPICS, 30))
    out = [("common", q) for q in common] + [("rare", q) for q in rare] + [("multi", q) for q in multi]
    out += [("identifier", q) for q in ids] + [("no match", q) for q in nothing]
    out += [("fts syntax / non-ascii", q) for q in special] + [("30 words", long30)]
    return out


def main() -> None:
    from ouroboros.config import Config
    from ouroboros.envs.experiment.cycle import ExperimentCycle
    from ouroboros.store.experiments import ExperimentStore

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", type=int, default=None, help="default 10000 (--quick: 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="2,000 experiments (about 15 s)")
    args = ap.parse_args()
    n = args.experiments or (2000 if args.quick else 10_000)
    rng = random.Random(args.seed)
    gen = Text(rng)
    with tempfile.TemporaryDirectory() as tmp:
        store = ExperimentStore(f"{tmp}/ouroboros.db")
        finish_ms: list[float] = []
        words = 0
        histories: list[list[dict]] = []
        started = time.monotonic()
        for i in range(n):
            eid = store.start("bench", i, "1-1", "FROM ouroboros-sandbox:base\n")
            notes = gen.prose(rng.randrange(40, 120))
            index = {"notes": notes, "code": gen.code(rng.randrange(15, 45)), "results": gen.results(rng.randrange(3, 10)),
                     "errors": gen.errors(rng.randrange(1, 4)) if rng.random() < 0.6 else ""}
            words += sum(len(v.split()) for v in index.values())
            t = time.perf_counter()
            store.finish(eid, rng.choice(["finalized", "finalized", "limit", "failed"]), "finalized",
                         {"notes": notes[:400], "actions": rng.randrange(1, 10)}, index)
            finish_ms.append((time.perf_counter() - t) * 1000)
            if i % (n // 20 or 1) == 0 and len(histories) < 20:
                histories.append([{"notes": gen.prose(rng.randrange(5, 25)), "data": gen.code(rng.randrange(5, 20))}
                                  for _ in range(rng.randrange(1, 4))])
        fill_s = time.monotonic() - started
        size = store.query("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")[0][0]
        k = max(1, n // 20)
        finish_first, finish_last = statistics.median(finish_ms[:k]), statistics.median(finish_ms[-k:])

        ids = []  # identifiers that exist, taken from stored code
        for (code,) in store.query("SELECT code FROM experiments_fts WHERE experiment_id IN (7, ?, ?)", (n // 3, n - 5)):
            ids += [w for w in code.replace("(", " ").replace(")", " ").split() if "_" in w and w[-1].isdigit()][:1]
        qs = queries(ids[:3], rng)

        failures = []
        for _kind, q in qs:  # warm-up pass, untimed
            try:
                store.search(q, 5)
            except Exception as exc:  # noqa: BLE001 - counted, not fatal
                failures.append({"query": q[:80], "error": f"{type(exc).__name__}: {exc}"})
        rows = []
        for kind, q in qs:
            samples, hits = [], 0
            for _ in range(args.repeats):
                t = time.perf_counter()
                try:
                    hits = len(store.search(q, 5))
                except Exception:  # noqa: BLE001
                    hits = -1
                samples.append((time.perf_counter() - t) * 1000)
            rows.append({"kind": kind, "query": q if len(q) <= 60 else q[:57] + "...",
                         "ms": round(statistics.median(samples), 2), "hits": hits})
        times = [r["ms"] for r in rows]

        cfg = Config()
        cfg.experiment.prev_experiments = 3
        cycle = ExperimentCycle(cfg, "bench", 0, "1-1", generate=None, sandboxes=None, store=store, repo=None)
        prev_ms = []
        for steps in histories:
            eid = rng.randrange(1, n + 1)
            cycle._prev_data(eid, steps)  # warm-up
            samples = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                cycle._prev_data(eid, steps)
                samples.append((time.perf_counter() - t) * 1000)
            prev_ms.append(statistics.median(samples))
        store.close()

    result = {
        "experiments": n, "words_per_experiment": round(words / n), "db_mb": round(size / 2**20, 1),
        "fill_s": round(fill_s, 1), "finish_ms_first_5pct": round(finish_first, 2),
        "finish_ms_last_5pct": round(finish_last, 2),
        "search": {"queries": len(times), "failures": failures, "median_ms": round(statistics.median(times), 2),
                   "p90_ms": round(pct(times, 0.9), 2), "max_ms": round(max(times), 2), "target_ms": 50,
                   "by_kind_median_ms": {k: round(statistics.median(r["ms"] for r in rows if r["kind"] == k), 2)
                                         for k in dict.fromkeys(r["kind"] for r in rows)}},
        "prev_data": {"lookups": len(prev_ms), "median_ms": round(statistics.median(prev_ms), 2),
                      "p90_ms": round(pct(prev_ms, 0.9), 2), "max_ms": round(max(prev_ms), 2)},
        "queries": rows,
    }
    s, p = result["search"], result["prev_data"]
    print(f"{n} experiments, about {result['words_per_experiment']} words each, {result['db_mb']} MB; fill {fill_s:.0f} s; "
          f"store.finish {finish_first:.1f} ms (first 5%) -> {finish_last:.1f} ms (last 5%)")
    print()
    print("| measurement | n | median | p90 | max | target |")
    print("|---|---|---|---|---|---|")
    print(f"| `store.search(q, 5)` | {s['queries']} | {s['median_ms']} ms | {s['p90_ms']} ms | {s['max_ms']} ms | < 50 ms |")
    print(f"| `ExperimentCycle._prev_data` | {p['lookups']} | {p['median_ms']} ms | {p['p90_ms']} ms | {p['max_ms']} ms | |")
    print()
    print("median ms by query kind: " + ", ".join(f"{k} {v}" for k, v in s["by_kind_median_ms"].items()))
    print("slowest: " + "; ".join(f"{r['query'][:40]!r} {r['ms']} ms ({r['hits']} hits)"
                                  for r in sorted(rows, key=lambda r: -r["ms"])[:5]))
    if failures:
        print(f"FAILURES: {failures}")
    print()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
