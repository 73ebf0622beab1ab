"""The experiment environment as a learning environment (`ouroboros run` with `env.name:
experiment`): research goals drawn per round, cycles as episodes, the experiment judge, pairs at
the turn two episodes first differ, and the knowledge a round may see. The CLI test at the end
runs the whole loop through Ray with the tiny model. The adversarial episodes are in
tests/test_forging_experiment.py."""
from __future__ import annotations

import json
import math
import re
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal

import pyarrow.parquet as pq
import pytest

from conftest import require_bwrap
from ouroboros.actors.experiment_agent import ExperimentAgent
from ouroboros.actors.generator import Generator
from ouroboros.actors.judge import ExperimentJudge
from ouroboros.actors.sandbox_runner import SandboxRunner
from ouroboros.config import Config, ExperimentJudgeConfig
from ouroboros.envs.experiment import prompt
from ouroboros.envs.experiment.goals import Goal, GoalsError, Param, load_goals, parse_goals
from ouroboros.envs.experiment.numbers import close, distinct, numbers
from ouroboros.envs.experiment.references import References, check_goals, guessable_share
from ouroboros.learn.pairs import build_pairs
from ouroboros.store.experiments import ExperimentStore, KnowledgeScope
from ouroboros.types import Action, Completion, ExecResult, Request, Score, Step, Trajectory


def act(action: str, data: str = "", notes: str = "") -> str:
    return json.dumps({"action": action, "data": data, "notes": notes})


def turn(index: int, reply: str, action: Action, result: ExecResult | str | None = None, exit_code: int = 0) -> Step:
    if isinstance(result, str):
        result = ExecResult(exit_code, result, "", False, False, 0.01, False)
    return Step(index=index, request=Request(id=f"q{index}", messages=[{"role": "user", "content": f"turn {index}"}]),
                completion=Completion(f"q{index}", reply, [1, 2], [0.0, 0.0], 0, "scripted"), action=action,
                result=result, outcome={})


def episode(tid: str, goal_id: str, turns: list[Step], status: str = "finalized", final: str = "", round_: int = 1,
            split: str = "train") -> Trajectory:
    if turns:
        turns[-1].outcome.update(status=status, final=final)
    return Trajectory(id=tid, task_id=goal_id, split=split, round=round_, sample=0, steps=turns)


PRIMES = Goal("primes-below", "train", "Count the primes below {n}.",
              "n = PARAMS['n']\nprint(sum(1 for k in range(2, n) if all(k % d for d in range(2, int(k ** 0.5) + 1))))",
              (Param("n", "int", 1000, 20000),))
RUN = "test-run"


@pytest.fixture(scope="module")
def runner():
    require_bwrap()
    r = SandboxRunner(Config().sandbox.model_copy(update={"timeout_s": 20, "concurrency": 2}))
    yield r
    r.cleanup()


def test_numbers_are_read_as_values_whatever_their_writing():
    assert numbers("There are 9,592 primes; 9592.0 or 9.592e3") == [9592, 9592, 9592]
    assert len(distinct(numbers("9,592 9592.0 9.592e3"))) == 1
    assert numbers(".5 -3 \u22127 3-5") == [Decimal("0.5"), -3, -7, 3, 5]  # a range is two numbers
    assert numbers("x2 1.2.3 1,2345") == [Decimal("1.2"), 1, 2345]
    assert numbers("\u0669\u0665\u0669\u0662 \uff11\uff12") == [9592, 12]  # other scripts' digits count
    # Too large to compare: still a number (a candidate), never a match.
    assert numbers("1e999999 " + "9" * 5000) == [Decimal("Infinity")] * 2
    assert not close(Decimal("Infinity"), Decimal(5), 0.5)
    assert close(Decimal("0.52"), Decimal("0.5214"), 0.03) and not close(Decimal("9591"), Decimal("9592"), 0)
    # Linear in hostile text.
    started = time.monotonic()
    numbers("1," * 300_000 + "-" * 300_000 + "1e" * 300_000)
    assert time.monotonic() - started < 5


