"""Exact resume: a run killed four ways and resumed each time ends where a run that never stopped
ends, bit for bit; and `--resume` refuses what it cannot resume."""
import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import processes_tagged

try:
    from tests.fault_run import ARGS
except ImportError:  # pragma: no cover
    from fault_run import ARGS

def ouroboros(*args, kill_at=None, tag="", timeout=400):
    env = dict(os.environ, OUROBOROS_TEST_TAG=tag)
    env.pop("OUROBOROS_KILL_AT", None)
    if kill_at:
        env["OUROBOROS_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "ouroboros", "run", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def final_adapter(run_dir) -> tuple[int, bytes]:
    run = (run_dir / "latest").resolve()
    versions = sorted(d.name for d in (run / "checkpoints").iterdir())
    return int(versions[-1][1:]), (run / "checkpoints" / versions[-1] / "adapter_model.safetensors").read_bytes()


def table(run_dir, sql):
    db = sqlite3.connect(run_dir / "ouroboros.db")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


@pytest.mark.slow
def test_a_run_killed_four_times_resumes_to_the_same_final_weights(killed_actors_run, tmp_path):
    """SIGKILL of the driver between rounds, mid-rollout, mid-learn and mid-broadcast; resumed
    after each, the run ends with the same weights, bit for bit, and the same rows as a run that
    never stopped (the fault test's: its actor kills change nothing). (Ctrl-C of a run:
    tests/test_cli_runtime.py; a dead learner: test_a_dead_learner_... below.)"""
    whole = killed_actors_run["out"]
    assert killed_actors_run["returncode"] == 0, killed_actors_run["stderr"][-3000:]
    tag = f"resume-{os.getpid()}-{time.time_ns()}"
    cut = tmp_path / "cut"

    # Killed between rounds 1 and 2 (rounds 0 and 1 stored), then mid-rollout and mid-learn of
    # round 2, then mid-broadcast (round 2's checkpoint written, the generators not all loaded).
    first = ouroboros("configs/smoke.yaml", "--out", str(cut), *ARGS, kill_at="1:between", tag=tag)
    assert first.returncode == -9, first.stderr[-3000:]
    assert table(cut, "SELECT status FROM runs") == [("running",)]  # as a SIGKILLed driver leaves it
    assert table(cut, "SELECT round, status FROM rounds ORDER BY round") == [(0, "done"), (1, "done")]
    for point in ("2:rollout", "2:learn", "2:broadcast"):
        resumed = ouroboros("--resume", str(cut), kill_at=point, tag=tag)
        assert resumed.returncode == -9, (point, resumed.stderr[-3000:])
    last = ouroboros("--resume", str(cut), tag=tag)
    assert last.returncode == 0, last.stderr[-3000:]
    assert "resuming run" in last.stderr

    # The same weights, bit for bit, and the same versions.
    v_whole, a_whole = final_adapter(whole)
    v_cut, a_cut = final_adapter(cut)
    assert v_whole == v_cut >= 1 and a_whole == a_cut
    # One run id throughout, every round once, each done, with the same samples and rewards.
    assert table(cut, "SELECT COUNT(*), MIN(status) FROM runs") == [(1, "done")]
    assert table(cut, "SELECT round, status FROM rounds ORDER BY round") == [(0, "done"), (1, "done"), (2, "done")]
    episodes = "SELECT round, phase, trajectory_id, text, weights_version FROM completions ORDER BY round, phase, trajectory_id"
    assert table(cut, episodes) == table(whole, episodes)
    rewards = "SELECT trajectory_id, total FROM scores ORDER BY trajectory_id"
    assert table(cut, rewards) == table(whole, rewards)
    assert table(cut, "SELECT id FROM pairs ORDER BY id") == table(whole, "SELECT id FROM pairs ORDER BY id")
    assert table(cut, "SELECT version, checksum FROM weights ORDER BY version") \
        == table(whole, "SELECT version, checksum FROM weights ORDER BY version")
    summary = json.loads(((cut / "latest").resolve() / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert not _wait_gone(tag), "a Ray process or sandbox outlived a killed driver"


def _wait_gone(tag: str, seconds: float = 30) -> list:
    deadline = time.monotonic() + seconds
    while processes_tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.5)
    return processes_tagged(tag)


def test_resume_refuses_what_is_not_a_run_and_a_changed_config(tmp_path):
    bad = ouroboros("--resume", str(tmp_path))
    assert bad.returncode == 2 and "is not a run" in bad.stderr, bad.stderr
    # A run directory as a killed run leaves it: its DB, its saved config, round 0 done.
    from ouroboros.config import load_config
    from ouroboros.store.db import RunDB
    from ouroboros.store.layout import RunPaths

    cfg = load_config("configs/smoke.yaml").model_dump(by_alias=True)
    paths = RunPaths(tmp_path, "smoke-1").make()
    db = RunDB(paths.db)
    db.start_run("smoke-1", "smoke", cfg)
    db.upsert("rounds", [{"run_id": "smoke-1", "round": 0, "weights_version": 0, "status": "done",
                          "metrics": {"round": 0, "weights_version": 0}, "started_at": 0.0, "finished_at": 1.0}])
    db.close()
    changed = ouroboros("--resume", str(tmp_path), "--set", "learner.beta=0.5")
    assert changed.returncode == 2, changed.stderr
    assert "learner.beta" in changed.stderr and "saved" in changed.stderr, changed.stderr
    other = ouroboros("configs/default.yaml", "--resume", str(tmp_path))
    assert other.returncode == 2 and "generator.backend: 'hf' saved, 'vllm' given" in other.stderr, other.stderr
    both = ouroboros("--resume", str(tmp_path), "--out", str(tmp_path / "x"))
    assert both.returncode == 2 and "--out" in both.stderr


def test_a_dead_learner_is_one_line_that_says_how_to_resume(tmp_path):
    """The learner is not restarted (its optimizer state is what resume restores): a run it fails
    ends with one line naming what died, what was kept and the command that carries it on."""
    from ray.exceptions import ActorDiedError

    from ouroboros.cli import actor_failure

    line = actor_failure(ActorDiedError())
    assert line.startswith("an actor died") and "ray/session_latest/logs" in line
    proc = subprocess.run([sys.executable, "-c", (
        "import sys; from ray.exceptions import ActorDiedError; import ouroboros.loop as loop\n"
        "def die(self, *a, **k): raise ActorDiedError()\n"
        "loop.Loop.run = die\n"
        "sys.argv = ['ouroboros', 'run', 'configs/smoke.yaml', '--out', sys.argv[1]]\n"
        "from ouroboros.cli import main; main()"), str(tmp_path)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: an actor died") and "finished round(s) kept in" in last
    assert f"ouroboros run --resume {tmp_path}/runs/smoke-" in last and "Traceback" not in proc.stderr
