"""The experiment environment as a learning environment (`ouroboros run` with `env.name:
experiment`): research goals with known answers, cycles as episodes, the experiment judge,
pairs at the turn two episodes first differ, and the knowledge a round may see. The CLI test at
the end runs the whole loop through Ray with the tiny model."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from conftest import require_bwrap
from ouroboros.actors.experiment_agent import ExperimentAgent
from ouroboros.actors.generator import Generator
from ouroboros.actors.judge import ExperimentJudge, numbers
from ouroboros.actors.sandbox_runner import SandboxRunner
from ouroboros.config import Config, ExperimentJudgeConfig
from ouroboros.envs.experiment import prompt
from ouroboros.envs.experiment.goals import Goal, load_goals
from ouroboros.learn.pairs import build_pairs
from ouroboros.store.experiments import ExperimentStore, KnowledgeScope
from ouroboros.types import Action, Completion, ExecResult, Request, Step, Trajectory


def act(action: str, data: str = "", notes: str = "") -> str:
    return json.dumps({"action": action, "data": data, "notes": notes})


def turn(index: int, reply: str, action: Action, stdout: str | None = None, exit_code: int = 0) -> Step:
    result = None if stdout is None else ExecResult(exit_code, stdout, "", False, False, 0.01, False)
    return Step(index=index, request=Request(id=f"q{index}", messages=[{"role": "user", "content": f"turn {index}"}]),
                completion=Completion(f"q{index}", reply, [1, 2], [0.0, 0.0], 0, "scripted"), action=action,
                result=result, outcome={})


def episode(tid: str, goal_id: str, turns: list[Step], status: str = "finalized", final: str = "") -> Trajectory:
    if turns:
        turns[-1].outcome.update(status=status, final=final)
    return Trajectory(id=tid, task_id=goal_id, split="train", round=1, sample=0, steps=turns)


PRIMES = Goal("primes-100", "train", "Count the primes below 100.", 25, 0.0,
              "print(sum(1 for n in range(2, 100) if all(n % d for d in range(2, n))))")


def test_goals_are_split_and_every_reference_prints_its_answer_in_a_sandbox():
    require_bwrap()
    goals = load_goals()
    assert len({g.id for g in goals}) == len(goals)
    assert len(load_goals("train")) >= 16 and len(load_goals("heldout")) >= 6
    runner = SandboxRunner(Config().sandbox.model_copy(update={"timeout_s": 20, "concurrency": 4}))
    try:
        for g in goals:
            result = runner.exec(g.reference)
            assert result.exit_code == 0, (g.id, result.stderr[-500:])
            printed = numbers(result.stdout)
            assert printed and g.matches(printed[-1]), (g.id, result.stdout)
    finally:
        runner.cleanup()


def test_judge_prefers_a_measured_answer_to_a_guess_a_wrong_answer_and_a_crash():
    judge = ExperimentJudge(ExperimentJudgeConfig(), goals={PRIMES.id: PRIMES})
    run = Action("run", PRIMES.reference, "", True)
    final = Action("finalize", "There are 25 primes below 100.", "", True)
    measured = episode("measured", PRIMES.id, [turn(0, "a", run, "25\n"), turn(1, "b", final)],
                       final="There are 25 primes below 100.")
    guessed = episode("guessed", PRIMES.id, [turn(0, "c", final)], final="There are 25 primes below 100.")
    wrong = episode("wrong", PRIMES.id, [turn(0, "a", run, "25\n"), turn(1, "d", final)],
                    final="There are 24 primes below 100.")
    failed = episode("failed", PRIMES.id, [turn(0, "a", run, "", exit_code=1), turn(1, "e", Action(None, "", "", False, "x"))],
                     status="limit")
    crashed = episode("crashed", PRIMES.id, [], status="failed")
    scores = {s.trajectory_id: s for s in judge.score([measured, guessed, wrong, failed, crashed])}

    m = scores["measured"]
    assert m.components == {"valid": 1.0, "runs": 1.0, "finalized": 1.0, "grounded": 1.0, "answer": 1.0}
    assert m.passed and m.total == pytest.approx(1.0)
    # The right number without running anything is a guess: no answer, not grounded, not finished.
    g = scores["guessed"]
    assert g.components["answer"] == 0.0 and g.components["grounded"] == 0.0 and g.components["finalized"] == 0.0
    assert not g.passed and g.total == pytest.approx(0.1)  # only the valid reply
    w = scores["wrong"]
    assert w.components["answer"] == 0.0 and not w.passed
    assert scores["failed"].components["runs"] == 0.0 and scores["failed"].components["valid"] == 0.5
    assert scores["crashed"].total == 0.0
    # A run printed some number, but the right one was guessed: grounded, not answered. And a
    # list of candidates that happens to include the answer is not an answer.
    other = episode("other", PRIMES.id, [turn(0, "a", run, "99\n"), turn(1, "b", final)],
                    final="Checked 99 numbers: there are 25 primes below 100.")
    listed = episode("listed", PRIMES.id, [turn(0, "a", run, "23 24 25 26\n"), turn(1, "b", final)],
                     final="It is 23, 24, 25 or 26.")
    more = {s.trajectory_id: s for s in judge.score([other, listed])}
    assert more["other"].components["grounded"] == 1.0 and more["other"].components["answer"] == 0.0
    assert more["listed"].components["answer"] == 0.0 and not more["listed"].passed
    ranked = sorted(scores, key=lambda k: -scores[k].total)
    assert ranked[0] == "measured" and ranked[-1] == "crashed"
    assert scores["measured"].total > scores["wrong"].total > scores["failed"].total


def test_pairs_are_taken_where_two_episodes_first_differ():
    run = Action("run", "print(25)", "", True)
    best = episode("best", "g", [turn(0, "same", run, "25\n"), turn(1, "right", Action("finalize", "25", "", True))])
    worst = episode("worst", "g", [turn(0, "same", run, "25\n"), turn(1, "wrong", Action("finalize", "24", "", True))])
    judge = ExperimentJudge(ExperimentJudgeConfig(), goals={"g": Goal("g", "train", "a count", 25)})
    best.steps[-1].outcome["final"], worst.steps[-1].outcome["final"] = "25", "24"
    pairs = build_pairs([worst, best], judge.score([worst, best]), 1)
    assert len(pairs) == 1
    p = pairs[0]
    assert (p.chosen, p.rejected, p.id) == ("right", "wrong", "best>worst@1")
    assert p.prompt == best.steps[1].request.messages  # the turn where they parted, not the first
    # A turn answered differently before the replies part (a simulation printed other numbers)
    # means the later prompts differ: no pair.
    noisy = episode("noisy", "g", [turn(0, "same", run, "24\n"), turn(1, "wrong", Action("finalize", "24", "", True))])
    noisy.steps[-1].outcome["final"] = "24"
    assert build_pairs([best, noisy], judge.score([best, noisy]), 1) == []
    # Episodes that never reply differently give no pair, whatever their rewards.
    twin = episode("twin", "g", [turn(0, "same", run, "25\n"), turn(1, "right", Action("finalize", "24", "", True))])
    twin.steps[-1].outcome["final"] = "24"
    assert build_pairs([best, twin], judge.score([best, twin]), 1) == []


def test_knowledge_scope_shows_only_earlier_train_rounds(tmp_path):
    store = ExperimentStore(tmp_path / "ouroboros.db")
    ids = {}
    for name, round_, split in [("old-train", 0, "train"), ("now-train", 1, "train"), ("old-heldout", 0, "heldout"),
                                ("standalone", None, None)]:
        eid = store.start("run", 0, "owner", "", "goal", "g", round_, split)
        store.finish(eid, "finalized", "finalized", {"notes": f"prime count {name}"}, {"notes": f"prime count {name}"})
        ids[eid] = name
    scope = KnowledgeScope(before_round=1, split="train")
    assert {ids[h["experiment_id"]] for h in store.search("prime count", 10, scope=scope)} == {"old-train"}
    assert {ids[i] for i in store.recent_finished(10, scope=scope)} == {"old-train"}
    assert len(store.search("prime count", 10)) == 4  # standalone cycles see everything


def test_demonstration_is_rendered_with_the_real_template():
    values = {"experiment_id": 9, "current_action": 1, "max_actions": 3, "time_remaining": 60.0,
              "network_access": "Disabled", "gpu_access": "Disabled", "prev_data": "x", "current_dockerfile": "FROM a",
              "access_info": "[]", "action_history": "", "goal": "the real goal"}
    demo = prompt.demonstration(prompt.DEFAULT_TEMPLATE, values, 500, 6000)
    assert [m["role"] for m in demo] == ["user", "assistant", "user", "assistant"]
    assert prompt.DEMO_GOAL in demo[0]["content"] and "the real goal" not in demo[0]["content"]
    assert json.loads(demo[1]["content"])["action"] == "run" and json.loads(demo[3]["content"])["action"] == "finalize"
    assert "55" in demo[2]["content"]  # the second turn shows the first one's result
    assert prompt.build_messages("now", demo)[-1] == {"role": "user", "content": "now"}


def test_run_episodes_returns_every_turn_redacted_and_tagged(tmp_path, monkeypatch):
    """ExperimentAgent as a plain object: a scripted policy, a real bwrap runner, real SQLite and git."""
    require_bwrap()
    cfg = Config()
    cfg.generator.backend = "scripted"
    cfg.generator.script = [
        act("run", "import os\nprint('token', os.environ['SERVICE_TOKEN'])\n" + PRIMES.reference, "count them"),
        act("finalize", "There are 25 primes below 100.", "measured 25"),
    ]
    monkeypatch.setenv("OUROBOROS_TEST_SERVICE_TOKEN", "tok-s3cret-value")
    cfg.sandbox.env_from = {"SERVICE_TOKEN": "OUROBOROS_TEST_SERVICE_TOKEN"}
    cfg.sandbox.concurrency = 4
    cfg.experiment.max_actions = 3
    cfg.experiment.demonstrate = True
    runner = SandboxRunner(cfg.sandbox, "test-run", True)
    try:
        agent = ExperimentAgent(cfg, "test-run", str(tmp_path), [Generator(cfg)], [runner])
        other = Goal("other", "train", "Count the primes below 100 again.", 25, 0.0, PRIMES.reference)
        trajectories = agent.run_episodes([PRIMES, other], 2, round_=3, temperature=1.0, seed=7)
        assert agent.flush(60)
    finally:
        runner.cleanup()

    assert sorted(t.id for t in trajectories) == ["r3-other-train-s0", "r3-other-train-s1",
                                                  "r3-primes-100-train-s0", "r3-primes-100-train-s1"]
    for t in trajectories:
        assert [s.action.name for s in t.steps] == ["run", "finalize"]
        first, last = t.steps
        assert first.request.messages[0]["content"].count(prompt.DEMO_GOAL) == 1  # the demonstration leads
        assert "25" in first.result.stdout
        # The credential's value never reaches what the learner and the store keep.
        assert "tok-s3cret-value" not in first.result.stdout and "[redacted:SERVICE_TOKEN]" in first.result.stdout
        assert last.outcome["status"] == "finalized" and "25" in last.outcome["final"]
        # Each turn records the request as sent: the round's sampling and its own seed.
        assert all(s.completion.weights_version == 0 and s.request.seed is not None and s.request.temperature == 1.0
                   and s.request.session and s.request.id == s.completion.request_id for s in t.steps)
    judge = ExperimentJudge(ExperimentJudgeConfig(), goals={PRIMES.id: PRIMES, other.id: other})
    assert all(s.passed for s in judge.score(trajectories))
    # Identical replies: rewards tie and no pair forms.
    assert build_pairs(trajectories, judge.score(trajectories), 3) == []

    db = sqlite3.connect(tmp_path / "ouroboros.db")
    rows = db.execute("SELECT task_id, round, split, status, goal, git_commit FROM experiments ORDER BY id").fetchall()
    assert len(rows) == 4 and {r[0] for r in rows} == {"primes-100", "other"}
    assert all(r[1] == 3 and r[2] == "train" and r[3] == "finalized" and r[5] for r in rows)
    assert {r[4] for r in rows} == {PRIMES.goal, other.goal}
    assert db.execute("SELECT COUNT(*) FROM steps").fetchone()[0] == 8
    log = subprocess.run(["git", "-C", str(tmp_path / "experiments"), "log", "--oneline"], capture_output=True, text=True)
    assert len(log.stdout.splitlines()) >= 4


def test_a_bad_env_name_is_a_config_error():
    from ouroboros.config import ConfigError, validate

    with pytest.raises(ConfigError, match="env.name"):
        validate({"env": {"name": "labyrinth"}})


@pytest.mark.slow
def test_run_on_the_experiment_environment_closes_the_loop(tiny_model_path, tmp_path):
    require_bwrap()
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ouroboros", "run", "configs/smoke-run-experiment.yaml", "--rounds",
                           "2", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "latest" / "summary.json").read_text())["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["heldout_samples"] == 2 for r in rows)
    assert rows[1]["train_samples"] == 16 and rows[2]["train_samples"] == 16
    # Cycles of one goal differ somewhere over two rounds, so the learner trains and publishes.
    assert rows[1]["pairs"] + rows[2]["pairs"] > 0
    trained = [r for r in rows[1:] if r["pairs"]]
    assert all(r["dpo_loss"] is not None for r in trained)
    assert rows[-1]["weights_version"] == len(trained)

    db = sqlite3.connect(out / "ouroboros.db")
    experiments = db.execute("SELECT id, task_id, round, split, status, git_commit FROM experiments").fetchall()
    assert len(experiments) == 2 + 2 * (16 + 2)
    assert all(e[4] in ("finalized", "limit") and e[5] for e in experiments)  # none left running; all committed
    assert {e[3] for e in experiments if e[2] == 0} == {"heldout"}
    # Every episode's row links to its experiment, and its turns are all in the shard.
    outcomes = [json.loads(o) for (o,) in db.execute("SELECT outcome FROM completions")]
    linked = {o["experiment_id"] for o in outcomes}
    assert linked <= {e[0] for e in experiments} and len(linked) == len(outcomes)
    shard = pq.read_table(out / "latest" / "shards" / "round-0001" / "train-completions.parquet").to_pylist()
    assert len({r["trajectory_id"] for r in shard}) == 16 and max(r["step"] for r in shard) >= 1
    assert {r["weights_version"] for r in shard} == {0}
    for r in rows[1:]:
        assert r["eval_weights_versions"] == [r["weights_version"]]
    git = subprocess.run(["git", "-C", str(out / "experiments"), "log", "--oneline"], capture_output=True, text=True)
    assert len(git.stdout.splitlines()) == len(experiments)
    status = subprocess.run(["git", "-C", str(out / "experiments"), "status", "--porcelain"], capture_output=True,
                            text=True)
    assert status.stdout == ""