def test_goals_are_families_drawn_per_run_round_and_goal():
    goals = load_goals()
    assert len({g.id for g in goals}) == len(goals)
    assert len(load_goals("train")) >= 16 and len(load_goals("heldout")) >= 6
    for g in goals:
        assert g.params, g.id  # every question is drawn, none is fixed
        a, b = g.instance("run-a", 1), g.instance("run-a", 1)
        assert a.params == b.params and a.text == b.text  # every sample of a round gets the same question
        others = [g.instance("run-a", r).params for r in range(2, 7)] + [g.instance("run-b", 1).params]
        assert sum(o == a.params for o in others) <= 1, g.id  # rounds and runs draw new ones
        assert "{" not in a.text and all(str(v) in a.text for v in a.params.values())
        assert a.program.startswith(f"PARAMS = {a.params!r}\n")


@pytest.mark.fresh_process
def test_bundled_references_print_one_unguessable_answer_quickly_in_a_sandbox(runner):
    """Every bundled goal, 20 drawn instances each, run in bwrap: its reference prints one number,
    no answer matches more than 10% of the instances (nor pi or e any), nor does any of the
    goal's known shortcuts, no answer is one of the question's own numbers, and a reference runs
    well within the sandbox's 5 s default."""
    goals = load_goals()
    # The shortcuts found so far are recorded with their goals, so check_goals holds them to the bar.
    known = {g.id: g.shortcuts for g in goals}
    for gid, shortcut in [("uniform-sum-exceeds", "2 * t + 2 / 3"), ("rectangle-distance", "max(w, h) / 3"),
                          ("run-of-heads", "1 / ((1 - p) * p ** k)"), ("gaussian-integral", "b - b ** 3 / (3 * s)")]:
        assert shortcut in known[gid], gid
    assert any(s.startswith("a / (1 - 2 * p) if p < 0.5") for s in known["gamblers-ruin-duration"])
    references = References([runner], timeout_s=20, parallel=2)
    assert check_goals(goals, references) == []  # as a run checks a goals file: 20 instances each
    drawn = []
    for g in goals:
        instances = [g.draw(f"check|{n}") for n in range(20)]
        drawn += instances
        answers = [references.answer(i) for i in instances]  # known now: no second run
        assert guessable_share(answers, g.rel_tol) <= 0.1, g.id
        for constant in (math.pi, math.e):
            assert not any(close(Decimal(repr(constant)), a, g.rel_tol) for a in answers), (g.id, constant)
    # Well within the sandbox's 5 s default: the slowest references (by wall time, which a loaded
    # host stretches) run again with 2 CPU-seconds to spend, which they must not need.
    for instance in sorted(drawn, key=lambda i: references.seconds[i.key])[-5:]:
        again = runner.exec(instance.program, None, {"timeout_s": 60, "cpu_s": 2})
        assert again.exit_code == 0 and not again.timed_out, (instance.goal.id, instance.params, again.stderr[-500:])
        assert numbers(again.stdout) == [references.answer(instance)], instance.goal.id


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", text.lower())))


def test_heldout_goals_are_other_kinds_of_question_than_train_goals():
    train, heldout = load_goals("train"), load_goals("heldout")
    for h in heldout:
        for t in train:
            shared = len(_words(h.goal) & _words(t.goal)) / len(_words(h.goal) | _words(t.goal))
            assert shared < 0.5, (h.id, t.id, shared)  # not one template with another number
            assert h.reference != t.reference
    assert not {t.id for t in train} & {h.id for h in heldout}


