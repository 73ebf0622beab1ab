"""A long run: experiment cycles on the docker backend for half an hour, with environment
builds in every cycle and an actor killed every few minutes. Does anything grow?

    .venv/bin/python benchmarks/long_run.py [--minutes 30] [--parallel 32] [--kill-every-s 180]
        [--interval-minutes 1] [--keep-images 3] [--sample-every-s 20] [--out DIR]

What runs: `ouroboros experiment configs/smoke-experiment.yaml --forever --parallel P
--interval-minutes I` with `sandbox.backend=docker` and a script that, in every cycle, builds
three environments (three Dockerfiles: `FROM ouroboros-sandbox:base` + one RUN step each) and
runs a program in each, then finalizes. With `sandbox.keep_images` below three, every cycle's
builds make the run prune older environments, and later cycles build them again.

Every `--kill-every-s` seconds one of the run's actor processes is SIGKILLed, at random among
the experiment agents (the driver replaces them), the sandbox runners and the generators (Ray
restarts them). `ray.max_restarts` is raised to cover every kill. After `--minutes`, the
driver gets Ctrl-C, as a user would stop a `--forever` schedule.

Sampled every `--sample-every-s` seconds, for the run alone (its processes carry a tag in their
environment; its containers and images carry its run id):
- processes, and their open file descriptors and resident memory (RSS, and PSS in all and by
  process kind: the driver, each actor class, janitors);
- containers (running or not) and built environments (images) of the run;
- sandbox workdirs (owner directories and the session workdirs in them);
- the sandbox disk: the workdir root, and the used space of the filesystem under the engine's
  data root (`/var/lib/docker`; `docker system df` takes minutes on a busy engine);
- the run's records (SQLite, git, logs), which grow with each experiment by design.

Growth is the mean of the last `--window` samples against the mean of the first `--window`
samples after the warm-up (the first kill, or 3 minutes). The targets: no growth in processes,
containers, descriptors or workdirs; images held to keep_images (plus those in use); memory and
sandbox disk growth under 10%. After the run, nothing of it may be left: no process, container,
image or workdir.

Writes benchmarks/results/long_run-<time>.json (every sample) and prints a summary table.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # fault_run: which processes are a run's actors

from ouroboros.sandbox import workdir  # noqa: E402

TARGETS = ("ray::ExperimentAgent", "ray::SandboxRunner", "ray::Generator")


def script(builds: int) -> list[str]:
    steps = []
    for k in range(builds):
        dockerfile = f"FROM ouroboros-sandbox:base\nRUN echo environment-{k} > /opt/environment\n"
        steps.append(json.dumps({"action": "environment", "data": dockerfile, "notes": f"environment {k}"}))
        steps.append(json.dumps({"action": "run", "data": "print(open('/opt/environment').read().strip())\n"
                                 "open('out.txt', 'a').write('x' * 4096)",
                                 "notes": f"use environment {k}"}))
    steps.append(json.dumps({"action": "finalize", "data": "every environment ran", "notes": "done"}))
    return steps


def tagged(tag: bytes) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                if tag in fh.read():
                    pids.append(int(name))
        except OSError:
            pass
    return pids


def kind_of(pid: int) -> str:
    """What a process is: an actor class, a Ray daemon, the driver, a janitor."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return "?"
    if not argv:
        return "?"
    if argv[0].startswith("ray::"):
        return argv[0].split(".")[0].split(" ")[0]
    name = os.path.basename(argv[0].split(" ")[0])
    if "-m" in argv[1:3]:
        return f"{name} -m {argv[argv.index('-m') + 1]}"
    return name if not name.startswith("python") else f"{name} {os.path.basename(argv[1]) if len(argv) > 1 else ''}"


