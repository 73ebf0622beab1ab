"""The `search` action over 10,000 stored experiments (target: under 50 ms per query).

    .venv/bin/python benchmarks/experiment_search.py [--experiments 10000] [--queries 60]

Fills an ExperimentStore in a temporary directory with finished experiments whose notes, code,
results and errors are synthetic text of a few hundred words from a fixed vocabulary (fixed
seed), then times `ExperimentStore.search(query, 5)` (FTS5, BM25, snippets) for varied queries:
common and rare words, several words, and text full of FTS5 syntax characters.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time

VOCAB = ("gradient descent learning rate transformer attention layer norm dropout batch loss accuracy "
         "tokenizer embedding optimizer adam momentum curriculum reward policy value critic ppo dpo lora "
         "quantization pruning distillation benchmark dataset numpy scipy pandas matrix eigenvalue fourier "
         "convolution recurrent sampling temperature beam search heuristic graph shortest path dynamic "
         "programming sort hash cache memory thread process latency throughput error timeout traceback "
         "assertion overflow nan divergence converged improved regression baseline ablation").split()


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(VOCAB) if rng.random() < 0.8 else f"tok{rng.randrange(50_000)}" for _ in range(words))


def main() -> None:
    from ouroboros.store.experiments import ExperimentStore

    ap = argparse.ArgumentParser()
    ap.add_argument("--experiments", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=60)
    args = ap.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = ExperimentStore(f"{tmp}/ouroboros.db")
        started = time.monotonic()
        for _ in range(args.experiments):
            eid = store.start("bench", 0, "1-1", "")
            store.finish(eid, "finalized", "finalized", {"notes": text(rng, 40)},
                         {"notes": text(rng, 60), "code": text(rng, 150), "results": text(rng, 80),
                          "errors": text(rng, 30)})
        fill_s = time.monotonic() - started
        queries = [rng.choice(VOCAB) for _ in range(args.queries // 3)]
        queries += [" ".join(rng.sample(VOCAB, 4)) for _ in range(args.queries // 3)]
        queries += [f"tok{rng.randrange(50_000)}", '" OR * NEAR( -x AND', "loss NOT nan", "(((", "dpo*"] * 2
        store.search("warm up the page cache")
        times = []
        for query in queries:
            t = time.perf_counter()
            store.search(query, 5)
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        result = {"experiments": args.experiments, "queries": len(times), "fill_s": round(fill_s, 1),
                  "median_ms": round(statistics.median(times), 2), "p90_ms": round(times[int(0.9 * len(times))], 2),
                  "max_ms": round(times[-1], 2), "target_ms": 50}
        print(f"search over {args.experiments} experiments: median {result['median_ms']} ms, "
              f"p90 {result['p90_ms']} ms, max {result['max_ms']} ms (n={len(times)}; fill {fill_s:.0f} s)")
        print(json.dumps(result))


if __name__ == "__main__":
    main()