def test_a_goals_file_reports_every_bad_line_with_its_file_and_line(tmp_path):
    good = {"id": "ok", "split": "heldout", "goal": "Count to {n}.", "params": {"n": {"int": [1, 9]}},
            "reference": "print(PARAMS['n'])"}
    lines = [json.dumps(good), "{not json", json.dumps({**good, "id": "fixed", "answer": 5}),
             json.dumps({**good, "id": "ghost", "goal": "Count to {m}."}), json.dumps({**good, "id": "hidden",
                                                                                       "goal": "Count."}),
             json.dumps({**good, "id": "ok"}), json.dumps({**good, "id": "bad-range", "params": {"n": {"int": [9, 1]}}}),
             "", json.dumps({**good, "id": "bad-split", "split": "test"})]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(GoalsError) as err:
        load_goals(path=path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"7 bad line(s) in {path}")
    for line, why in [(2, "not valid JSON"), (3, "goals carry no answer"), (4, "['m'], which params does not define"),
                      (5, "do not appear in the goal text"), (6, "already used at line 1"), (7, "low < high"),
                      (9, "split 'test'")]:
        assert f"{path}:{line}: {why}" in message or (f"{path}:{line}:" in message and why in message), (line, message)
    assert parse_goals(json.dumps(good), "x")[0].draw("k").text.startswith("Count to ")
    with pytest.raises(GoalsError, match="not found"):
        load_goals(path=tmp_path / "missing.jsonl")
    with pytest.raises(GoalsError, match="no held-out goal"):
        parse_goals(json.dumps({**good, "split": "train"}), "x")


def test_goals_whose_reference_fails_or_whose_answer_is_a_constant_are_refused_all_at_once(runner, tmp_path):
    def goal(gid, reference, text="Count the primes below {n}."):
        return {"id": gid, "split": "heldout", "goal": text, "params": {"n": {"int": [1000, 20000]}},
                "reference": reference}

    path = tmp_path / "goals.jsonl"
    path.write_text("\n".join(json.dumps(g) for g in [
        goal("fine", PRIMES.reference),
        goal("crashes", "raise SystemExit('no ' + 'luck')"),
        goal("constant", "print(42)"),
        goal("chatty", "print(1, 2)"),
        goal("echo", "print(PARAMS['n'])"),
        goal("slow", "import time\ntime.sleep(30)"),
    ]) + "\n")
    refused = check_goals(load_goals(path=path), References([runner], timeout_s=1, attempts=1, parallel=2), draws=6,
                          max_share=0.34)  # 2 of 6 may share an answer: few draws, to keep the test short
    assert len(refused) == 5
    by_id = {r.split(" ")[0].strip("'"): r for r in refused}
    assert set(by_id) == {"crashes", "constant", "chatty", "echo", "slow"}
    assert re.fullmatch(rf"'crashes' \({re.escape(str(path))}:2\): for \{{'n': \d+\}} its reference exited with "
                        "code 1: no luck", by_id["crashes"]), by_id["crashes"]
    assert "matches 100% of 6 drawn instances" in by_id["constant"]
    assert "its reference printed 2 numbers, not one: '1 2'" in by_id["chatty"]
    assert "number of the goal's own text" in by_id["echo"]
    assert "its reference timed out after 1." in by_id["slow"]


