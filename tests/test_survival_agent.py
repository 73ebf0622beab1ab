"""The survival agent, judge, rewards and pairs, wired without Ray over real sandboxes, with the
scripted backend replaying each episode's replies; and the whole loop through Ray and the CLI."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from ouroboros.config import validate
from ouroboros.types import Task
from test_survival_episode import require_tracer


def _episodes(script, max_steps=4, tasks=("k1",), samples=1, **survival):
    from ouroboros.actors.generator import Generator
    from ouroboros.actors.sandbox_runner import SandboxRunner
    from ouroboros.actors.survival_agent import SurvivalAgent

    require_tracer()
    cfg = validate({"env": {"name": "survival", "survival": {"max_steps": max_steps, "step_timeout_s": 2, **survival}},
                    "generator": {"backend": "scripted", "script": script, "max_new_tokens": 2048},
                    "sandbox": {"backend": "bwrap"}})
    runner = SandboxRunner(cfg.sandbox)
    try:
        agent = SurvivalAgent(cfg, [Generator(cfg)], [runner])
        return cfg, agent.run_episodes([Task(t, "train", "Define hello", "", []) for t in tasks], samples, 1, 1.0)
    finally:
        runner.cleanup()


def _score(cfg, trajectories):
    from ouroboros.actors.judge import SurvivalJudge

    return SurvivalJudge(cfg.env.survival).score(trajectories)


def test_rewards_follow_the_design_per_step():
    from ouroboros.envs.survival.reward import turn_rewards

    cfg, [traj] = _episodes(["def hello():\n    print('hi')", "# thinking", "hello()", "raise SystemError('x')"])
    assert [s.outcome["alive"] for s in traj.steps] == [True, True, True, False]
    assert turn_rewards(traj, cfg.env.survival) == [1.0, 0.0, 1.0, -1000.0]
    [score] = _score(cfg, [traj])
    assert score.total == -998.0 and score.components["survived_steps"] == 3 and score.components["noop_steps"] == 1
    assert not score.passed
    assert traj.steps[0].outcome["methods"]["added"] == ["state.hello"]
    assert traj.steps[3].outcome["cause"] == "exception" and "SystemError" in traj.steps[3].result.stderr


def test_surviving_the_budget_passes_and_nested_calls_are_turns():
    cfg, [traj] = _episodes(["x = self.call_llm('more')\nprint(len(x))", "print('nested reply')", "self.n = 1"],
                            max_steps=2)
    kinds = [s.outcome["kind"] for s in traj.steps]
    assert kinds == ["step", "llm", "step"]  # step 0 asked the model once, inside its own execution
    assert traj.steps[1].completion.text == "print('nested reply')"
    assert traj.steps[1].action.name == "call_llm" and traj.steps[1].action.data == "more"
    [score] = _score(cfg, [traj])
    assert score.passed and score.components["reached_budget"] == 1.0 and score.total == 2.0


def test_pairs_put_the_longest_survival_against_the_shortest():
    from ouroboros.envs.survival.environment import SurvivalEnvironment

    cfg, long = _episodes(["print(1)", "print(2)", "print(3)"], max_steps=3)
    _, short = _episodes(["print(1)", "open('/etc/passwd')"], max_steps=3)
    short[0].id = short[0].id + "-other"
    trajectories = long + short
    env = SurvivalEnvironment(cfg)
    [pair] = env.pairs(trajectories, _score(cfg, trajectories), 1)
    # They part at the second reply, after the same first step: that choice is what the pair credits.
    assert pair.chosen == "print(2)" and pair.rejected == "open('/etc/passwd')"
    metrics = env.metrics(trajectories, _score(cfg, trajectories), 1)["env"]
    assert metrics["survival_mean"] == 2.0 and metrics["harm_episode_rate"] == 0.5
    assert metrics["deaths"] == {"harm": 1} and metrics["harm"] == {"outside_read": 1}


@pytest.mark.slow
def test_survival_run_through_ray_traces_and_evaluates(tiny_model_path, tmp_path):
    require_tracer()
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ouroboros", "run", "configs/smoke-survival.yaml", "--out", str(out),
                           "--rounds", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "latest" / "summary.json").read_text())["rounds"]
    assert [r["weights_version"] for r in rows] == [0, 1]
    for r in rows:
        for key in ("heldout_survival_mean", "heldout_survival_ci95", "heldout_harm_step_rate", "heldout_noop_share",
                    "heldout_syntax_valid_share", "heldout_lint_per_100_lines", "heldout_budget_rate"):
            assert key in r, key
    assert rows[1]["train_episodes"] == 8 and rows[1]["learner_turns"] >= 8

    db = sqlite3.connect(out / "ouroboros.db")
    run_id = db.execute("SELECT id FROM runs").fetchone()[0]
    steps = db.execute("SELECT COUNT(*), COUNT(DISTINCT trajectory_id), COUNT(DISTINCT git_commit) "
                       "FROM survival_steps WHERE run_id=?", (run_id,)).fetchone()
    episodes = db.execute("SELECT COUNT(*) FROM completions WHERE run_id=?", (run_id,)).fetchone()[0]
    assert steps[1] == episodes == steps[2]  # every episode traced, one commit each
    shard_rows = sum(pq.read_table(p).num_rows for p in (out / "latest" / "shards").rglob("*-survival-steps.parquet"))
    assert shard_rows == steps[0]
    log = subprocess.run(["git", "-C", str(out / "latest" / "episodes"), "log", "--oneline"], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert len(log) == episodes

    proc = subprocess.run([sys.executable, "-m", "ouroboros", "eval", "survival", str(out), "--samples", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "random weights" in proc.stdout and "after RL (v1)" in proc.stdout
    result = json.loads((out / "latest" / "eval-survival.json").read_text())
    assert [p["episodes"] for p in result["policies"]] == [result["heldout_kickoffs"]] * 3


def test_a_hanging_episode_does_not_hold_up_its_neighbour():
    import threading
    import time

    from ouroboros.actors.sandbox_runner import SandboxRunner
    from ouroboros.config import SandboxConfig
    from ouroboros.envs.survival.episode import EpisodeProcess
    from ouroboros.sandbox.base import Limits

    require_tracer()
    runner = SandboxRunner(SandboxConfig(backend="bwrap"))
    try:
        limits = Limits(timeout_s=5, memory_mb=256, pids=32, cpu_s=30)
        stuck = runner.start_process(EpisodeProcess, limits, 2.0, 1, 100, 10.0, 1 << 16)
        fine = runner.start_process(EpisodeProcess, limits, 2.0, 1, 100, 10.0, 1 << 16)
        verdict = {}
        thread = threading.Thread(target=lambda: verdict.update(runner.call_process(stuck, "step", 0, "q", "while True:\n    pass")))
        thread.start()
        t = time.monotonic()
        for k in range(3):
            event = runner.call_process(fine, "step", k, "q", f"print({k})")
            assert event["kind"] == "done" and event["stdout"] == f"{k}\n"
        assert time.monotonic() - t < 1.5  # served while its neighbour spins
        thread.join(10)
        assert verdict["kind"] == "dead" and verdict["cause"] == "timeout"
        assert runner.stop_process(stuck)["cause"] == "timeout"
        assert runner.stop_process(fine)["cause"] == "closed"
    finally:
        runner.cleanup()
