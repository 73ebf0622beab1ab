"""Ray's task events: what they cost the GCS's memory and each call, by `ray.task_events_kept`.

    .venv/bin/python benchmarks/gcs_task_events.py [--calls 30000]

For each setting, a local Ray as a run starts it (no dashboard; the system config that
`ouroboros.loop.task_events` gives), one threaded actor, `--calls` calls to it in batches of
500; then the GCS server's memory (PSS) against before the calls, and the calls a second.
Settings: Ray's default (100,000 records kept), 10,000 and 1,000 kept, and none reported (0,
the default for a Ray a run starts). Writes benchmarks/results/gcs_task_events-<time>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import ray
from ouroboros.loop import task_events
kept, calls = sys.argv[1], int(sys.argv[2])
system = {} if kept == "ray-default" else task_events(int(kept))
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
         _system_config=system)
gcs = ray._private.worker._global_node.all_processes["gcs_server"][0].process.pid

def pss():
    with open(f"/proc/{gcs}/smaps_rollup") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("Pss:"))

@ray.remote(max_concurrency=8)
class Echo:
    def call(self, x):
        return x

echo = Echo.remote()
ray.get(echo.call.remote(0))
time.sleep(2)
before, started = pss(), time.perf_counter()
for _ in range(0, calls, 500):
    ray.get([echo.call.remote(j) for j in range(500)])
rate = calls / (time.perf_counter() - started)
time.sleep(3)  # the last reports reach the GCS
print(json.dumps({"gcs_pss_before": before, "gcs_pss_after": pss(), "calls_per_s": rate}))
ray.shutdown()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=30000)
    args = ap.parse_args()
    rows = {}
    for kept in ("ray-default", "10000", "1000", "0"):
        out = subprocess.run([sys.executable, "-c", CHILD, kept, str(args.calls)], cwd=ROOT, capture_output=True,
                             text=True, timeout=900, env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
        if out.returncode != 0:
            sys.exit(f"{kept}: {out.stderr[-2000:]}")
        rows[kept] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{'task events kept':18s} {'GCS MiB before':>15s} {'after':>8s} {'growth':>8s} {'calls/s':>9s}")
    for kept, r in rows.items():
        b, a = r["gcs_pss_before"] / 2**20, r["gcs_pss_after"] / 2**20
        print(f"{kept:18s} {b:15.1f} {a:8.1f} {a - b:+8.1f} {r['calls_per_s']:9.0f}")
    dest = ROOT / "benchmarks" / "results" / f"gcs_task_events-{time.strftime('%Y%m%d-%H%M%S')}.json"
    dest.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