def test_a_goal_whose_known_shortcut_answers_like_a_constant_is_refused(runner, tmp_path):
    """A goal's `shortcuts` (cheap guesses from its parameters) run in the sandbox on the drawn
    instances like its reference, and are held to the constant's bar; a shortcut that does not
    print one number is reported, so a typo cannot turn the check off."""
    def goal(gid, shortcuts, rel_tol=0.02):
        return {"id": gid, "split": "heldout", "goal": "Count the primes below {n}.",
                "params": {"n": {"int": [1000, 20000]}}, "reference": PRIMES.reference, "rel_tol": rel_tol,
                "shortcuts": shortcuts}

    path = tmp_path / "goals.jsonl"
    path.write_text("\n".join(json.dumps(g) for g in [
        goal("fine", ["n / 10", "n // 10 if n % 2 else n // 9", "import math\nprint(PARAMS['n'] / 2)"], rel_tol=0),
        goal("asymptote", ["n / 10", "n / (log(n) - 1)"]),  # Legendre's: within 2% for every n drawn
        goal("typo", ["n / lg(n)"]),
        goal("chatty", ["print(PARAMS['n'], 2)\nprint()"]),
    ]) + "\n")
    goals = load_goals(path=path)
    instance = goals[0].draw("k")
    assert runner.exec(instance.shortcut(1).program).stdout.strip() == str(eval(goals[0].shortcuts[1], {},
                                                                              instance.params))
    refused = check_goals(goals, References([runner], timeout_s=5, attempts=1, parallel=2), draws=6,
                          max_share=0.34)
    by_id = {r.split(" ")[0].strip("'"): r for r in refused}
    assert set(by_id) == {"asymptote", "typo", "chatty"}, refused
    assert re.fullmatch(rf"'asymptote' \({re.escape(str(path))}:2\): shortcut\(s\) 'n / \(log\(n\) - 1\)' \(100%\) "
                        r"land within rel_tol 0\.02 of the answer for more than 34% of 6 drawn instances, so stating "
                        "one would pass without the work; draw the parameters from ranges where they miss",
                        by_id["asymptote"]), refused
    assert "its shortcut 'n / lg(n)' exited with code 1: NameError: name 'lg' is not defined" in by_id["typo"]
    assert "printed 2 numbers, not one" in by_id["chatty"]
    # A shortcut that is neither an expression nor a program is a bad line, reported with the others.
    with pytest.raises(GoalsError, match=r"x:1: shortcut 2 'max\(w' is neither a Python expression nor a program"):
        parse_goals(json.dumps(goal("bad", ["n / 10", "max(w"])), "x")
    with pytest.raises(GoalsError, match="shortcuts must be a list"):
        parse_goals(json.dumps(goal("bad", "n / 10")), "x")