def proc_memory(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS, anonymous PSS) in bytes. PSS is what the process's pages cost when shared pages
    are split; its anonymous part is the heap and other private allocations, the rest is files
    mapped (libraries, SQLite's shared memory), which grows as more of their pages are touched."""
    rss = pss = anon = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                elif line.startswith("Pss_Anon:"):
                    anon = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss, anon


def dir_bytes(path: str) -> int:
    total = 0
    for base, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_size
            except OSError:
                pass
    return total


def run_id_of(out: Path) -> str | None:
    db = out / "ouroboros.db"
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        row = conn.execute("SELECT id FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
        conn.close()
        return row[0] if row else None
    except sqlite3.Error:
        return None


def experiments(out: Path) -> dict:
    try:
        conn = sqlite3.connect(f"file:{out / 'ouroboros.db'}?mode=ro", uri=True, timeout=5)
        rows = dict(conn.execute("SELECT status, COUNT(*) FROM experiments GROUP BY status").fetchall())
        conn.close()
        return rows
    except sqlite3.Error:
        return {}


ENGINE_ROOT = "/var/lib/docker"


def sample(client, tag: bytes, run_id: str | None, out: Path) -> dict:
    pids = tagged(tag)
    fds = rss = pss = 0
    kinds: dict[str, int] = {}
    anon: dict[str, int] = {}
    for pid in pids:
        try:
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
        r, p, a = proc_memory(pid)  # one read of smaps_rollup per process and sample
        rss, pss = rss + r, pss + p
        kind = kind_of(pid)
        kinds[kind] = kinds.get(kind, 0) + p
        anon[kind] = anon.get(kind, 0) + a
    label = {"label": f"ouroboros.run={run_id}"} if run_id else None
    containers = len(client.containers.list(all=True, filters=label, ignore_removed=True)) if label else 0
    # The low-level list: the high-level one fetches each image again, racing the run's prunes.
    images = [i for i in client.api.images(filters=label)
              if any(t.startswith("ouroboros-env:") for t in i.get("RepoTags") or ())] if label else []
    owners = [d for d in os.listdir(workdir.ROOT)] if os.path.isdir(workdir.ROOT) else []
    sessions = sum(len(os.listdir(os.path.join(workdir.ROOT, d))) for d in owners
                   if os.path.isdir(os.path.join(workdir.ROOT, d)))
    meminfo = dict(line.split(":", 1) for line in open("/proc/meminfo"))
    used = (int(meminfo["MemTotal"].split()[0]) - int(meminfo["MemAvailable"].split()[0])) * 1024
    row = {"t": time.time(), "processes": len(pids), "fds": fds, "rss": rss, "pss": pss, "containers": containers,
           "images": len(images), "workdir_owners": len(owners), "workdirs": sessions,
           "workdir_bytes": dir_bytes(workdir.ROOT), "host_used": used,
           "records_bytes": dir_bytes(str(out)), "experiments": experiments(out)}
    # The engine's disk: what the filesystem under its data root holds (`docker system df`
    # takes minutes on a busy engine). Anything else writing there shows too: run nothing else.
    fs = os.statvfs(ENGINE_ROOT)
    row["engine_fs_used_bytes"] = (fs.f_blocks - fs.f_bfree) * fs.f_frsize
    row["pss_by_kind"] = kinds
    row["anon_pss_by_kind"] = anon
    return row


def kill_one(tag: bytes, rng: random.Random) -> str | None:
    """SIGKILL one live actor of TARGETS, chosen at random (the fault test's choice of processes:
    an actor, never a child it forked and has not exec'ed yet, which still carries its title)."""
    from fault_run import actor_pids

    found = [(pid, name) for name, pids in actor_pids(tag.decode(), lambda t: tagged(t.encode()), TARGETS).items()
             for pid in pids]
    if not found:
        return None
    pid, what = rng.choice(found)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    return what.split(".")[0].removeprefix("ray::")


def growth(samples: list[dict], key: str, window: int, start: int) -> dict:
    values = [s[key] for s in samples if key in s]
    if len(values) < start + 2 * window:
        window = max(1, (len(values) - start) // 2)
    first, last = values[start:start + window], values[-window:]
    a, b = statistics.fmean(first), statistics.fmean(last)
    return {"first": a, "last": b, "max": max(values[start:]), "growth": (b - a) / a if a else (0.0 if b == 0 else None)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--parallel", type=int, default=32)
    ap.add_argument("--interval-minutes", type=float, default=1.0)
    ap.add_argument("--kill-every-s", type=float, default=180.0)
    ap.add_argument("--keep-images", type=int, default=3)
    ap.add_argument("--builds", type=int, default=4, help="environments each cycle builds (more than keep-images)")
    ap.add_argument("--sample-every-s", type=float, default=20.0)
    ap.add_argument("--window", type=int, default=6, help="samples averaged at each end")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import docker
    import yaml

    client = docker.from_env(timeout=120)
    client.ping()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or f"/tmp/ouroboros-long-run-{stamp}")
    cfg = yaml.safe_load((ROOT / "configs/smoke-experiment.yaml").read_text())
    cfg["run"]["name"] = "long-run"
    cfg["generator"]["script"] = script(args.builds)
    cfg["sandbox"].update(backend="docker", keep_images=args.keep_images, runners=2, concurrency=16, spares=4,
                          timeout_s=30)
    cfg["experiment"].update(max_actions=2 * args.builds + 1, max_errors=3, time_limit_s=300)
    kills_planned = int(args.minutes * 60 // args.kill_every_s) + 1
    cfg["ray"] = {**cfg.get("ray", {}), "max_restarts": kills_planned + 5}
    out.mkdir(parents=True, exist_ok=True)
    config = out.parent / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    tag = f"OUROBOROS_LONG_RUN={out.name}-{os.getpid()}"
    env = dict(os.environ, OUROBOROS_LONG_RUN=tag.split("=", 1)[1])
    cmd = [sys.executable, "-m", "ouroboros", "experiment", str(config), "--forever", "--parallel",
           str(args.parallel), "--interval-minutes", str(args.interval_minutes), "--out", str(out)]
    log = open(out.parent / f"{out.name}.log", "w")
    print(f"run: {' '.join(cmd)}\nlog: {log.name}", flush=True)
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    rng = random.Random(args.seed)
    samples: list[dict] = []
    kills: list[dict] = []
    tag_b = tag.encode()
    run_id = None
    next_kill = started + args.kill_every_s
    next_sample = started
    end = started + args.minutes * 60
    samples_done = 0
    try:
        while time.time() < end and proc.poll() is None:
            now = time.time()
            run_id = run_id or run_id_of(out)
            if now >= next_sample:
                try:
                    samples.append(sample(client, tag_b, run_id, out))
                except Exception as exc:  # an engine or /proc hiccup costs one sample, not the run
                    print(f"sample failed: {type(exc).__name__}: {exc}", flush=True)
                    next_sample = now + args.sample_every_s
                    continue
                samples_done += 1
                s = samples[-1]
                print(f"{(now - started) / 60:5.1f} min  procs {s['processes']:3d}  fds {s['fds']:5d}  "
                      f"pss {s['pss'] / 2**20:7.0f} MiB  containers {s['containers']:3d}  images {s['images']:2d}  "
                      f"workdirs {s['workdirs']:3d}  experiments {s['experiments']}", flush=True)
                next_sample = now + args.sample_every_s
            if now >= next_kill:
                what = kill_one(tag_b, rng)
                kills.append({"t": now - started, "killed": what})
                print(f"{(now - started) / 60:5.1f} min  killed {what}", flush=True)
                next_kill = now + args.kill_every_s
            time.sleep(1.0)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    stopped = time.time()
    # What is left once the run is over: the janitors get a moment to finish.
    time.sleep(15)
    after = sample(client, tag_b, run_id, out)
    warm = next((i for i, s in enumerate(samples) if s["t"] - started >= min(args.kill_every_s, 180)), 0)
    keys = ["processes", "fds", "containers", "workdirs", "images", "rss", "pss", "host_used", "workdir_bytes",
            "engine_fs_used_bytes", "records_bytes"]
    window = args.window
    result = {
        "args": vars(args), "run_dir": str(out), "run_id": run_id, "minutes": (stopped - started) / 60,
        "ran_until_stopped": alive, "exit_code": rc, "kills": kills,
        "experiments": experiments(out),
        "growth": {k: growth(samples, k, window, warm) for k in keys},
        "pss_by_kind": {k: growth([{"v": s["pss_by_kind"].get(k, 0)} for s in samples], "v", window, warm)
                        for k in sorted({k for s in samples for k in s["pss_by_kind"]})},
        "anon_pss_by_kind": {k: growth([{"v": s["anon_pss_by_kind"].get(k, 0)} for s in samples], "v", window, warm)
                             for k in sorted({k for s in samples for k in s["anon_pss_by_kind"]})},
        "after": {k: after[k] for k in ("processes", "containers", "images", "workdir_owners", "workdirs")},
        "samples": samples,
    }
    rows = experiments(out)
    finished = sum(v for k, v in rows.items() if k != "running")
    print(f"\n{result['minutes']:.1f} min, exit code {rc}, {finished} experiments {rows}, "
          f"{len([k for k in kills if k['killed']])} kills: {', '.join(str(k['killed']) for k in kills)}")
    print(f"{'':24s} {'first':>12s} {'last':>12s} {'max':>12s} {'growth':>8s}")
    for k, g in result["growth"].items():
        scale = 2**20 if "bytes" in k or k in ("rss", "pss", "host_used") else 1
        unit = " MiB" if scale > 1 else ""
        grow = "-" if g["growth"] is None else f"{100 * g['growth']:+.1f}%"
        print(f"{k + unit:24s} {g['first'] / scale:12.1f} {g['last'] / scale:12.1f} {g['max'] / scale:12.1f} {grow:>8s}")
    for k, g in result["pss_by_kind"].items():
        grow = "-" if g["growth"] is None else f"{100 * g['growth']:+.1f}%"
        a = result["anon_pss_by_kind"].get(k)
        anon = "" if not a else f"  (anonymous {a['first'] / 2**20:.1f} -> {a['last'] / 2**20:.1f} MiB)"
        print(f"  pss {k[:30]:30s} {g['first'] / 2**20:9.1f} {g['last'] / 2**20:12.1f} MiB {grow:>8s}{anon}")
    print(f"left after the run: {result['after']}")
    dest = ROOT / "benchmarks" / "results" / f"long_run-{stamp}.json"
    dest.write_text(json.dumps(result, indent=1))
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
