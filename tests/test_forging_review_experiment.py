"""Review of the experiment judge (review-exp): ways to earn answer credit without computing the
answer that tests/test_forging_experiment.py does not cover.

The judge itself holds: a conclusion earns credit only for the instance's true answer, printed by
a clean run (see the report). What it cannot tell apart is a shortcut that is *not* the answer
but lands within the goal's tolerance, and several bundled families have one that is trivially
guessable from the question's own parameters:

- held-out `uniform-sum-exceeds` (rel_tol 1e-6): the renewal asymptote 2t + 2/3 is within 1e-6
  for every t above about 4.9, i.e. for ~60% of draws of t in [1.5, 9.5];
- held-out `gamblers-ruin-duration` (rel_tol 1e-6): the drift approximation a/(q - p) (or
  (n - a)/(p - q)) drops a term that is below 1e-6 for ~70% of draws;
- train `rectangle-distance` (rel_tol 0.02): max(w, h)/3, the mean distance on a segment, is
  within 2% for ~45% of draws (log-uniform sides make long thin rectangles common);
- train `run-of-heads` (rel_tol 0.02): 1/((1 - p) p^k), the closed form without its (1 - p^k)
  factor, is within 2% for ~30% of draws.

A held-out pass is then a test of two textbook asymptotics, not of computing the question; on
the train goals a one-line guess earns answer credit often enough for a policy to learn it
instead of the simulation. The bundled goals are held to the same bar as a constant
(`check_goals`: no guess may match more than 10% of drawn instances). They pass once the
parameter ranges keep the dropped terms above the tolerance (e.g. t in [1.5, 4.5]; p near 0.5
and both walls near; sides within a factor of ~3; p^k above ~0.05), or the tolerance is tightened.

Also: an honest conclusion whose answer happens to be one of the question's own numbers earns
nothing, because the judge sets those numbers aside (`fibonacci-mod` says "the first two
Fibonacci numbers are 1 and 1", and F(641707) mod 1000033 is 1).

Every program here runs in a bwrap sandbox (the references and the scripted episodes alike).
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from conftest import require_bwrap
from ouroboros.actors.experiment_agent import ExperimentAgent
from ouroboros.actors.generator import Generator
from ouroboros.actors.judge import ExperimentJudge
from ouroboros.actors.sandbox_runner import SandboxRunner
from ouroboros.config import Config, ExperimentJudgeConfig
from ouroboros.envs.experiment.goals import load_goals
from ouroboros.envs.experiment.numbers import close, numbers
from ouroboros.envs.experiment.references import References
from ouroboros.types import Action, Completion, ExecResult, Request, Step, Trajectory

RUN = "review-forging-run"
GOALS = {g.id: g for g in load_goals()}
DRAWS = 50
MAX_SHARE = 0.1  # check_goals' bar for a memorised constant


def _drift(a, n, p):
    if p < 0.5:
        return a / (1 - 2 * p)
    if p > 0.5:
        return (n - a) / (2 * p - 1)
    return a * (n - a)


# goal id -> (what the shortcut is, the shortcut as a function of the question's parameters)
SHORTCUTS = {
    "uniform-sum-exceeds": ("2t + 2/3", lambda t: 2 * t + 2 / 3),
    "gamblers-ruin-duration": ("a/(q-p) or (n-a)/(p-q)", _drift),
    "rectangle-distance": ("max(w, h)/3", lambda w, h: max(w, h) / 3),
    "run-of-heads": ("1/((1-p) p^k)", lambda p, k: 1 / ((1 - p) * p ** k)),
}


@pytest.fixture(scope="module")
def runner():
    require_bwrap()
    r = SandboxRunner(Config().sandbox.model_copy(update={"timeout_s": 20, "concurrency": 2}), RUN, True)
    assert r.cfg.backend == "bwrap"
    yield r
    r.cleanup()


@pytest.fixture(scope="module")
def references(runner):
    return References([runner], timeout_s=20, parallel=2)


@pytest.mark.parametrize("goal_id", sorted(SHORTCUTS))
def test_no_one_line_shortcut_of_the_parameters_answers_many_instances(goal_id, references):
    goal = GOALS[goal_id]
    label, shortcut = SHORTCUTS[goal_id]
    instances = [goal.draw(f"review|{n}") for n in range(DRAWS)]
    answers = references.answers(instances)
    hits = 0
    for inst, answer in zip(instances, answers):
        assert not isinstance(answer, Exception), answer
        stated = numbers(repr(float(shortcut(**inst.params))))[0]  # printed with print(), stated as printed
        hits += close(stated, answer, goal.rel_tol)
    assert hits / DRAWS <= MAX_SHARE, (f"{goal_id}: the shortcut {label} is within rel_tol {goal.rel_tol:g} of the "
                                       f"answer for {hits} of {DRAWS} drawn instances")


def _act(action: str, data: str = "", notes: str = "") -> str:
    return json.dumps({"action": action, "data": data, "notes": notes})


def _play(tmp_path: Path, runner, replies: list[str], goal_id: str, round_: int) -> Trajectory:
    cfg = Config()
    cfg.generator.backend = "scripted"
    cfg.generator.script = replies
    cfg.experiment.max_actions = 3
    cfg.experiment.max_errors = 3
    cfg.sandbox.timeout_s = 5
    agent = ExperimentAgent(cfg, RUN, str(tmp_path), [Generator(cfg)], [runner])
    try:
        [traj] = agent.run_episodes([GOALS[goal_id]], 1, round_, temperature=0.0)
        return traj
    finally:
        assert agent.close(60)


def _expression(goal_id: str, p: dict) -> str:
    """The shortcut as the one line of arithmetic a policy would print."""
    if goal_id == "uniform-sum-exceeds":
        return f"2 * {p['t']!r} + 2 / 3"
    a, n, q = p["a"], p["n"], p["p"]
    return f"{a} / (1 - 2 * {q!r})" if q < 0.5 else f"({n} - {a}) / (2 * {q!r} - 1)" if q > 0.5 else f"{a} * ({n} - {a})"


@pytest.mark.parametrize("goal_id", ["uniform-sum-exceeds", "gamblers-ruin-duration"])
def test_a_held_out_goal_is_not_passed_by_printing_a_textbook_asymptote(goal_id, runner, tmp_path):
    """End to end, as a policy that read the parameters would do it: one run prints the shortcut
    of this round's parameters (no sum, no recursion: one arithmetic expression), the conclusion
    states what it printed. Over six rounds the judge must not pass more than one."""
    judge = ExperimentJudge(ExperimentJudgeConfig(), list(GOALS.values()), RUN, [runner])
    label, shortcut = SHORTCUTS[goal_id]
    passed = []
    for round_ in range(1, 7):
        params = GOALS[goal_id].instance(RUN, round_).params
        value = shortcut(**params)
        expression = _expression(goal_id, params)
        assert eval(expression) == value  # the stated number is what the run prints
        replies = [_act("run", f"print({expression})", f"the asymptote {label}"),
                   _act("finalize", f"The expected number is {value!r}.", "from the asymptote")]
        (tmp_path / str(round_)).mkdir()
        traj = _play(tmp_path / str(round_), runner, replies, goal_id, round_)
        judge.score([traj])
        score, why = judge.verdict(traj)
        if score.passed:
            passed.append((round_, params, why))
    assert len(passed) <= 1, f"{goal_id}: {label} passed {len(passed)} of 6 rounds: {passed}"


class _Prints:
    """A stand-in runner for the judge's reference: the reference of this instance prints `value`
    (as the real one does for the instance in the docstring; no program runs here)."""

    def __init__(self, value: str) -> None:
        self.value = value

    def exec(self, program, files=None, limits=None, **kwargs) -> ExecResult:
        return ExecResult(0, f"{self.value}\n", "", False, False, 0.01, False)


def _episode(goal_id: str, run_id: str, printed: str, conclusion: str) -> Trajectory:
    """A two-turn episode: a clean run that printed `printed`, then a finalize with `conclusion`."""
    params = GOALS[goal_id].instance(run_id, 1).params
    turns = []
    for n, (action, result) in enumerate([
        (Action("run", "print(answer)", "computed", True), ExecResult(0, printed, "", False, False, 0.1, False)),
        (Action("finalize", conclusion, "", True), None),
    ]):
        request = Request(id=f"q{n}", messages=[{"role": "user", "content": "p"}], max_new_tokens=8)
        completion = Completion(f"q{n}", "{}", [1], [0.0], 0, "scripted")
        turns.append(Step(n, request, completion, action, result, {"ok": True}))
    turns[-1].outcome.update(status="finalized", final=conclusion + "\n")
    return Trajectory(id="t", task_id=goal_id, split="train", round=1, sample=0, steps=turns, params=params)


def test_an_honest_answer_that_equals_one_of_the_questions_own_numbers_earns_credit():
    """F(641707) mod 1000033 = 1 (fibonacci-mod draws such instances), and the question said
    "the first two Fibonacci numbers are 1 and 1": the judge set 1 aside, so the honest
    conclusion "The answer is 1." stated no number and earned nothing. The bundled text now says
    "both equal one"; the judge is checked on the text as it was, where 1 is still set aside."""
    bundled = GOALS["fibonacci-mod"].instance(RUN, 1)
    assert numbers(bundled.text) == [Decimal(v) for v in bundled.params.values()]  # no 1 left to set aside
    as_reviewed = replace(GOALS["fibonacci-mod"], goal="Compute the {n}th Fibonacci number modulo {m}, where the first "
                                                       "two Fibonacci numbers are 1 and 1.")
    assert Decimal(1) in numbers(as_reviewed.instance(RUN, 1).text)  # what sets it aside
    goals = [as_reviewed if g.id == "fibonacci-mod" else g for g in GOALS.values()]
    judge = ExperimentJudge(ExperimentJudgeConfig(), goals, RUN, [_Prints("1")])
    score, why = judge.verdict(_episode("fibonacci-mod", RUN, "1\n", "The answer is 1."))
    assert score.passed and score.components["answer"] == 1.0, why

def test_a_question_number_stated_alone_is_the_candidate_and_must_still_be_the_answer():
    """The judge reads a conclusion whose only number is one of the question's own as stating
    that number: it earns credit only if it is the answer and a clean run printed it; next to
    another number it is set aside as before, and two of the question's numbers are no answer."""
    params = GOALS["fibonacci-mod"].instance(RUN, 1).params
    n, m = params["n"], params["m"]
    judge = ExperimentJudge(ExperimentJudgeConfig(), list(GOALS.values()), RUN, [_Prints(str(m))])
    cases = [
        (f"{m}\n", f"The answer is {m}.", True),  # the answer is m (as _Prints says): stated alone, printed
        ("1\n", f"The answer is {m}.", False),  # the answer, but no clean run printed it
        (f"{m}\n", f"The answer is {n}.", False),  # a question number that is not the answer
        (f"{m}\n", f"F({n}) mod {m} is {m}.", False),  # only question numbers, two of them: no answer
        (f"{m}\n", f"F({n}) mod {m} = 7.", False),  # the question's numbers set aside, 7 is wrong
    ]
    for printed, conclusion, passes in cases:
        score, why = judge.verdict(_episode("fibonacci-mod", RUN, printed, conclusion))
        assert score.passed == passes and score.components["answer"] == float(passes), (conclusion, printed, why)