def test_a_malformed_goals_file_stops_ouroboros_run_with_its_file_and_line(tmp_path):
    path = tmp_path / "goals.jsonl"
    path.write_text('{"id": "x", "split": "heldout"}\n')
    proc = subprocess.run([sys.executable, "-m", "ouroboros", "run", "configs/smoke-run-experiment.yaml", "--rounds",
                           "0", "--out", str(tmp_path / "run"), "--set", f"env.goals_file={path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == (f"error: 1 bad line(s) in {path}: {path}:1: missing field(s) ['goal', "
                                   "'reference']")


@pytest.mark.slow
def test_goals_refused_in_the_sandbox_stop_ouroboros_run_before_round_0(tiny_model_path, tmp_path):
    require_bwrap()
    fine = {"id": "fine", "split": "heldout", "goal": "Count the primes below {n}.",
            "params": {"n": {"int": [1000, 20000]}}, "reference": PRIMES.reference}
    path = tmp_path / "goals.jsonl"
    path.write_text("\n".join(json.dumps(g) for g in [
        fine, {**fine, "id": "broken", "reference": "print(1 / 0)"}, {**fine, "id": "fixed", "reference": "print(25)"},
        {**fine, "id": "trainee", "split": "train"}]) + "\n")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ouroboros", "run", "configs/smoke-run-experiment.yaml", "--rounds",
                           "0", "--out", str(out), "--set", f"env.goals_file={path}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: env.goals_file '{path}': 2 goal(s) refused: 'broken' ({path}:2): "), last
    assert "ZeroDivisionError" in last and f"'fixed' ({path}:3): one answer matches 100%" in last
    assert "Traceback" not in proc.stderr
    assert not (out / "runs").exists() and not (out / "ouroboros.db").exists()  # refused before a run was recorded


def test_judge_prefers_a_measured_answer_to_a_guess_a_wrong_answer_and_a_crash(runner):
    judge = ExperimentJudge(ExperimentJudgeConfig(), [PRIMES], RUN, [runner])
    instance = PRIMES.instance(RUN, 1)
    truth = judge.references.answer(instance)
    assert judge.instance(episode("x", PRIMES.id, [])).params == instance.params
    said = f"There are {truth} primes below {instance.params['n']}."
    run = Action("run", instance.program, "", True)
    final = Action("finalize", said, "", True)
    printed = runner.exec(instance.program)
    measured = episode("measured", PRIMES.id, [turn(0, "a", run, printed), turn(1, "b", final)], final=said)
    guessed = episode("guessed", PRIMES.id, [turn(0, "c", final)], final=said)
    wrong = episode("wrong", PRIMES.id, [turn(0, "a", run, printed), turn(1, "d", final)],
                    final=f"There are {truth + 1} primes.")
    failed = episode("failed", PRIMES.id, [turn(0, "a", run, "", exit_code=1), turn(1, "e", Action(None, "", "", False,
                                                                                                   "x"))],
                     status="limit")
    crashed = episode("crashed", PRIMES.id, [], status="failed")
    scores = {s.trajectory_id: s for s in judge.score([measured, guessed, wrong, failed, crashed])}

    m = scores["measured"]
    assert m.components == {"valid": 1.0, "runs": 1.0, "finalized": 1.0, "answer": 1.0}
    assert m.passed and m.total == pytest.approx(1.0)
    # The right number without running anything is a guess: no answer, not finished.
    g = scores["guessed"]
    assert g.components["answer"] == 0.0 and g.components["finalized"] == 0.0
    assert not g.passed and g.total == pytest.approx(0.1)  # only the valid reply
    w = scores["wrong"]
    assert w.components["answer"] == 0.0 and not w.passed and w.total == pytest.approx(0.5)
    assert scores["failed"].components["runs"] == 0.0 and scores["failed"].components["valid"] == 0.5
    assert scores["crashed"].total == 0.0
    ranked = sorted(scores, key=lambda k: -scores[k].total)
    assert ranked[0] == "measured" and ranked[-1] == "crashed"
    assert scores["measured"].total > scores["wrong"].total > scores["failed"].total
    # An episode that says it was asked other parameters than the judge draws is a bug, not a score.
    with pytest.raises(ValueError, match="agent and judge disagree"):
        judge.score([Trajectory("odd", PRIMES.id, "train", 1, 0, measured.steps, params={"n": -1})])


def test_weights_of_the_experiment_judge_sum_to_one():
    from ouroboros.config import ConfigError, validate

    c = ExperimentJudgeConfig()
    assert c.valid_weight + c.runs_weight + c.finalized_weight + c.answer_weight == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="must sum to 1"):
        validate({"judge": {"experiment": {"answer_weight": 0.9}}})
    with pytest.raises(ConfigError, match="unknown config key 'judge.experiment.grounded_weight'"):
        validate({"judge": {"experiment": {"grounded_weight": 0.1}}})


def test_pairs_are_taken_where_two_episodes_first_differ():
    run = Action("run", "print(25)", "", True)
    best = episode("best", "g", [turn(0, "same", run, "25\n"), turn(1, "right", Action("finalize", "25", "", True))])
    worst = episode("worst", "g", [turn(0, "same", run, "25\n"), turn(1, "wrong", Action("finalize", "24", "", True))])

    def scores(*trajectories, totals={"best": 1.0, "worst": 0.5, "noisy": 0.5, "twin": 0.5}):
        return [Score(t.id, {}, totals[t.id], "test") for t in trajectories]

    pairs = build_pairs([worst, best], scores(worst, best), 1)
    assert len(pairs) == 1
    p = pairs[0]
    assert (p.chosen, p.rejected, p.id) == ("right", "wrong", "best>worst@1")
    assert p.prompt == best.steps[1].request.messages  # the turn where they parted, not the first
    # A turn answered differently before the replies part (a simulation printed other numbers)
    # means the later prompts differ: no pair.
    noisy = episode("noisy", "g", [turn(0, "same", run, "24\n"), turn(1, "wrong", Action("finalize", "24", "", True))])
    assert build_pairs([best, noisy], scores(best, noisy), 1) == []
    # Episodes that never reply differently give no pair, whatever their rewards.
    twin = episode("twin", "g", [turn(0, "same", run, "25\n"), turn(1, "right", Action("finalize", "24", "", True))])
    assert build_pairs([best, twin], scores(best, twin), 1) == []


