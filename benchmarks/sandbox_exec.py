"""Sandbox exec cost: bwrap overhead over bare Python, docker warm and fresh execs, and execs per
second with 2, 8 and 32 concurrent SandboxRunner actors on Ray, measured in one run.

    .venv/bin/python benchmarks/sandbox_exec.py [--quick] [--backends bwrap,docker] [--counts 2,8,32] [--execs 20]

1. bwrap overhead: `BwrapSandbox().exec(command=["python3", "-c", "pass"])` and `exec("pass")`
   (program form: main.py written to the workdir) against bare
   `subprocess.run(["/usr/bin/python3", "-c", "pass"], capture_output=True)`, interleaved
   (the order rotates each round), one sandbox for all its execs, after an untimed warm-up;
   and `exec("pass")` followed by `reset()`, a fresh workdir per exec as one-shot execs (the
   tasks environment's) get. "added" is the sandbox median minus the bare median (target: at
   most 15 ms). Throughput sessions below are warm-interpreter sessions (`sandbox.warm`).
2. docker: `DockerSandbox.exec(command=["python3", "-c", "pass"])` into one warm container
   (target: at most 100 ms); a fresh container per exec (exec then `reset()`, timed together and
   apart); and for comparison a bare `docker run --rm --network none <image> python3 -c pass`
   through the SDK (`containers.run(..., remove=True)`). Fresh and bare are interleaved.
3. Throughput: a local Ray (`num_cpus=2`, `resources={"sandbox": max(counts)}`), SandboxRunner
   actors made as in `loop.build_actors` (`num_cpus=0, resources={"sandbox": 1}`). Each runner
   opens a session and runs one untimed exec (for docker this starts its warm container); then
   every runner is sent `--execs` execs of `print(sum(range(10**5)))` at once (an actor runs them
   one after another) and the driver times issue to last result. The runners get `--settle`
   seconds of quiet after start-up first. A failed exec (timeout at the config's 5 s included)
   is counted, not retried. Runners are made once per
   backend at the largest count; smaller counts use the first N of them.

Prints a table, then one line of JSON with every figure. Everything it starts (sessions,
containers, workdirs, actors, Ray) is released before it exits, also on error.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

PASS_CMD = ["python3", "-c", "pass"]
BARE_CMD = ["/usr/bin/python3", "-c", "pass"]
THROUGHPUT_PROGRAM = "print(sum(range(10**5)))"
THROUGHPUT_EXPECT = str(sum(range(10**5)))


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def stats(samples: list[float]) -> dict:
    """Median, p10 and p90 in ms (nearest rank)."""
    xs = sorted(samples)

    def rank(q: float) -> float:
        return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]

    return {"n": len(xs), "median_ms": ms(statistics.median(xs)), "p10_ms": ms(rank(0.1)),
            "p90_ms": ms(rank(0.9))}


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def check(result, what: str, expect: str | None = None) -> None:
    if result.exit_code != 0 or (expect is not None and result.stdout.strip() != expect):
        raise RuntimeError(f"{what} failed: exit {result.exit_code}, stdout {result.stdout[:200]!r}, "
                           f"stderr {result.stderr[-500:]!r}")


# ----------------------------------------------------------------------------- 1. bwrap


def bench_bwrap(n: int, warmup: int) -> dict:
    from ouroboros.sandbox.bwrap import BwrapSandbox

    sandbox, fresh = BwrapSandbox(), BwrapSandbox()
    try:
        cases = {
            "bare": lambda: subprocess.run(BARE_CMD, capture_output=True, check=True),
            "bwrap_command": lambda: check(sandbox.exec(command=PASS_CMD), "bwrap exec(command)"),
            "bwrap_program": lambda: check(sandbox.exec("pass"), "bwrap exec(program)"),
            # What a one-shot exec costs (the tasks environment's): a fresh workdir each time.
            "bwrap_program_fresh_workdir": lambda: (check(fresh.exec("pass"), "bwrap exec(program)"), fresh.reset()),
        }
        names = list(cases)
        for _ in range(warmup):
            for name in names:
                cases[name]()
        samples: dict[str, list[float]] = {name: [] for name in names}
        for i in range(n):
            for name in names[i % len(names):] + names[:i % len(names)]:  # rotate who goes first
                samples[name].append(timed(cases[name]))
    finally:
        sandbox.cleanup()
        fresh.cleanup()
    out = {name: stats(xs) for name, xs in samples.items()}
    bare = out["bare"]["median_ms"]
    out["added_command_ms"] = round(out["bwrap_command"]["median_ms"] - bare, 2)
    out["added_program_ms"] = round(out["bwrap_program"]["median_ms"] - bare, 2)
    out["added_fresh_workdir_ms"] = round(out["bwrap_program_fresh_workdir"]["median_ms"] - bare, 2)
    out["target_added_ms"] = 15
    return out


# ----------------------------------------------------------------------------- 2. docker


def bench_docker(n_warm: int, n_fresh: int, warmup: int) -> dict:
    from ouroboros.sandbox.docker import DEFAULT_IMAGE, DockerSandbox

    out: dict = {}
    sandbox = DockerSandbox(run_id="bench-sandbox-exec")
    try:
        first = timed(lambda: check(sandbox.exec(command=PASS_CMD), "docker exec"))  # starts the container
        out["first_exec_ms"] = ms(first)
        for _ in range(warmup):
            check(sandbox.exec(command=PASS_CMD), "docker exec")
        warm = [timed(lambda: check(sandbox.exec(command=PASS_CMD), "docker exec")) for _ in range(n_warm)]
        out["warm_exec"] = stats(warm)
        out["target_warm_ms"] = 100
        sandbox.reset()

        client = sandbox.client
        bare_run = lambda: client.containers.run(DEFAULT_IMAGE, PASS_CMD, remove=True,  # noqa: E731
                                                 network_mode="none")
        bare_run()  # warm-up
        fresh_exec, fresh_reset, fresh_total, bare = [], [], [], []
        for i in range(n_fresh):
            order = ("fresh", "bare") if i % 2 == 0 else ("bare", "fresh")
            for kind in order:
                if kind == "bare":
                    bare.append(timed(bare_run))
                    continue
                e = timed(lambda: check(sandbox.exec(command=PASS_CMD), "docker fresh exec"))
                r = timed(sandbox.reset)
                fresh_exec.append(e)
                fresh_reset.append(r)
                fresh_total.append(e + r)
        out["fresh_exec_then_reset"] = stats(fresh_total)
        out["fresh_exec_only"] = stats(fresh_exec)
        out["fresh_reset_only"] = stats(fresh_reset)
        out["bare_docker_run_rm"] = stats(bare)
    finally:
        sandbox.cleanup()
    return out


# ----------------------------------------------------------------------------- 3. throughput


def bench_throughput(backends: list[str], counts: list[int], execs: int, settle_s: float) -> dict:
    import ray

    from ouroboros.actors.sandbox_runner import SandboxRunner
    from ouroboros.config import SandboxConfig

    most = max(counts)
    out: dict = {}
    ray.init(address="local", num_cpus=2, resources={"sandbox": most}, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        runner_cls = ray.remote(num_cpus=0, resources={"sandbox": 1})(SandboxRunner)
        for backend in backends:
            cfg = SandboxConfig(backend=backend, runners=most)
            res: dict = {}
            runners: list = []
            sessions: list[str] = []
            try:
                t = time.perf_counter()
                runners = [runner_cls.remote(cfg, "bench-sandbox-exec") for _ in range(most)]
                ray.get([r.owner.remote() for r in runners])
                res["start_runners_s"] = round(time.perf_counter() - t, 2)
                t = time.perf_counter()
                sessions = ray.get([r.open_session.remote() for r in runners])
                warm = ray.get([r.exec.remote(THROUGHPUT_PROGRAM, session=s) for r, s in zip(runners, sessions)])
                for result in warm:
                    check(result, f"{backend} warm-up exec", THROUGHPUT_EXPECT)
                res["open_sessions_and_first_exec_s"] = round(time.perf_counter() - t, 2)
                # Ray keeps starting and registering workers for a few seconds after the actors
                # answer; measured right away, 2 runners ran at about 2/3 of their settled rate.
                time.sleep(settle_s)
                for count in counts:
                    pairs = list(zip(runners[:count], sessions[:count]))
                    t = time.perf_counter()
                    refs = [r.exec.remote(THROUGHPUT_PROGRAM, session=s) for r, s in pairs for _ in range(execs)]
                    results = ray.get(refs)
                    wall = time.perf_counter() - t
                    failed = timed_out = 0
                    for result in results:
                        try:
                            check(result, f"{backend} exec", THROUGHPUT_EXPECT)
                        except RuntimeError as exc:
                            failed += 1
                            timed_out += bool(result.timed_out)
                            if failed == 1:
                                print(f"warning ({count} {backend} runners): {exc} (timed_out={result.timed_out}, "
                                      f"duration {result.duration_s:.2f} s)", file=sys.stderr)
                    res[str(count)] = {
                        "execs": len(results), "failed": failed, "timed_out": timed_out, "wall_s": round(wall, 3),
                        "execs_per_s": round(len(results) / wall, 1),
                        "exec_duration_median_ms": ms(statistics.median(x.duration_s for x in results)),
                    }
            finally:
                if runners:
                    try:
                        ray.get([r.close_session.remote(s) for r, s in zip(runners, sessions)], timeout=120)
                        ray.get([r.cleanup.remote() for r in runners], timeout=120)
                    finally:
                        for r in runners:
                            ray.kill(r)
            out[backend] = res
    finally:
        ray.shutdown()
    return out


# ----------------------------------------------------------------------------- report


def table(results: dict) -> str:
    lines = ["| measurement | n | median | p10 | p90 |", "|---|---|---|---|---|"]

    def row(label: str, s: dict) -> None:
        lines.append(f"| {label} | {s['n']} | {s['median_ms']:.1f} ms | {s['p10_ms']:.1f} ms | {s['p90_ms']:.1f} ms |")

    b = results.get("bwrap_overhead")
    if b:
        row("bare `python3 -c pass` (subprocess.run)", b["bare"])
        row(f"bwrap exec(command) (+{b['added_command_ms']:.1f} ms, target <= 15)", b["bwrap_command"])
        row(f"bwrap exec(\"pass\") (+{b['added_program_ms']:.1f} ms)", b["bwrap_program"])
        row(f"bwrap exec(\"pass\") + reset(): a fresh workdir per exec (+{b['added_fresh_workdir_ms']:.1f} ms)",
            b["bwrap_program_fresh_workdir"])
    d = results.get("docker")
    if d:
        row("docker warm exec(command) (target <= 100 ms)", d["warm_exec"])
        row("docker fresh: exec + reset()", d["fresh_exec_then_reset"])
        row("docker fresh: exec only (container start)", d["fresh_exec_only"])
        row("docker fresh: reset() only", d["fresh_reset_only"])
        row("bare `docker run --rm --network none` (SDK)", d["bare_docker_run_rm"])
    t = results.get("throughput")
    if t:
        counts = results["counts"]
        lines += ["", "| backend | " + " | ".join(f"{c} runners" for c in counts) + " | runners start | sessions + 1st exec |",
                  "|---|" + "---|" * (len(counts) + 2)]
        for backend, res in t.items():
            cells = [f"{res[str(c)]['execs_per_s']:.1f}/s ({res[str(c)]['exec_duration_median_ms']:.0f} ms"
                     + (f", {res[str(c)]['failed']} failed ({res[str(c)]['timed_out']} timed out)" if res[str(c)]['failed'] else "") + ")" for c in counts]
            lines.append(f"| {backend} | " + " | ".join(cells)
                         + f" | {res['start_runners_s']:.1f} s | {res['open_sessions_and_first_exec_s']:.1f} s |")
        lines.append(f"\nexecs/s (median exec duration_s in the sandbox); {results['execs_per_runner']} execs of "
                     f"`{THROUGHPUT_PROGRAM}` per runner")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples and counts 2,8 (about a minute)")
    ap.add_argument("--backends", default="bwrap,docker", help="comma-separated: bwrap, docker")
    ap.add_argument("--counts", default=None, help="concurrent runners (default 2,8,32; --quick 2,8)")
    ap.add_argument("--execs", type=int, default=None, help="execs per runner (default 20; --quick 5)")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds to wait after starting the runners")
    ap.add_argument("--skip-throughput", action="store_true", help="only sections 1 and 2 (no Ray)")
    args = ap.parse_args()

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"bwrap", "docker"}
    if unknown:
        ap.error(f"unknown backend(s) {sorted(unknown)}; expected bwrap, docker")
    counts = [int(c) for c in (args.counts or ("2,8" if args.quick else "2,8,32")).split(",")]
    execs = args.execs or (5 if args.quick else 20)
    n_bwrap, n_warm, n_fresh, warmup = (15, 10, 3, 2) if args.quick else (50, 30, 10, 5)

    started = time.perf_counter()
    results: dict = {"backends": backends, "quick": args.quick, "counts": counts, "execs_per_runner": execs}
    if "bwrap" in backends:
        results["bwrap_overhead"] = bench_bwrap(n_bwrap, warmup)
    if "docker" in backends:
        results["docker"] = bench_docker(n_warm, n_fresh, warmup)
    if not args.skip_throughput:
        results["throughput"] = bench_throughput(backends, counts, execs, args.settle)
    results["total_s"] = round(time.perf_counter() - started, 1)
    print(table(results))
    print(f"\ntotal {results['total_s']} s")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
