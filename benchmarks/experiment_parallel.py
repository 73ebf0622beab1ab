"""Parallel experiment cycles: throughput against perfect scaling, measured in one run.

    .venv/bin/python benchmarks/experiment_parallel.py [--parallel 1,8,32] [--runs 4] [--cycles-per-slot 2]

Each cycle is the `scripted` backend replaying `--runs` `run` actions whose program sleeps 0.5 s,
then `finalize`, through the real path: ExperimentDriver -> ExperimentAgent actors -> shared
Generator and SandboxRunner actors (bwrap) -> SQLite and git. For each parallelism P the driver
runs P * cycles-per-slot cycles with P slots and as many sandbox runners (a runner runs one
exec at a time).

Throughput is cycles / (last finish - first start), from the experiments table, so actor
start-up is excluded (end-to-end wall time, start-up included, is reported too).
Ideal for P slots is P / T1, where T1 is the mean cycle time at P = 1 measured in the same run
(so the ideal includes the per-cycle overhead one cycle pays alone); the efficiency against the
bare sleep time (runs * 0.5 s per cycle) is reported too. Target: >= 70% at P = 32 on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time


def config(parallel: int, runs: int):
    from ouroboros.config import Config

    cfg = Config()
    cfg.run.name = f"bench-p{parallel}"
    cfg.generator.backend = "scripted"
    cfg.generator.count = parallel  # scripted: one per slot, so each cycle replays the whole script
    cfg.generator.num_cpus = 0
    sleep = json.dumps({"action": "run", "data": "import time\ntime.sleep(0.5)\nprint('slept')", "notes": "sleep"})
    cfg.generator.script = [sleep] * runs + [json.dumps({"action": "finalize", "data": "done", "notes": "done"})]
    cfg.sandbox.backend = "bwrap"
    cfg.sandbox.runners = parallel
    cfg.sandbox.timeout_s = 30
    cfg.experiment.max_actions = runs + 1
    cfg.experiment.prev_experiments = 3
    return cfg


def measure(parallel: int, runs: int, cycles_per_slot: int) -> dict:
    from ouroboros.experiments import ExperimentDriver
    from ouroboros.store.experiments import ExperimentStore

    out = tempfile.mkdtemp(prefix=f"bench-exp-p{parallel}-")
    try:
        started = time.monotonic()
        driver = ExperimentDriver(config(parallel, runs), out)
        rows = driver.run(parallel * cycles_per_slot, parallel)
        wall = time.monotonic() - started
        store = ExperimentStore(f"{out}/ouroboros.db")
        times = store.query("SELECT started_at, finished_at, status, actions FROM experiments")
        store.close()
        first, last = min(t[0] for t in times), max(t[1] for t in times)
        durations = [t[1] - t[0] for t in times]
        return {"parallel": parallel, "cycles": len(rows), "finalized": sum(t[2] == "finalized" for t in times),
                "window_s": round(last - first, 2), "wall_s": round(wall, 2),
                "cycles_per_s": round(len(times) / (last - first), 3),
                "cycle_s_mean": round(statistics.mean(durations), 3), "cycle_s_max": round(max(durations), 3)}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parallel", default="1,8,32")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--cycles-per-slot", type=int, default=2)
    args = ap.parse_args()
    levels = [int(p) for p in args.parallel.split(",")]
    if levels[0] != 1:
        levels = [1] + levels
    results = [measure(p, args.runs, args.cycles_per_slot) for p in levels]
    t1 = results[0]["cycle_s_mean"]
    sleep_s = args.runs * 0.5
    print("| P | cycles | finalized | cycles/s | ideal P/T1 | efficiency | vs bare sleep | mean cycle | wall incl. start-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ideal = r["parallel"] / t1
        r["ideal_cycles_per_s"] = round(ideal, 3)
        r["efficiency"] = round(r["cycles_per_s"] / ideal, 3)
        r["efficiency_vs_sleep"] = round(r["cycles_per_s"] / (r["parallel"] / sleep_s), 3)
        print(f"| {r['parallel']} | {r['cycles']} | {r['finalized']} | {r['cycles_per_s']:.2f} | {ideal:.2f} | "
              f"{r['efficiency']:.0%} | {r['efficiency_vs_sleep']:.0%} | {r['cycle_s_mean']:.2f} s | {r['wall_s']:.1f} s |")
    print(json.dumps({"runs_per_cycle": args.runs, "t1_s": t1, "results": results}))


if __name__ == "__main__":
    main()