def test_knowledge_scope_shows_this_runs_earlier_train_rounds_and_held_out_cycles_nothing(tmp_path):
    store = ExperimentStore(tmp_path / "ouroboros.db")
    ids = {}
    for name, run, round_, split in [("old-train", "me", 0, "train"), ("now-train", "me", 1, "train"),
                                     ("old-heldout", "me", 0, "heldout"), ("other-run", "them", 0, "train"),
                                     ("standalone", "me", None, None)]:
        eid = store.start(run, 0, "owner", "", "goal", "g", round_, split)
        store.finish(eid, "finalized", "finalized", {"notes": f"prime count {name}"}, {"notes": f"prime count {name}"})
        ids[eid] = name

    def seen(scope):
        found = {ids[h["experiment_id"]] for h in store.search("prime count", 10, scope=scope)}
        assert found == {ids[i] for i in store.recent_finished(10, scope=scope)}
        return found

    # Runs may share a directory: another run's experiments count only where the config names it.
    assert seen(KnowledgeScope.of_run("me", (), before_round=1, split="train")) == {"old-train"}
    assert seen(KnowledgeScope.of_run("me", ["them"], before_round=1, split="train")) == {"old-train", "other-run"}
    assert seen(KnowledgeScope.of_run("me", (), before_round=5, split="train")) == {"old-train", "now-train"}
    assert seen(KnowledgeScope(runs=())) == set()  # what a held-out cycle gets: no other experiment at all
    assert len(store.search("prime count", 10)) == 5  # standalone cycles see everything


def test_demonstration_is_rendered_with_the_real_template_and_states_one_number():
    values = {"experiment_id": 9, "current_action": 1, "max_actions": 3, "time_remaining": 60.0,
              "network_access": "Disabled", "gpu_access": "Disabled", "prev_data": "x", "current_dockerfile": "FROM a",
              "access_info": "[]", "action_history": "", "goal": "the real goal"}
    demo = prompt.demonstration(prompt.DEFAULT_TEMPLATE, values, 500, 6000)
    assert [m["role"] for m in demo] == ["user", "assistant", "user", "assistant"]
    assert prompt.DEMO_GOAL in demo[0]["content"] and "the real goal" not in demo[0]["content"]
    run, final = json.loads(demo[1]["content"]), json.loads(demo[3]["content"])
    assert run["action"] == "run" and final["action"] == "finalize"
    printed = numbers(prompt.DEMO_RESULT)[-1]
    assert str(printed) in demo[2]["content"]  # the second turn shows the first one's result
    # What it teaches is what the judge pays for: one number besides the goal's, the one printed.
    stated = [v for v in distinct(numbers(final["data"] + "\n" + final["notes"])) if v not in numbers(prompt.DEMO_GOAL)]
    assert stated == [printed]
    assert prompt.build_messages("now", demo)[-1] == {"role": "user", "content": "now"}


