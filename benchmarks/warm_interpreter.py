"""Host CPU and wall time per bwrap exec: a warm interpreter (experiment sessions) against a fresh
bwrap and Python per exec (a cold sandbox), measured in one run.

    .venv/bin/python benchmarks/warm_interpreter.py [--execs 60] [--blocks 3] [--program pass]

A session's bwrap sandbox keeps one Python running (`ouroboros/sandbox/warm.py`) and forks each
program from it; a cold sandbox starts bwrap and Python for every exec. Each block runs
`--execs` execs of `--program` in one new sandbox of each kind, the kinds alternating (cold
first in even blocks, warm first in odd ones). CPU is the whole host's busy time over the
block (/proc/stat), so run it on a quiet host: the sandbox's start-up and teardown fall inside
the measured span, so the warm interpreter's are counted too, spread over the block's execs.
Wall time is the median exec.

Prints a table, then one line of JSON with every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def cpu_seconds() -> float:
    """Busy CPU time of the whole host (all processes, /proc/stat): the sandboxes' processes
    are not all our children (bwrap's init and the warm interpreter reap what they start), so
    only a host-wide count sees every one. Run it on a quiet host."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def block(warm: bool, execs: int, program: str) -> dict:
    from ouroboros.sandbox.bwrap import BwrapSandbox

    cpu0 = cpu_seconds()
    sandbox = BwrapSandbox(warm=warm)
    walls = []
    try:
        for _ in range(execs):
            t = time.perf_counter()
            result = sandbox.exec(program)
            walls.append(time.perf_counter() - t)
            if result.exit_code != 0:
                raise RuntimeError(f"exec failed: {result.stderr[-500:]!r} {result.error}")
    finally:
        sandbox.cleanup()
    cpu = cpu_seconds() - cpu0
    return {"cpu_ms_per_exec": round(1000 * cpu / execs, 2), "wall_median_ms": round(1000 * statistics.median(walls), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--execs", type=int, default=60, help="execs per block and kind")
    ap.add_argument("--blocks", type=int, default=3, help="alternating blocks of each kind")
    ap.add_argument("--program", default="pass", help="the Python program each exec runs")
    args = ap.parse_args()

    block(True, 3, args.program)  # untimed warm-up: the start-up probe and page cache
    block(False, 3, args.program)
    runs: dict[str, list[dict]] = {"cold": [], "warm": []}
    for i in range(args.blocks):
        for kind in (("cold", "warm") if i % 2 == 0 else ("warm", "cold")):
            runs[kind].append(block(kind == "warm", args.execs, args.program))
    out = {kind: {"cpu_ms_per_exec": statistics.median(b["cpu_ms_per_exec"] for b in blocks),
                  "wall_median_ms": statistics.median(b["wall_median_ms"] for b in blocks),
                  "blocks": blocks} for kind, blocks in runs.items()}
    ratio = out["cold"]["cpu_ms_per_exec"] / out["warm"]["cpu_ms_per_exec"]
    print("| sandbox | host CPU per exec | wall per exec (median) |\n|---|---|---|")
    for kind in ("cold", "warm"):
        print(f"| {kind} | {out[kind]['cpu_ms_per_exec']:.1f} ms | {out[kind]['wall_median_ms']:.1f} ms |")
    print(f"\ncold / warm host CPU: {ratio:.1f}x ({args.blocks} blocks of {args.execs} execs of {args.program!r})")
    print(json.dumps({"execs": args.execs, "blocks": args.blocks, "program": args.program, **out,
                      "cpu_ratio": round(ratio, 2)}))


if __name__ == "__main__":
    main()
