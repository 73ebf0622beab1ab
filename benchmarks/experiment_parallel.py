"""Parallel experiment cycles: throughput against perfect scaling, and where the time goes.

    .venv/bin/python benchmarks/experiment_parallel.py [--quick] [--parallel 1,8,32] [--runs 4]
        [--sleep 0.5] [--cycles-per-slot 4] [--runners 2] [--runner-concurrency 16] [--spares 16]
        [--cycles-per-agent 8] [--generators 1] [--cold] [--prev-experiments 3] [--backend bwrap|process]
        [--no-cpu]

Each cycle is the `scripted` backend replaying `--runs` (K) `run` actions whose program is
`import time; time.sleep(0.5)`, then `finalize` (max_actions K + 1), through the real path:
ExperimentDriver -> ExperimentAgent actors -> shared Generator and SandboxRunner actors (bwrap)
-> SQLite and git. The Config is built in code like configs/smoke-experiment.yaml. For each
parallelism P (P = 1 always runs first) a fresh driver runs P * cycles-per-slot cycles with P
slots on ceil(P / cycles-per-agent) agents, one scripted generator (it replays the script to
each cycle from the start) and 2 sandbox runners running 16 execs each at once with 16 started
spare sandboxes each: the same pools at every P, as a user would configure them.

Measured from the experiments table, so actor start-up is excluded:
- window: first `started_at` to last `finished_at`; cycles/s = cycles / window;
- wall: construction of the driver to its return (Ray start, actor start-up and shutdown),
  and start-up = first `started_at` minus that start.

Ideal throughput, both from the same run:
- **P / T1** (the figure the target uses): T1 is the mean single-cycle time (started_at ->
  finished_at) at P = 1, so each of P fully concurrent cycles pays what one cycle pays alone;
- P / (K * sleep): the bare sleep-bound work, no overhead at all (stricter).
Target: at least 70% of P / T1 at P = 32 on 2 cores.

Where the time goes comes from the trace spans the cycle records (`traces`): per action the
prompt (render, including the `_prev_data` FTS lookups), generate (Ray call to the scripted
generator), act (Ray call to the runner: queueing, workdir write, bwrap, python start, the
sleep) and its `exec_s` (the sandboxed process alone), bookkeeping (add_step, the log file);
and per cycle `open` (experiment row to first action: opening the sandbox session, a started spare
when one is ready), `close` (last action to finished_at: closing the session, spans,
the FTS row).

git commits are off the critical path: a cycle queues its files with the agent's Committer,
whose thread commits what has queued in one `git fast-import` and writes the files right after
taking the repository lock, so their mtime tells how long after finished_at each experiment was
committed, and how long a batch held the lock when another was waiting.

CPU: a sampler reads /proc every second (and once more at the last result, before the driver
kills the actors) and reports host CPU busy in the window, by process kind: children such as
git count against the actor that started them once it reaps them; processes under the sandbox
uids count as sandbox programs while they exist (the inner bwrap outlives the outer one and is
reaped by pid 1, so its time, the program's included, mostly ends up "unattributed": host busy
time from /proc/stat minus everything attributed). "Not ours" is every other live process on
the host (another job there spoils the figures); our CPU-seconds per cycle are host busy minus
not ours, over the cycles, and "at most" is what all cores could give at that cost.

Variants, to see what the overheads cost: `--backend process` (no isolation), and the pool
sizes (`--runners`, `--runner-concurrency`, `--cycles-per-agent`, `--generators`).

Prints tables, then one line of JSON with every figure.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections import defaultdict

CLK = os.sysconf("SC_CLK_TCK")
SANDBOX_UIDS = range(0x70000000, 0x70000000 + (1 << 24))  # ouroboros.sandbox.runner.sandbox_ids
OTHERS = "rest of host"
UNATTRIBUTED = "unattributed (exited orphans: sandbox bwrap, program)"


def config(parallel: int, args, runners: int):
    from ouroboros.config import Config

    cfg = Config()
    cfg.run.name = f"bench-p{parallel}"
    cfg.generator.backend = "scripted"
    # scripted replays its script to each cycle (the request's session) from the start, so a
    # shared generator gives every cycle K runs and a finalize
    cfg.generator.count = args.generators
    cfg.generator.num_cpus = 0
    sleep = json.dumps({"action": "run", "data": f"import time\ntime.sleep({args.sleep})\nprint('slept')",
                        "notes": "sleep"})
    cfg.generator.script = [sleep] * args.runs + [json.dumps({"action": "finalize", "data": "done", "notes": "done"})]
    cfg.sandbox.backend = args.backend
    cfg.sandbox.unsafe = args.backend == "process"
    cfg.sandbox.runners = runners
    cfg.sandbox.concurrency = args.runner_concurrency
    cfg.sandbox.spares = args.spares
    cfg.sandbox.warm = not args.cold
    cfg.sandbox.timeout_s = 60
    cfg.experiment.cycles_per_agent = args.cycles_per_agent
    cfg.experiment.max_actions = args.runs + 1
    cfg.experiment.max_errors = args.runs + 1
    cfg.experiment.time_limit_s = 600
    cfg.experiment.prev_experiments = args.prev_experiments
    return cfg


# ----------------------------------------------------------------------------- CPU sampling


def _kind(cmdline: str, me: int, pid: int, uid: int) -> str:
    if pid == me:
        return "driver"
    if uid in SANDBOX_UIDS:
        return "sandbox programs"
    for name in ("ExperimentAgent", "SandboxRunner", "Generator"):
        if f"ray::{name}" in cmdline:
            return name
    if "raylet" in cmdline:
        return "raylet"
    if "gcs_server" in cmdline:
        return "gcs_server"
    if "ray::IDLE" in cmdline or "default_worker.py" in cmdline:
        return "ray idle workers"
    if "/ray/" in cmdline or "ray/_private" in cmdline or "ray::" in cmdline:
        return "other ray"
    return OTHERS


def _snapshot() -> dict:
    procs = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue
        # fields[0] is field 3 (state): utime..cstime are 11..14, ppid 1, starttime 19. For pid 1
        # only its own time: the orphans it reaps are counted as unattributed.
        used = sum(int(x) for x in fields[11:13 if pid == 1 else 15]) / CLK
        procs[pid] = [_kind(cmd, me, pid, uid), used, int(fields[19]), int(fields[1])]
    for info in procs.values():  # git and the like, still running: their actor's
        parent, hops = info[3], 0
        while info[0] == OTHERS and parent in procs and hops < 8:
            if procs[parent][0] != OTHERS:
                info[0] = procs[parent][0]
            parent, hops = procs[parent][3], hops + 1
    with open("/proc/stat") as fh:
        cpu = [int(x) for x in fh.readline().split()[1:]]
    idle = cpu[3] + cpu[4]
    return {"t": time.time(), "busy": (sum(cpu) - idle) / CLK, "total": sum(cpu) / CLK, "procs": procs}


class Sampler(threading.Thread):
    def __init__(self, period: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.period, self.snaps, self.stop = period, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.snaps.append(_snapshot())
            self.stop.wait(self.period)
        self.snaps.append(_snapshot())

    def between(self, t0: float, t1: float) -> dict | None:
        snaps = sorted(self.snaps, key=lambda s: s["t"])
        before = [s for s in snaps if s["t"] <= t0]
        after = [s for s in snaps if s["t"] >= t1]
        if not before or not after:
            return None
        a, b = before[-1], after[0]
        span = b["t"] - a["t"]
        cores = os.cpu_count() or 1
        last: dict[tuple, tuple] = {}  # (pid, start) -> (kind, cpu) as last seen up to b
        for snap in snaps:
            if a["t"] <= snap["t"] <= b["t"]:
                for pid, (kind, cpu, start, _) in snap["procs"].items():
                    last[(pid, start)] = (kind, cpu)
        by_kind: dict[str, float] = defaultdict(float)
        for (pid, start), (kind, cpu) in last.items():
            old = a["procs"].get(pid)
            base = old[1] if old and old[2] == start else 0.0  # new processes count from 0
            by_kind[kind] += max(0.0, cpu - base)
        busy = (b["busy"] - a["busy"]) * cores / (b["total"] - a["total"]) * span  # CPU-seconds, all cores
        by_kind[UNATTRIBUTED] = max(0.0, busy - sum(by_kind.values()))
        return {"span_s": round(span, 2), "cores": cores,
                "host_busy_pct": round(100 * (b["busy"] - a["busy"]) / (b["total"] - a["total"]), 1),
                "cpu_s_per_s_by_kind": {k: round(v / span, 3) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])}}


# ----------------------------------------------------------------------------- analysis


def breakdown(store, rows) -> dict:
    """Mean seconds per action and per cycle, from the trace spans and the experiments table."""
    spans = store.query("SELECT experiment_id, id, parent_id, kind, started_at, duration_s, attrs FROM traces")
    by_exp: dict[int, list] = defaultdict(list)
    for s in spans:
        by_exp[s[0]].append(s)
    per_action: dict[str, list[float]] = defaultdict(list)
    per_cycle: dict[str, list[float]] = defaultdict(list)
    info = {r[0]: r for r in rows}  # id, owner, started_at, finished_at, status, actions
    for eid, items in by_exp.items():
        actions = sorted((s for s in items if s[3] == "action"), key=lambda s: s[4])
        children: dict[str, list] = defaultdict(list)
        for s in items:
            children[s[2]].append(s)
        for a in actions:
            name = json.loads(a[6] or "{}").get("action") or "invalid"
            parts = {"prompt": 0.0, "generate": 0.0, "act": 0.0}
            for c in children[a[1]]:
                parts[c[3]] = parts.get(c[3], 0.0) + c[5]
                if c[3] == "act":
                    attrs = json.loads(c[6] or "{}")
                    if "exec_s" in attrs:
                        per_action["run: exec_s (sandboxed process)"].append(attrs["exec_s"])
                        per_action["run: act - exec_s (Ray call, queue, workdir, cgroup)"].append(c[5] - attrs["exec_s"])
            per_action["prompt (render + _prev_data)"].append(parts["prompt"])
            per_action["generate (Ray call)"].append(parts["generate"])
            per_action[f"{name}: act"].append(parts["act"])
            per_action["bookkeeping (add_step, log)"].append(a[5] - parts["prompt"] - parts["generate"] - parts["act"])
            per_action[f"{name}: action total"].append(a[5])
        if actions and eid in info:
            per_cycle["open (row -> first action: session open)"].append(actions[0][4] - info[eid][2])
            last = actions[-1]
            per_cycle["close (last action -> finished_at)"].append(info[eid][3] - (last[4] + last[5]))
    return {"per_action_mean_s": {k: round(statistics.mean(v), 4) for k, v in per_action.items() if v},
            "per_action_p90_s": {k: round(sorted(v)[int(0.9 * (len(v) - 1))], 4) for k, v in per_action.items() if v},
            "per_cycle_mean_s": {k: round(statistics.mean(v), 4) for k, v in per_cycle.items() if v}}


def git_lock(out: str, rows) -> dict:
    """The experiments/ commit lock: ExperimentRepo.commit_experiment writes the files right after
    it takes the lock, so a file's mtime is when that cycle got it. wait = that minus finished_at
    (the cycle's row is closed just before); a commit whose next one had to wait held the lock
    until that next one got it."""
    got = []
    for r in rows:
        try:
            got.append((os.stat(f"{out}/experiments/{r[0]:06d}/notes.md").st_mtime, r[3]))
        except OSError:
            continue
    if len(got) < 2:
        return {}
    got.sort()
    waits = [a - fin for a, fin in got]
    holds = [b[0] - a[0] for a, b in zip(got, got[1:]) if b[0] - b[1] > 0.02]
    span = got[-1][0] - got[0][0]
    hold = statistics.median(holds) if holds else None
    return {"commits": len(got), "wait_s_mean": round(statistics.mean(waits), 3), "wait_s_max": round(max(waits), 3),
            "hold_s_median_when_contended": None if hold is None else round(hold, 3),
            "contended_commits": len(holds),
            "lock_busy_estimate": None if hold is None or span <= 0 else round(min(1.0, hold * len(got) / span), 2)}


# ----------------------------------------------------------------------------- one level


def measure(parallel: int, args) -> dict:
    from ouroboros.experiments import ExperimentDriver
    from ouroboros.store.experiments import ExperimentStore

    runners = args.runners
    cycles = parallel * args.cycles_per_slot
    out = tempfile.mkdtemp(prefix=f"bench-exp-p{parallel}-")
    sampler = None if args.no_cpu else Sampler()
    try:
        if sampler:
            sampler.start()
        t0 = time.time()

        def on_result(row: dict) -> None:  # the last result: snapshot before the driver kills the actors
            if sampler and len(driver.results) >= cycles:
                sampler.snaps.append(_snapshot())

        cfg = config(parallel, args, runners)
        driver = ExperimentDriver(cfg, out, on_result=on_result)
        results = driver.run(cycles, parallel)
        wall = time.time() - t0
        if sampler:
            sampler.stop.set()
            sampler.join()
        store = ExperimentStore(f"{out}/ouroboros.db")
        rows = store.query("SELECT id, owner, started_at, finished_at, status, actions FROM experiments")
        first, last = min(r[2] for r in rows), max(r[3] for r in rows)
        durations = [r[3] - r[2] for r in rows]
        res = {
            "parallel": parallel, "runners": runners, "runner_concurrency": args.runner_concurrency,
            "generators": cfg.generator.count, "agents": math.ceil(parallel / args.cycles_per_agent), "cycles": len(rows),
            "finalized": sum(r[4] == "finalized" for r in rows), "actions": sum(r[5] for r in rows),
            "driver_results": len(results), "window_s": round(last - first, 2),
            "cycles_per_s": round(len(rows) / (last - first), 3),
            "cycle_s_mean": round(statistics.mean(durations), 3), "cycle_s_max": round(max(durations), 3),
            "startup_s": round(first - t0, 2), "wall_s": round(wall, 2),
            **breakdown(store, rows),
            "git_lock": git_lock(out, rows),
        }
        if sampler:
            cpu = sampler.between(first, last)
            res["cpu_in_window"] = cpu
            if cpu:
                ours = sum(v for k, v in cpu["cpu_s_per_s_by_kind"].items() if k != OTHERS) * cpu["span_s"]
                res["our_cores_busy"] = round(ours / cpu["span_s"], 2)
                res["our_cpu_s_per_cycle"] = round(ours / len(rows), 3)
                res["cpu_bound_max_cycles_per_s"] = round(cpu["cores"] * len(rows) / ours, 2)
        store.close()
        return res
    finally:
        if sampler and sampler.is_alive():
            sampler.stop.set()
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parallel", default=None, help="levels, comma-separated (default 1,8,32; --quick 1,8)")
    ap.add_argument("--runs", type=int, default=4, help="run actions per cycle (K)")
    ap.add_argument("--sleep", type=float, default=0.5, help="seconds each run action sleeps")
    ap.add_argument("--cycles-per-slot", type=int, default=4,
                    help="cycles each slot runs in turn (more: closer to steady state, fewer start-up waves)")
    ap.add_argument("--runners", type=int, default=2, help="sandbox.runners")
    ap.add_argument("--runner-concurrency", type=int, default=16, help="sandbox.concurrency: execs per runner at once")
    ap.add_argument("--spares", type=int, default=16, help="sandbox.spares: started sandboxes per runner")
    ap.add_argument("--cycles-per-agent", type=int, default=8, help="experiment.cycles_per_agent")
    ap.add_argument("--generators", type=int, default=1, help="scripted generators (each replays per cycle)")
    ap.add_argument("--prev-experiments", type=int, default=3, help="experiment.prev_experiments (0: no FTS lookups)")
    ap.add_argument("--backend", default="bwrap", choices=("bwrap", "process"),
                    help="process: no isolation (sandbox.unsafe), to see what bwrap costs")
    ap.add_argument("--cold", action="store_true", help="sandbox.warm: false (a fresh bwrap and Python per exec)")
    ap.add_argument("--no-cpu", action="store_true", help="do not sample /proc for CPU use")
    ap.add_argument("--quick", action="store_true", help="levels 1,8 only (about 1 min)")
    args = ap.parse_args()
    levels = [int(p) for p in (args.parallel or ("1,8" if args.quick else "1,8,32")).split(",")]
    if levels[0] != 1:
        levels = [1] + levels
    results = []
    for p in levels:
        print(f"P = {p} ...", flush=True)
        results.append(measure(p, args))
    t1 = results[0]["cycle_s_mean"]
    sleep_s = args.runs * args.sleep
    print()
    print(f"K = {args.runs} run actions x {args.sleep} s sleep + finalize; T1 = {t1:.3f} s (mean cycle at P = 1); "
          f"bare sleep {sleep_s:.2f} s; backend {args.backend}; prev_experiments {args.prev_experiments}; "
          f"generators {args.generators}; runners {args.runners} x concurrency {args.runner_concurrency}; "
          f"cycles per agent {args.cycles_per_agent}; spares {args.spares}; {'cold' if args.cold else 'warm'} execs")
    print("| P | runners | cycles (run actions) | finalized | cycles/s | ideal P/T1 | **eff. vs P/T1** | "
          "ideal P/sleep | eff. vs sleep | mean cycle | start-up | wall incl. start-up | host CPU busy | of it not ours |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        p = r["parallel"]
        r["ideal_p_over_t1"] = round(p / t1, 3)
        r["efficiency_vs_t1"] = round(r["cycles_per_s"] / (p / t1), 3)
        r["ideal_p_over_sleep"] = round(p / sleep_s, 3)
        r["efficiency_vs_sleep"] = round(r["cycles_per_s"] / (p / sleep_s), 3)
        cpu = r.get("cpu_in_window") or {}
        busy, other = cpu.get("host_busy_pct"), (cpu.get("cpu_s_per_s_by_kind") or {}).get(OTHERS)
        print(f"| {p} | {r['runners']} | {r['cycles']} ({r['actions'] - r['cycles']}) | {r['finalized']} | "
              f"{r['cycles_per_s']:.2f} | {p / t1:.2f} | **{r['efficiency_vs_t1']:.0%}** | {p / sleep_s:.2f} | "
              f"{r['efficiency_vs_sleep']:.0%} | {r['cycle_s_mean']:.2f} s | {r['startup_s']:.1f} s | {r['wall_s']:.1f} s | "
              f"{'-' if busy is None else f'{busy:.0f}%'} | {'-' if other is None else f'{other:.2f} cores'} |")
    print()
    keys = list(dict.fromkeys(k for r in results for k in r["per_action_mean_s"]))
    keys += list(dict.fromkeys(k for r in results for k in r["per_cycle_mean_s"]))
    print("| mean | " + " | ".join(f"P = {r['parallel']}" for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for k in keys:
        cells = [r["per_action_mean_s"].get(k, r["per_cycle_mean_s"].get(k)) for r in results]
        print(f"| {k} | " + " | ".join("-" if c is None else f"{c * 1000:.0f} ms" for c in cells) + " |")
    print()
    print("git commits (background Committer, not part of the cycle): " + "; ".join(
        f"P = {r['parallel']}: committed {r['git_lock'].get('wait_s_mean', 0) * 1000:.0f} ms after the cycle ended "
        f"(max {r['git_lock'].get('wait_s_max', 0) * 1000:.0f} ms), held "
        f"{(r['git_lock'].get('hold_s_median_when_contended') or 0) * 1000:.0f} ms per commit when contended, "
        f"busy ~{(r['git_lock'].get('lock_busy_estimate') or 0):.0%}" for r in results if r.get("git_lock")))
    if results[-1].get("cpu_in_window"):
        print()
        print("CPU-seconds per second in the window, by process kind; our CPU-seconds per cycle, and the")
        print("cycles/s all cores could give at that cost:")
        for r in results:
            cpu = r.get("cpu_in_window") or {}
            kinds = ", ".join(f"{k} {v:.2f}" for k, v in (cpu.get("cpu_s_per_s_by_kind") or {}).items() if v >= 0.01)
            print(f"  P = {r['parallel']}: {kinds}; {r.get('our_cpu_s_per_cycle', 0):.2f} CPU-s per cycle, "
                  f"at most {r.get('cpu_bound_max_cycles_per_s', 0):.1f} cycles/s on {cpu.get('cores')} cores")
    print()
    print(json.dumps({"runs_per_cycle": args.runs, "sleep_s": args.sleep, "backend": args.backend,
                      "prev_experiments": args.prev_experiments, "runners": args.runners,
                      "cycles_per_agent": args.cycles_per_agent, "generators": args.generators, "runner_concurrency": args.runner_concurrency,
                      "spares": args.spares, "warm": not args.cold, "cycles_per_slot": args.cycles_per_slot, "t1_s": t1, "target_efficiency_vs_t1": 0.7,
                      "results": results}))


if __name__ == "__main__":
    main()
