"""Judges: rule and execution judges for the `tasks` and `experiment` environments.

Components are kept apart in the store, and the total is their weighted sum.
- tasks: the rule judge checks the reply's form (a valid `run` action); the execution judge
  reads the outcome the host decided from the values the code's calls returned (the code ran,
  the share of hidden tests passed). The share's denominator is the judge's own count of each
  task's tests, looked up by task id, never a number that came back with the episode.
- experiment: the form of every reply, the share of run actions that exited cleanly, whether
  the cycle finalized after running code, whether its conclusion quotes a number a successful
  run printed (grounded), and whether it states the goal's known answer as a run measured it.
"""
from __future__ import annotations

import math
import re

from ouroboros.config import ExperimentJudgeConfig, JudgeConfig
from ouroboros.types import Score, Trajectory

_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")


class Judge:
    """Scores each trajectory on its own; subclasses say how (`score_one`)."""

    name = "judge"

    def score_one(self, traj: Trajectory) -> Score:
        raise NotImplementedError

    def score(self, trajectories: list[Trajectory]) -> list[Score]:
        return [self.score_one(t) for t in trajectories]


class TasksJudge(Judge):
    name = "tasks-rule+exec"

    def __init__(self, cfg: JudgeConfig, tasks: list | None = None) -> None:
        """`tasks`: the run's task set (the bundled one if None); the judge keeps their test counts."""
        from ouroboros.envs.tasks import load_tasks

        self.cfg = cfg
        self.totals = {t.id: len(t.tests) for t in (tasks if tasks is not None else load_tasks())}

    def score_one(self, traj: Trajectory) -> Score:
        step = traj.steps[-1]
        valid = float(step.action.valid and step.action.name == "run")
        outcome = step.outcome or {}
        runs = float(valid and bool(outcome.get("ran")) and not (step.result and step.result.timed_out))
        total_tests = self.totals.get(traj.task_id, 0)
        passed = outcome.get("passed", 0)
        passed = min(passed, total_tests) if type(passed) is int and passed > 0 else 0
        tests = passed / total_tests if valid and total_tests else 0.0
        components = {"valid": valid, "runs": runs, "tests": tests}
        total = self.cfg.valid_weight * valid + self.cfg.runs_weight * runs + self.cfg.tests_weight * tests
        return Score(trajectory_id=traj.id, components=components, total=round(total, 6), judge=self.name,
                     passed=tests == 1.0)

def numbers(text: str) -> list[float]:
    """The numbers written in `text` ("9,592", "3.1416", "1e5"), as floats."""
    out = []
    for match in _NUMBER.finditer(text or ""):
        try:
            value = float(match.group(0).replace(",", ""))
        except ValueError:
            continue
        if math.isfinite(value):
            out.append(value)
    return out




class ExperimentJudge(Judge):
    """Scores an experiment cycle from its turns; the goal's answer is looked up here, by id,
    so it never travels with the episode the policy produced."""

    name = "experiment-rule+exec"
    MAX_STATED = 3

    def __init__(self, cfg: ExperimentJudgeConfig, goals: dict | None = None) -> None:
        from ouroboros.envs.experiment.goals import load_goals

        self.cfg = cfg
        self.goals = goals if goals is not None else {g.id: g for g in load_goals()}

    def score_one(self, traj: Trajectory) -> Score:
        steps = traj.steps
        if not steps:  # the cycle crashed before its first reply
            zero = {k: 0.0 for k in ("valid", "runs", "finalized", "grounded", "answer")}
            return Score(trajectory_id=traj.id, components=zero, total=0.0, judge=self.name)
        outcome = steps[-1].outcome
        valid = sum(1 for s in steps if s.action.valid) / len(steps)
        runs = [s for s in steps if s.action.valid and s.action.name == "run"]
        clean = [s for s in runs if s.result is not None and s.result.exit_code == 0 and not s.result.timed_out
                 and not s.result.error]
        # Concluding without running anything concluded nothing: finalize counts after a run.
        ended = outcome.get("status") == "finalized"
        finalized = float(ended and bool(runs))
        stated = numbers(outcome.get("final", "")) if ended else []
        goal = self.goals.get(traj.task_id)
        # A conclusion is grounded when it quotes a number a clean run printed, not one it made up.
        # Numbers the goal itself states, and 0, 1, 2, say nothing about what was measured.
        given = set(numbers(goal.goal)) if goal is not None else set()
        measured = [a for a in stated if a not in given and not (a.is_integer() and abs(a) <= 2)]
        printed = [v for s in clean for v in numbers(s.result.stdout)]
        found = [a for a in measured if any(math.isclose(a, b, rel_tol=1e-3) for b in printed)]
        grounded = float(bool(found))
        # The answer counts when the conclusion states it and a run printed it: a guess earns
        # nothing, and so does a list of candidates (more than MAX_STATED distinct numbers).
        answer = float(goal is not None and len(set(measured)) <= self.MAX_STATED
                       and any(goal.matches(v) for v in found))
        components = {"valid": round(valid, 6), "runs": round(len(clean) / len(runs), 6) if runs else 0.0,
                      "finalized": finalized, "grounded": grounded, "answer": answer}
        c = self.cfg
        total = (c.valid_weight * components["valid"] + c.runs_weight * components["runs"]
                 + c.finalized_weight * finalized + c.grounded_weight * grounded + c.answer_weight * answer)
        return Score(trajectory_id=traj.id, components=components, total=round(total, 6), judge=self.name,
                     passed=bool(answer))
