"""Concurrent single-reply calls on a local model: coalesced into batches vs one at a time.

This is the experiment environment's load on a generator: K cycles, each asking for one reply
per turn. "serial" is what a single-threaded Generator actor did before (each call alone on
the model); "coalesced" is the threaded Generator (backends/coalesce.py). Both run in this
process on the same model and prompts, greedy, so the difference is the batching alone.

    .venv/bin/python benchmarks/generator_coalesce.py                 # SmolLM2-135M, 8 cycles x 2 turns
    .venv/bin/python benchmarks/generator_coalesce.py --model tiny-smollm2 --cycles 16 --json
"""
from __future__ import annotations

import argparse
import json
import threading
import time

from ouroboros.actors.generator import Generator
from ouroboros.config import Config
from ouroboros.envs.experiment.goals import load_goals
from ouroboros.envs.experiment.prompt import DEFAULT_TEMPLATE, render
from ouroboros.types import Request


def prompts(n: int) -> list[list[dict]]:
    goals = load_goals()
    out = []
    for i in range(n):
        values = {"experiment_id": i + 1, "current_action": 1, "max_actions": 5, "time_remaining": 300.0,
                  "network_access": "Disabled", "gpu_access": "Disabled", "prev_data": "(no earlier experiments)",
                  "current_dockerfile": "FROM ouroboros-sandbox:base", "access_info": "[]", "action_history": "",
                  "goal": goals[i % len(goals)].goal}
        text, _ = render(DEFAULT_TEMPLATE, values, [], 500, 6000)
        out.append([{"role": "user", "content": text}])
    return out


def run(gen: Generator, cycles: int, turns: int, tokens: int, serial: bool) -> float:
    messages = prompts(cycles)
    lock = threading.Lock()
    barrier = threading.Barrier(cycles)

    def cycle(n: int) -> None:
        barrier.wait()
        for t in range(turns):
            req = [Request(id=f"c{n}-t{t}", messages=messages[n], max_new_tokens=tokens, temperature=0.0)]
            if serial:
                with lock:  # one call at a time on the model, as a single-threaded actor runs them
                    gen.backend.generate(req)
            else:
                gen.generate(req)

    threads = [threading.Thread(target=cycle, args=(n,)) for n in range(cycles)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--cycles", type=int, default=8)
    ap.add_argument("--turns", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cfg = Config()
    cfg.policy.model = args.model
    gen = Generator(cfg)
    gen.backend.generate([Request(id="warm", messages=prompts(1)[0], max_new_tokens=4, temperature=0.0)])
    serial = run(gen, args.cycles, args.turns, args.tokens, serial=True)
    coalesced = run(gen, args.cycles, args.turns, args.tokens, serial=False)
    stats = gen.batching()
    n = args.cycles * args.turns
    row = {"model": args.model, "cycles": args.cycles, "turns": args.turns, "max_new_tokens": args.tokens,
           "requests": n, "serial_s": round(serial, 2), "coalesced_s": round(coalesced, 2),
           "speedup": round(serial / coalesced, 2), "batches": stats["batches"],
           "mean_batch": round(stats["requests"] / max(1, stats["batches"]), 2)}
    if args.json:
        print(json.dumps(row))
    else:
        print(f"{n} single-reply calls from {args.cycles} concurrent cycles on {args.model}:")
        print(f"  one at a time: {serial:.2f} s   coalesced: {coalesced:.2f} s ({stats['batches']} batches, "
              f"mean {row['mean_batch']})   speedup {row['speedup']}x")


if __name__ == "__main__":
    main()
