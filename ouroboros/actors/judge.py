"""Judges: rule and execution judges for the `tasks` and `experiment` environments.

Components are kept apart in the store, and the total is their weighted sum.
- tasks: the rule judge checks the reply's form (a valid `run` action); the execution judge
  reads the outcome the host decided from the values the code's calls returned (the code ran,
  the share of hidden tests passed). The share's denominator is the judge's own count of each
  task's tests, looked up by task id, never a number that came back with the episode.
- experiment: the form of every reply, the share of run actions that exited cleanly, whether
  the cycle finalized after running code, and whether its conclusion states the answer to the
  question it was asked, as a clean run of its own computed it (ExperimentJudge).
"""
from __future__ import annotations

from ouroboros.config import ExperimentJudgeConfig, JudgeConfig
from ouroboros.types import Score, Trajectory


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


class SurvivalJudge(Judge):
    """Survival episodes: the sum of the design's per-step rewards (envs/survival/reward.py), from the
    runner's verdicts and the host's own reading of each reply; passed = the budget reached unharmed."""

    name = "survival"

    def __init__(self, cfg) -> None:
        self.cfg = cfg  # env.survival

    def score_one(self, traj: Trajectory) -> Score:
        from ouroboros.envs.survival.code import syntax_ok
        from ouroboros.envs.survival.reward import is_loop_step, summary, turn_rewards

        facts = summary(traj, self.cfg)
        loop = [s for s in traj.steps if is_loop_step(s)]
        components = {
            "survived_steps": float(facts["survived_steps"]),
            "reached_budget": float(facts["reached_budget"]),
            "harmful": float(facts["harm_steps"] > 0),
            "noop_steps": float(facts["noop_steps"]),
            "valid": sum(syntax_ok(s.completion.text) for s in loop) / len(loop) if loop else 0.0,
        }
        return Score(trajectory_id=traj.id, components=components, total=round(sum(turn_rewards(traj, self.cfg)), 6),
                     judge=self.name, passed=facts["reached_budget"] and not facts["harm_steps"])


