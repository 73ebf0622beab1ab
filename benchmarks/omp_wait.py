"""OpenMP threads that spin or sleep: the tiny model's generation beside a busy neighbour.

    .venv/bin/python benchmarks/omp_wait.py [--calls 6] [--neighbours 1]

A run's generator shares the cores with its learner, judges, agents and sandboxes. torch's
OpenMP threads (libgomp) spin on their core for a while after each parallel region unless
OMP_WAIT_POLICY is PASSIVE, which `import ouroboros` sets (a user's own setting wins). This
measures a generator process (the tiny test model, 2 torch threads, batches of 8 sampled
64-token replies with short gaps between calls, as a generator serves them) while
`--neighbours` processes do torch matmuls on 2 threads each, as a learner would, under each
policy in turn, and once with nothing beside it. The policy is set for the generator and its
neighbours alike. Reports the generator's wall and CPU seconds (all its threads).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, os, resource, sys, time
import torch
torch.set_num_threads(2)
role, calls = sys.argv[1], int(sys.argv[2])
if role == "neighbour":
    a = torch.randn(256, 256)
    while True:
        for _ in range(50):
            a = torch.tanh(a @ a.T / 256)
        time.sleep(0.002)
from transformers import AutoModelForCausalLM, AutoTokenizer
from ouroboros.models import tiny
path = tiny.prepare(log=lambda *_: None)
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path).eval()
ids = tok(["Write a function that adds two numbers."] * 8, return_tensors="pt", padding=True)
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
torch.manual_seed(0)
with torch.no_grad():  # warm-up: the first call allocates
    model.generate(**ids, max_new_tokens=8, do_sample=True, pad_token_id=tok.eos_token_id)
c, t = cpu(), time.perf_counter()
with torch.no_grad():
    for _ in range(calls):
        model.generate(**ids, max_new_tokens=64, min_new_tokens=64, do_sample=True, pad_token_id=tok.eos_token_id)
        time.sleep(0.05)
print(json.dumps({"wall_s": time.perf_counter() - t, "cpu_s": cpu() - c}))
"""


def measure(policy: str | None, neighbours: int, calls: int) -> dict:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    # `python -c` imports torch before ouroboros: the policy is what the environment says.
    others = [subprocess.Popen([sys.executable, "-c", CHILD, "neighbour", "0"], env=env) for _ in range(neighbours)]
    try:
        time.sleep(2.0 if others else 0.0)
        out = subprocess.run([sys.executable, "-c", CHILD, "generator", str(calls)], env=env, capture_output=True,
                             text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        for p in others:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=6, help="generate calls of 8 x 64 tokens")
    ap.add_argument("--neighbours", type=int, default=1, help="busy torch processes beside the generator")
    args = ap.parse_args()
    rows = {
        "alone, spinning (libgomp's default)": measure(None, 0, args.calls),
        "alone, PASSIVE": measure("PASSIVE", 0, args.calls),
        f"{args.neighbours} busy neighbour(s), spinning (libgomp's default)": measure(None, args.neighbours, args.calls),
        f"{args.neighbours} busy neighbour(s), PASSIVE": measure("PASSIVE", args.neighbours, args.calls),
    }
    print(f"{'':52s} {'wall s':>8s} {'cpu s':>8s}")
    for name, r in rows.items():
        print(f"{name:52s} {r['wall_s']:8.2f} {r['cpu_s']:8.2f}")
    names = list(rows)
    print(f"busy: spinning / PASSIVE wall {rows[names[2]]['wall_s'] / rows[names[3]]['wall_s']:.2f}x, "
          f"alone: {rows[names[0]]['wall_s'] / rows[names[1]]['wall_s']:.2f}x")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"omp_wait-{stamp}.json")
    with open(dest, "w") as fh:
        json.dump({"args": vars(args), "rows": rows, "cpus": os.cpu_count()}, fh, indent=1)


if __name__ == "__main__":
    main()
