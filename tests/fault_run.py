"""A run whose actors are killed at random while it goes (tests/test_faults.py checks it, and
tests/test_resume.py compares a killed-and-resumed run with it)."""
import os
import random
import subprocess
import sys
import time

# A smaller smoke run: 2 learning rounds, the same every time (seeded sampling and training).
ARGS = ["--set", "env.heldout_tasks=4", "--set", "env.train_tasks_per_round=4", "--set", "generator.max_new_tokens=64",
        "--set", "run.seed=3"]

# What the kills aim at: every restarted role of the tasks environment (ouroboros/placement.py).
TARGETS = ("ray::Generator", "ray::SandboxRunner", "ray::TasksJudge", "ray::TasksAgent")


def _title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rpartition(b")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def actor_pids(tag: str, processes_tagged, targets: tuple[str, ...] = TARGETS) -> dict[str, list[int]]:
    """This run's live actor processes by class (Ray names a worker `ray::Class` or
    `ray::Class.method` while it runs a call). A child the actor forked keeps its title until it
    execs (a runner's sandbox launch, between fork and exec): it is not the actor, and killing it
    is a sandbox launch failing, not a lost actor, so only processes whose parent is not a Ray
    worker count."""
    found: dict[str, list[int]] = {t: [] for t in targets}
    for pid in processes_tagged(tag):
        title = _title(pid)
        for target in targets:
            if (title == target or title.startswith(target + ".")) and not _title(_parent(pid)).startswith("ray::"):
                found[target].append(pid)
    return found


def run_with_kills(out, processes_tagged, kills_wanted: int = 10, seed: int = 7) -> dict:
    """`ouroboros run` of the smaller smoke config, SIGKILLing a random generator, runner, judge
    or agent every 1 to 3 s once round 0 has started, `kills_wanted` times."""
    tag = f"faults-{os.getpid()}-{time.time_ns()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ouroboros", "run", "configs/smoke.yaml", "--out", str(out), *ARGS,
         "--set", "ray.max_restarts=20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, OUROBOROS_TEST_TAG=tag))
    rng = random.Random(seed)
    kills: list[str] = []
    stderr = ""
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None and not (out / "latest").exists():
            time.sleep(0.2)
        while len(kills) < kills_wanted and proc.poll() is None and time.monotonic() < deadline:
            live = [(name, pid) for name, pids in actor_pids(tag, processes_tagged).items() for pid in pids]
            if live:
                name, pid = rng.choice(live)
                try:
                    os.kill(pid, 9)
                    kills.append(name)
                except ProcessLookupError:
                    pass
            time.sleep(rng.uniform(1.0, 3.0))
        _, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    return {"out": out, "kills": kills, "returncode": proc.returncode, "stderr": stderr, "tag": tag}
