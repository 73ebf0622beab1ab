"""The `experiment` environment behind the environment interface: experiment cycles on research
questions drawn per round, judged on their execution and on whether a run computed the answer
they conclude. Pairs come from where two cycles of one goal first differ; every turn of a cycle
is a policy turn, and the cycle's score is paid on its last turn (discounted back by the learner)."""
from __future__ import annotations

from ouroboros import placement
from ouroboros.envs.base import Environment


class ExperimentEnvironment(Environment):
    name = "experiment"
    sandbox_sessions = True  # each cycle holds one sandbox session for its whole length

    def load_tasks(self) -> list:
        from ouroboros.envs.experiment.goals import load_goals

        # A user's goals file is read now, so a malformed line stops the run before Ray starts.
        return load_goals(path=self.cfg.env.goals_file)

    def source(self) -> str:
        return f"env.goals_file {self.cfg.env.goals_file!r}" if self.cfg.env.goals_file else "the bundled goals"

    def uses_user_file(self) -> bool:
        return bool(self.cfg.env.goals_file)

    def check_user_tasks(self, tasks: list, runners: list, reporter) -> None:
        """Refuse a user's goals whose references fail, or whose answers hardly change with their
        parameters, all at once, before round 0."""
        from ouroboros.envs.experiment.goals import GoalsError
        from ouroboros.envs.experiment.references import References, check_goals

        cfg = self.cfg
        reporter.message(f"checking the reference programs of {len(tasks)} goal(s) in the sandbox")
        references = References(runners, timeout_s=cfg.judge.experiment.reference_timeout_s,
                                parallel=cfg.sandbox.runners * cfg.sandbox.concurrency)
        refused = check_goals(tasks, references)
        if refused:
            raise GoalsError(f"{self.source()}: {len(refused)} goal(s) refused: " + "; ".join(refused))

    def make_agents(self, run_id: str, run_dir: str, generators: list, runners: list) -> list:
        from ouroboros.actors.experiment_agent import ExperimentAgent

        cfg = self.cfg
        # run_episodes runs its cycles on the agent's own threads; the second actor thread
        # serves `flush` while they run.
        agent_cls = placement.actor(ExperimentAgent, "run-dir-writer", num_cpus=0, max_concurrency=2)
        return [agent_cls.remote(cfg, run_id, run_dir, generators, runners, n * cfg.experiment.cycles_per_agent)
                for n in range(cfg.env.agents)]

    def make_judge(self, tasks: list, run_id: str, runners: list, run_dir: str = ""):
        from ouroboros.actors.judge import ExperimentJudge

        # The judge computes each instance's answer by running the goal's reference program in
        # the sandbox, on the run's runners (scratch execs, apart from every experiment's session).
        return placement.actor(ExperimentJudge, "judge", num_cpus=0).remote(self.cfg.judge.experiment, tasks, run_id,
                                                                            runners)

    def chunks(self, n_agents: int, n_generators: int) -> int:
        # One chunk per agent, which runs its cycles side by side; their turns meet in the
        # generators' batches.
        return n_agents

    def before_shutdown(self, agents: list, status: str) -> None:
        from ouroboros.experiments import flush_commits

        flush_commits(agents, status)

    def after_shutdown(self, run_dir: str, run_id: str) -> None:
        from ouroboros.experiments import close_experiments
        from ouroboros.store.experiments import ExperimentStore
        from ouroboros.store.layout import RunPaths

        paths = RunPaths(run_dir, run_id)
        store = ExperimentStore(paths.db)
        try:
            close_experiments(store, paths.experiments)
        finally:
            store.close()