def test_run_episodes_returns_every_turn_redacted_and_tagged(tmp_path, monkeypatch):
    """ExperimentAgent as a plain object: a scripted policy, a real bwrap runner, real SQLite and git."""
    require_bwrap()
    cfg = Config()
    cfg.generator.backend = "scripted"
    count = "print(sum(1 for k in range(2, 100) if all(k % d for d in range(2, k))))"
    cfg.generator.script = [
        act("run", "import os\nprint('token', os.environ['SERVICE_TOKEN'])\n" + count, "count them"),
        act("finalize", "There are 25 primes below 100.", "counted by the program"),
    ]
    monkeypatch.setenv("OUROBOROS_TEST_SERVICE_TOKEN", "tok-s3cret-value")
    cfg.sandbox.env_from = {"SERVICE_TOKEN": "OUROBOROS_TEST_SERVICE_TOKEN"}
    cfg.sandbox.concurrency = 4
    cfg.experiment.max_actions = 3
    cfg.experiment.demonstrate = True
    # A test goal whose answer does not change with its parameter, so a scripted policy can
    # answer it (the bundled goals never allow that); PRIMES changes its answer every round.
    fixed = Goal("fixed", "train", "Count the primes below 100 (call this run {label}).", count,
                 (Param("label", "choice", values=("north", "south")),))
    runner = SandboxRunner(cfg.sandbox, RUN, True)
    try:
        agent = ExperimentAgent(cfg, RUN, str(tmp_path), [Generator(cfg)], [runner])
        trajectories = agent.run_episodes([PRIMES, fixed], 2, round_=3, temperature=1.0, seed=7)
        assert agent.close(60)
        judge = ExperimentJudge(ExperimentJudgeConfig(), [PRIMES, fixed], RUN, [runner])
        scores = {s.trajectory_id: s for s in judge.score(trajectories)}
    finally:
        runner.cleanup()

    assert sorted(t.id for t in trajectories) == ["r3-fixed-train-s0", "r3-fixed-train-s1",
                                                  "r3-primes-below-train-s0", "r3-primes-below-train-s1"]
    for t in trajectories:
        instance = (PRIMES if t.task_id == PRIMES.id else fixed).instance(RUN, 3)
        assert t.params == instance.params  # the question asked, for the record; never its answer
        assert [s.action.name for s in t.steps] == ["run", "finalize"]
        first, last = t.steps
        assert first.request.messages[0]["content"].count(prompt.DEMO_GOAL) == 1  # the demonstration leads
        assert f"Goal: {instance.text}" in first.request.messages[-1]["content"]
        assert "25" in first.result.stdout
        # The credential's value never reaches what the learner and the store keep.
        assert "tok-s3cret-value" not in first.result.stdout and "[redacted:SERVICE_TOKEN]" in first.result.stdout
        assert last.outcome["status"] == "finalized" and "25" in last.outcome["final"]
        # Each turn records the request as sent: the round's sampling and its own seed.
        assert all(s.completion.weights_version == 0 and s.request.seed is not None and s.request.temperature == 1.0
                   and s.request.session and s.request.id == s.completion.request_id for s in t.steps)
        # The same reply is right for the fixed question and wrong for this round's primes question.
        assert scores[t.id].passed == (t.task_id == "fixed")
    # Identical replies on one goal: rewards tie and no pair forms.
    assert build_pairs(trajectories, list(scores.values()), 3) == []

    db = sqlite3.connect(tmp_path / "ouroboros.db")
    rows = db.execute("SELECT task_id, round, split, status, goal, git_commit, params FROM experiments ORDER BY id"
                      ).fetchall()
    assert len(rows) == 4 and {r[0] for r in rows} == {"primes-below", "fixed"}
    assert all(r[1] == 3 and r[2] == "train" and r[3] == "finalized" and r[5] for r in rows)
    assert {(r[4], r[6]) for r in rows} == {(g.instance(RUN, 3).text, json.dumps(g.instance(RUN, 3).params))
                                            for g in (PRIMES, fixed)}
    assert db.execute("SELECT COUNT(*) FROM steps").fetchone()[0] == 8
    log = subprocess.run(["git", "-C", str(tmp_path / "experiments"), "log", "--oneline"], capture_output=True, text=True)
    assert len(log.stdout.splitlines()) >= 4


def test_a_bad_env_name_is_a_config_error():
    from ouroboros.config import ConfigError, validate

    with pytest.raises(ConfigError, match="env.name"):
        validate({"env": {"name": "labyrinth"}})


