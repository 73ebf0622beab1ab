"""Faults survived: actors killed at random during a run, nothing lost or duplicated."""
import json
import os
import random
import sqlite3
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from conftest import interruptible_popen, processes_tagged, require_bwrap

# What the kills aim at: every restarted role of the tasks environment (ouroboros/placement.py).
TARGETS = ("ray::Generator", "ray::SandboxRunner", "ray::TasksJudge", "ray::TasksAgent")


def actor_pids(tag: str) -> dict[str, list[int]]:
    """This run's live actor processes by class (Ray names a worker `ray::Class` or
    `ray::Class.method` while it runs a call)."""
    found: dict[str, list[int]] = {t: [] for t in TARGETS}
    for pid in processes_tagged(tag):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                title = fh.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        for target in TARGETS:
            if title == target or title.startswith(target + "."):
                found[target].append(pid)
    return found


@pytest.mark.slow
def test_ten_random_kills_lose_and_duplicate_nothing(tiny_model_path, tmp_path):
    require_bwrap()
    out = tmp_path / "run"
    tag = f"faults-{os.getpid()}-{time.time_ns()}"
    rounds = 2
    proc = interruptible_popen(
        [sys.executable, "-m", "ouroboros", "run", "configs/smoke.yaml", "--rounds", str(rounds), "--out", str(out),
         "--set", "ray.max_restarts=20", "--set", "env.heldout_tasks=4", "--set", "env.train_tasks_per_round=4",
         "--set", "generator.max_new_tokens=64"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, OUROBOROS_TEST_TAG=tag))
    rng = random.Random(7)
    kills: list[str] = []
    try:
        deadline = time.monotonic() + 400
        # The first kill once round 0 runs (every actor is up); then one every 1 to 3 s, each at a
        # random one of the live generators, runners, judges and agents.
        while time.monotonic() < deadline and proc.poll() is None and not (out / "latest").exists():
            time.sleep(0.2)
        while len(kills) < 10 and proc.poll() is None and time.monotonic() < deadline:
            live = [(name, pid) for name, pids in actor_pids(tag).items() for pid in pids]
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
    assert len(kills) == 10, f"the run ended after {len(kills)} kills ({kills}): {stderr[-2000:]}"
    assert proc.returncode == 0, stderr[-3000:]
    assert len(set(kills)) >= 3, kills  # the kills reached most kinds of actor

    run = (out / "latest").resolve()
    rows = json.loads((run / "summary.json").read_text())["rounds"]
    assert [r["round"] for r in rows] == list(range(rounds + 1))
    db = sqlite3.connect(out / "ouroboros.db")
    run_id = db.execute("SELECT id FROM runs").fetchone()[0]
    assert db.execute("SELECT status FROM runs").fetchone()[0] == "done"
    per_round = {(r, p): n for r, p, n in db.execute(
        "SELECT round, phase, COUNT(*) FROM completions WHERE run_id=? GROUP BY round, phase", (run_id,))}
    for row in rows:
        r = row["round"]
        # Every expected episode is there, once: 4 held-out tasks x 1 sample; 4 train tasks x 4.
        assert per_round[(r, "eval")] == row["heldout_samples"] == 4
        if r:
            assert per_round[(r, "train")] == row["train_samples"] == 16
            assert db.execute("SELECT COUNT(*) FROM pairs WHERE run_id=? AND round=?",
                              (run_id, r)).fetchone()[0] == row["pairs"]
            # Every train sample was made by the one version live then: a restarted generator
            # came back on the live version, not on the base model.
            assert len(row["train_weights_versions"]) == 1, row["train_weights_versions"]
        assert len(row["eval_weights_versions"]) == 1 and row["eval_weights_versions"][0] == row["weights_version"], row
    assert db.execute("SELECT COUNT(*) FROM scores WHERE run_id=?", (run_id,)).fetchone()[0] \
        == db.execute("SELECT COUNT(*) FROM completions WHERE run_id=?", (run_id,)).fetchone()[0]
    # The shards agree with the DB: each episode once.
    for shard in run.glob("shards/round-*/*-completions.parquet"):
        ids = pq.read_table(shard, columns=["trajectory_id"]).column("trajectory_id").to_pylist()
        assert len(ids) == len(set(ids)), shard
        r = int(shard.parent.name.split("-")[1])
        phase = shard.name.split("-")[0]
        assert len(ids) == per_round[(r, phase)], shard


def test_a_restarted_actor_gets_its_large_constructor_arguments_again():
    """Ray frees a constructor argument it put in the object store itself once the first
    construction read it, and a restart then fails (ray-project/ray#53727): an alignment judge's
    task set is that big. placement.actor keeps such arguments for the run."""
    import ray

    from ouroboros import placement

    class Holder:  # defined here, so Ray ships it by value to a worker that cannot import tests/
        def __init__(self, tasks: list) -> None:
            self.tasks = tasks

        def pid_and_size(self) -> tuple[int, int]:
            return os.getpid(), len(self.tasks)

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        big = [{"prompt": "x" * 1000, "i": i} for i in range(300)]  # ~300 KB: past Ray's inline limit
        holder = placement.actor(Holder, "judge", num_cpus=0).remote(big)
        pid, n = ray.get(holder.pid_and_size.remote())
        assert n == 300
        time.sleep(1.0)  # let Ray release what the first construction read
        os.kill(pid, 9)
        again, n = ray.get(holder.pid_and_size.remote(), timeout=120)
        assert again != pid and n == 300
    finally:
        placement.release_pinned()
        ray.shutdown()
