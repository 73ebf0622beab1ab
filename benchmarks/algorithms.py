"""Algorithm choice: DPO, GRPO and REINFORCE on the tasks environment with SmolLM2, each for the
same wall-time budget, from the same config (configs/default.yaml) and seed.

    .venv/bin/python benchmarks/algorithms.py [--budget-s 1080] [--algorithms dpo,grpo,reinforce]
                                             [--out runs/bench-algorithms] [--config configs/default.yaml]

Each algorithm is one `ouroboros run` with `run.time_budget_s` (no round starts after the
budget; the one in progress finishes). Reported per round: held-out valid and pass rates and
mean reward, each with its sample count and 95% interval (Wilson for rates, normal for the
mean), train reward, and the share of rewards that hit the reward bound. Writes
benchmarks/results/algorithms.json and prints a Markdown table of the last round of each.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def run(algorithm: str, args) -> dict:
    out = Path(args.out) / algorithm
    cmd = [sys.executable, "-m", "ouroboros", "run", args.config, "--out", str(out), "--rounds", "100",
           "--set", f"learner.algorithm={algorithm}", "--set", f"run.time_budget_s={args.budget_s}",
           "--set", f"run.name=bench-{algorithm}"]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{algorithm}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    rows = json.loads((out / "latest" / "summary.json").read_text())["rounds"]
    keep = ("round", "weights_version", "heldout_samples", "heldout_valid_rate", "heldout_valid_ci95",
            "heldout_pass_rate", "heldout_pass_ci95", "heldout_reward_mean", "heldout_reward_ci95",
            "train_reward_mean", "train_samples", "reward_bound_hit_rate", "loss")
    return {"algorithm": algorithm, "wall_s": wall, "run": str((out / "latest").resolve()),
            "rounds": [{k: r.get(k) for k in keep} | {"seconds": r["seconds"].get("total")} for r in rows]}


def fmt_rate(rate, ci) -> str:
    return f"{rate:.0%} [{ci[0]:.0%}, {ci[1]:.0%}]" if ci else f"{rate:.0%}"


def fmt_mean(mean, ci) -> str:
    return f"{mean:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{mean:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-s", type=float, default=1080)
    ap.add_argument("--algorithms", default="dpo,grpo,reinforce")
    ap.add_argument("--out", default="runs/bench-algorithms")
    ap.add_argument("--config", default="configs/default.yaml")
    args = ap.parse_args()
    results = [run(a, args) for a in args.algorithms.split(",")]
    path = Path(__file__).parent / "results" / "algorithms.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"budget_s": args.budget_s, "config": args.config, "results": results}, indent=1) + "\n")
    print("| algorithm | rounds | held-out valid, round 0 → last | held-out pass, last | held-out reward, round 0 → last "
          "| bound hit rate (mean) | wall |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        first, last = r["rounds"][0], r["rounds"][-1]
        hits = [x["reward_bound_hit_rate"] for x in r["rounds"] if x.get("reward_bound_hit_rate") is not None]
        print(f"| {r['algorithm']} | {last['round']} | {fmt_rate(first['heldout_valid_rate'], first['heldout_valid_ci95'])} → "
              f"{fmt_rate(last['heldout_valid_rate'], last['heldout_valid_ci95'])} | "
              f"{fmt_rate(last['heldout_pass_rate'], last['heldout_pass_ci95'])} | "
              f"{fmt_mean(first['heldout_reward_mean'], first['heldout_reward_ci95'])} → "
              f"{fmt_mean(last['heldout_reward_mean'], last['heldout_reward_ci95'])} | "
              f"{sum(hits) / len(hits) if hits else 0:.1%} | {r['wall_s'] / 60:.1f} min |")


if __name__ == "__main__":
    main()