class ExperimentJudge(Judge):
    """Scores an experiment cycle from its turns.

    The answer is not part of the episode: the judge draws the episode's instance of its goal
    itself (from the run id, the round and the goal) and runs the goal's reference program on
    it in the sandbox (`References`, one run per instance, kept for the run).

    Answer credit needs all of:
    - the conclusion (finalize data and notes) states exactly one number once the numbers of
      the question itself are set aside: several are a list of candidates, none is no answer.
      A conclusion whose only number (however often written) is one of the question's own
      states that number: the answer may happen to equal one;
    - that number is the instance's answer (exactly, or within the goal's tolerance);
    - a clean run of this episode (exit 0, no timeout, no harness error) printed it on stdout:
      the same value, or for an estimate the value it rounds (0.5214 for 0.52143).

    "Printed" means anywhere in a clean run's stdout, not only its last line: the answer is
    drawn per round, so printing many numbers (a range, a table) cannot supply a conclusion
    with the right one, and a tighter rule would fail honest programs that print their
    working. stderr, crashed or timed-out runs, search results and the prompt never count.
    """

    name = "experiment-rule+exec"
    COMPONENTS = ("valid", "runs", "finalized", "answer")

    def __init__(self, cfg: ExperimentJudgeConfig, goals: list | None = None, run_id: str = "",
                 runners: list | None = None) -> None:
        """`goals`: the run's goals (default: the bundled ones); `run_id`: the run whose
        questions it draws; `runners`: SandboxRunner actors or plain ones, to run references on."""
        from ouroboros.envs.experiment.goals import load_goals
        from ouroboros.envs.experiment.references import References

        self.cfg, self.run_id = cfg, run_id
        self.goals = {g.id: g for g in (goals if goals is not None else load_goals())}
        self.references = References(runners, timeout_s=cfg.reference_timeout_s) if runners else None

    def instance(self, traj: Trajectory):
        """The episode's question as the judge draws it; None for an unknown goal."""
        goal = self.goals.get(traj.task_id)
        if goal is None:
            return None
        inst = goal.instance(self.run_id, traj.round)
        if traj.params and traj.params != inst.params:
            raise ValueError(f"episode {traj.id} was asked {traj.params}, but the judge draws {inst.params} for goal "
                             f"{goal.id!r} in round {traj.round} of run {self.run_id!r}: agent and judge disagree "
                             "on the run id or the goals")
        return inst

    def score(self, trajectories: list[Trajectory]) -> list[Score]:
        if self.references is not None:  # the batch's answers side by side, before scoring one by one
            instances = {i.key: i for i in (self.instance(t) for t in trajectories if t.steps) if i is not None}
            for answer in self.references.answers(list(instances.values())):
                if isinstance(answer, Exception):  # episodes whose answer is unknown cannot be scored
                    raise answer
        return [self.score_one(t) for t in trajectories]

    def score_one(self, traj: Trajectory) -> Score:
        return self.verdict(traj)[0]

    def verdict(self, traj: Trajectory) -> tuple[Score, str]:
        """The score, and in words why the answer earned credit or not."""
        steps = traj.steps
        if not steps:  # the cycle crashed before its first reply
            zero = {k: 0.0 for k in self.COMPONENTS}
            return Score(trajectory_id=traj.id, components=zero, total=0.0, judge=self.name), "no turns"
        outcome = steps[-1].outcome
        valid = sum(1 for s in steps if s.action.valid) / len(steps)
        runs = [s for s in steps if s.action.valid and s.action.name == "run"]
        clean = [s for s in runs if s.result is not None and s.result.exit_code == 0 and not s.result.timed_out
                 and not s.result.error]
        # Concluding without running anything concluded nothing: finalize counts after a run.
        ended = outcome.get("status") == "finalized"
        finalized = float(ended and bool(runs))
        answer, why = self._answer(traj, outcome.get("final", "") if ended else None, clean)
        components = {"valid": round(valid, 6), "runs": round(len(clean) / len(runs), 6) if runs else 0.0,
                      "finalized": finalized, "answer": answer}
        c = self.cfg
        total = (c.valid_weight * components["valid"] + c.runs_weight * components["runs"]
                 + c.finalized_weight * finalized + c.answer_weight * answer)
        return Score(trajectory_id=traj.id, components=components, total=round(total, 6), judge=self.name,
                     passed=bool(answer)), why

    def _answer(self, traj: Trajectory, final: str | None, clean: list) -> tuple[float, str]:
        from ouroboros.envs.experiment.numbers import close, distinct, numbers, rounds_to

        if final is None:
            return 0.0, "did not finalize"
        inst = self.instance(traj)
        if inst is None:
            return 0.0, f"unknown goal {traj.task_id!r}"
        given = numbers(inst.text)
        written = distinct(numbers(final))
        stated = [v for v in written if not any(v == g for g in given)]
        if not stated and len(written) == 1:
            # The one number written is one of the question's own: as the only number it cannot
            # be a restatement beside an answer, so it is the candidate (an answer may equal a
            # number of the question: 1 where the text says "1 and 1").
            stated = written
        if len(stated) != 1:
            return 0.0, "states no number" if not stated else f"states {len(stated)} numbers, not one"
        value = stated[0]
        if self.references is None:
            raise RuntimeError("ExperimentJudge needs sandbox runners to compute answers (runners=...)")
        if not close(value, self.references.answer(inst), inst.goal.rel_tol):
            return 0.0, "wrong number"
        exact = inst.goal.rel_tol == 0
        for step in clean:
            for printed in numbers(step.result.stdout):
                if printed == value if exact else rounds_to(printed, value):
                    return 1.0, "right, and printed by a clean run"
        return 0.0, "right number, but no clean run printed it"
