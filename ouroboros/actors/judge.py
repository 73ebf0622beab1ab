"""Judge: rule and execution judges for the `tasks` environment.

The rule judge checks the reply's form (a valid `run` action); the execution
judge reads what the sandbox reported (the code ran, the share of hidden tests
passed). Components are kept apart in the store, and the total is their
weighted sum.
"""
from __future__ import annotations

from ouroboros.config import JudgeConfig
from ouroboros.types import Score, Trajectory


class TasksJudge:
    name = "tasks-rule+exec"

    def __init__(self, cfg: JudgeConfig) -> None:
        self.cfg = cfg

    def score_one(self, traj: Trajectory) -> Score:
        step = traj.steps[-1]
        valid = float(step.action.valid and step.action.name == "run")
        outcome = step.outcome or {}
        runs = float(valid and bool(outcome.get("ran")) and not (step.result and step.result.timed_out))
        total_tests = outcome.get("total") or 0
        tests = float(outcome.get("passed", 0)) / total_tests if valid and total_tests else 0.0
        components = {"valid": valid, "runs": runs, "tests": tests}
        total = self.cfg.valid_weight * valid + self.cfg.runs_weight * runs + self.cfg.tests_weight * tests
        return Score(trajectory_id=traj.id, components=components, total=round(total, 6), judge=self.name)

    def score(self, trajectories: list[Trajectory]) -> list[Score]:
        return [self.score_one(t) for t in trajectories]