@pytest.mark.slow
def test_run_on_the_experiment_environment_closes_the_loop_with_multi_turn_credit(tiny_model_path, tmp_path):
    """A round of experiment cycles through the whole loop, with REINFORCE: every reply of
    every cycle is a trained turn, the cycle's score discounted back over its turns. (DPO on
    cycles' pairs: tests/test_agent_judge_pairs.py and the learners' own tests; several rounds
    in a row: the tasks environment's runs, tests/test_resume.py.)"""
    require_bwrap()
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ouroboros", "run", "configs/smoke-run-experiment.yaml", "--rounds",
                           "1", "--out", str(out), "--set", "learner.algorithm=reinforce", "--set", "learner.gamma=0.9",
                           "--set", "env.train_tasks_per_round=2"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "latest" / "summary.json").read_text())["rounds"]
    assert [r["round"] for r in rows] == [0, 1]
    assert all(r["heldout_samples"] == 2 for r in rows)
    assert rows[1]["train_samples"] == 8
    for r in rows[1:]:
        assert r["eval_weights_versions"] == [r["weights_version"]]
        assert r["learner"]["algorithm"] == "reinforce" and r["learner"]["steps"] > 0
    assert [r["weights_version"] for r in rows] == [0, 1]  # the learning round published a version

    db = sqlite3.connect(out / "ouroboros.db")
    experiments = db.execute("SELECT id, task_id, round, split, status, git_commit FROM experiments").fetchall()
    assert len(experiments) == 2 + (8 + 2)
    assert all(e[4] in ("finalized", "limit") and e[5] for e in experiments)  # none left running; all committed
    assert {e[3] for e in experiments if e[2] == 0} == {"heldout"}
    # Every episode's row links to its experiment, and its turns are all in the shard.
    outcomes = [json.loads(o) for (o,) in db.execute("SELECT outcome FROM completions")]
    linked = {o["experiment_id"] for o in outcomes}
    assert linked <= {e[0] for e in experiments} and len(linked) == len(outcomes)
    shard = pq.read_table(out / "latest" / "shards" / "round-0001" / "train-completions.parquet").to_pylist()
    assert len({r["trajectory_id"] for r in shard}) == 8 and max(r["step"] for r in shard) >= 1
    assert {r["weights_version"] for r in shard} == {0}
    git = subprocess.run(["git", "-C", str(out / "experiments"), "log", "--oneline"], capture_output=True, text=True)
    assert len(git.stdout.splitlines()) == len(experiments)
    status = subprocess.run(["git", "-C", str(out / "experiments"), "status", "--porcelain"], capture_output=True,
                            text=True)
    assert status.stdout == ""

    # Multi-turn credit: more trained turns than cycles; only a cycle's last turn is paid, and its
    # earlier turns learn from the discounted score.
    learner = rows[1]["learner"]
    assert learner["turns"] == len(shard) > rows[1]["train_samples"]
    trained = pq.read_table(out / "latest" / "shards" / "round-0001" / "learner-turns.parquet").to_pylist()
    assert len(trained) == learner["trained"] == learner["turns"] - learner["untrainable"] - learner["too_long"]
    assert {t["turn_id"] for t in trained} <= {f"{r['trajectory_id']}#{r['step']}" for r in shard}
    by_cycle = {}
    for t in trained:
        by_cycle.setdefault(t["trajectory_id"], []).append(t)
    assert any(len(turns) > 1 for turns in by_cycle.values())
    assert all(t["raw_reward"] == 0.0 for turns in by_cycle.values() for t in sorted(turns, key=lambda t: t["step"])[:-1])


def test_a_goals_file_without_train_goals_is_refused_for_learning_rounds_before_ray_starts(tmp_path):
    path = tmp_path / "goals.jsonl"
    path.write_text(json.dumps({"id": "held", "split": "heldout", "goal": "Count the primes below {n}.",
                                "params": {"n": {"int": [1000, 20000]}}, "reference": PRIMES.reference}) + "\n")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ouroboros", "run", "configs/smoke-run-experiment.yaml", "--rounds",
                           "1", "--out", str(out), "--set", f"env.goals_file={path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: env.goals_file '{path}' has nothing of split \"train\"") and "--rounds 0" in last
    assert not out.exists()  # refused before Ray, the recorder or a run directory
