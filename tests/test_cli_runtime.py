"""The CLI as a user meets it: doctor, and Ctrl-C in the middle of a run."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import interruptible_popen, processes_tagged, require_bwrap


def test_doctor_reports_components_and_key_names_only(monkeypatch):
    env = dict(os.environ, OPENAI_API_KEY="sk-secret-value-123")
    env.pop("ANTHROPIC_API_KEY", None)
    proc = subprocess.run([sys.executable, "-m", "ouroboros", "doctor", "--json"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    for key in ("ray", "torch", "cuda", "vllm", "bwrap", "docker_engine", "api_keys_set"):
        assert key in facts
    assert facts["ray"] and facts["torch"]
    assert facts["api_keys_set"] == ["OPENAI_API_KEY"]
    assert "sk-secret" not in proc.stdout + proc.stderr


def tagged_env(tag: str) -> dict:
    """The environment of a run under test: Ray's GCS, raylet and workers inherit `tag`, so this
    test finds its own run's processes (and no other test's, when tests run side by side)."""
    return dict(os.environ, OUROBOROS_TEST_TAG=tag)


def wait_for_none_tagged(tag: str, seconds: float = 30) -> list[int]:
    deadline = time.monotonic() + seconds
    while processes_tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.5)
    return processes_tagged(tag)


def interrupt_and_check(proc, db_path, tag: str) -> None:
    """Ctrl-C a running experiment process: it exits 130, no experiment row is left `running`,
    the run is `interrupted`, and no sandboxed process or Ray process of the run (both carry
    `tag`) lives on."""
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    db = sqlite3.connect(db_path)
    statuses = [s for (s,) in db.execute("SELECT status FROM experiments")]
    assert statuses and "running" not in statuses, statuses
    assert db.execute("SELECT status FROM runs").fetchone()[0] == "interrupted"
    assert not wait_for_none_tagged(tag), "a sandboxed or Ray process outlived Ctrl-C"


@pytest.mark.slow
def test_ctrl_c_during_experiments_marks_rows_and_leaves_no_sandbox(tmp_path):
    require_bwrap()
    out = tmp_path / "run"
    tag = f"ctrlc-{os.getpid()}-{time.time_ns()}"  # marks this run's sandboxed and Ray processes
    sleeper = json.dumps({"action": "run", "data": "import time\nprint('working', flush=True)\ntime.sleep(20)",
                          "notes": "long"})
    proc = interruptible_popen(
        [sys.executable, "-m", "ouroboros", "experiment", "configs/smoke-experiment.yaml", "--forever",
         "--parallel", "2", "--out", str(out), "--set", f"generator.script=[{json.dumps(sleeper)}]",
         "--set", "sandbox.timeout_s=60", "--set", "generator.count=2",
         "--set", f"sandbox.env={{OUROBOROS_TAG: {tag}}}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=tagged_env(tag))
    db_path = out / "ouroboros.db"
    deadline = time.monotonic() + 120
    log = out / "latest" / "experiments.log"
    while time.monotonic() < deadline:  # wait until both cycles have started their first action
        if log.exists() and log.read_text().count("started") >= 2:
            break
        time.sleep(0.3)
    time.sleep(2.0)  # both are now inside their 20 s sandboxed exec
    interrupt_and_check(proc, db_path, tag)
    from ouroboros.sandbox import workdir

    leftovers = [d for d in os.listdir(workdir.ROOT) if os.listdir(os.path.join(workdir.ROOT, d))] \
        if os.path.isdir(workdir.ROOT) else []
    assert not [d for d in leftovers if not __import__("ouroboros.sandbox.reaper", fromlist=["x"]).is_alive(d)]



@pytest.mark.slow
def test_ctrl_c_in_a_run_on_the_experiment_environment_marks_rows_and_leaves_no_sandbox(tiny_model_path, tmp_path):
    require_bwrap()
    out = tmp_path / "run"
    tag = f"ctrlc-run-{os.getpid()}-{time.time_ns()}"
    sleeper = json.dumps({"action": "run", "data": "import time\nprint('working', flush=True)\ntime.sleep(30)",
                          "notes": "long"})
    proc = interruptible_popen(
        # --rounds 0: Ctrl-C comes during round 0's held-out cycles, so a learner would be built
        # (torch, PEFT, the model) and never used.
        [sys.executable, "-m", "ouroboros", "run", "configs/smoke-run-experiment.yaml", "--out", str(out),
         "--rounds", "0", "--set", "generator.backend=scripted", "--set", f"generator.script=[{json.dumps(sleeper)}]",
         "--set", "experiment.max_new_tokens=512", "--set", "sandbox.timeout_s=60",
         "--set", f"sandbox.env={{OUROBOROS_TAG: {tag}}}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=tagged_env(tag))
    log = out / "latest" / "experiments.log"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:  # both held-out cycles of round 0 started
        if log.exists() and log.read_text().count("started") >= 2:
            break
        time.sleep(0.3)
    time.sleep(2.0)
    interrupt_and_check(proc, out / "ouroboros.db", tag)
