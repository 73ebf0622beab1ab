"""The `tasks` environment behind the environment interface: one reply per episode, the
reply's code called in the sandbox, hidden tests decided on the host."""
from __future__ import annotations

from ouroboros import placement
from ouroboros.envs.base import Environment


class TasksEnvironment(Environment):
    name = "tasks"

    def load_tasks(self) -> list:
        from ouroboros.envs.tasks import load_tasks

        # A user's task set is read and its tests compiled here, before Ray starts.
        return load_tasks(path=self.cfg.env.tasks_file)

    def source(self) -> str:
        return f"env.tasks_file {self.cfg.env.tasks_file!r}" if self.cfg.env.tasks_file else "the bundled task set"

    def uses_user_file(self) -> bool:
        return bool(self.cfg.env.tasks_file)

    def check_user_tasks(self, tasks: list, runners: list, reporter) -> None:
        from ouroboros.envs.tasks.references import check_references

        check_references(tasks, runners, self.cfg.sandbox, self.source())

    def make_agents(self, run_id: str, run_dir: str, generators: list, runners: list) -> list:
        from ouroboros.actors.agent import TasksAgent

        cfg = self.cfg
        # Two calls at once: with run.async a round's evaluation runs beside the next round's rollout.
        return [placement.actor(TasksAgent, "agent", num_cpus=0, max_concurrency=2).remote(
                generators, runners, cfg.generator.max_new_tokens, cfg)
                for _ in range(cfg.env.agents)]

    def make_judge(self, tasks: list, run_id: str, runners: list, run_dir: str = ""):
        from ouroboros.actors.judge import TasksJudge

        return placement.actor(TasksJudge, "judge", num_cpus=0).remote(self.cfg.judge, tasks)

    def chunks(self, n_agents: int, n_generators: int) -> int:
        # One chunk per generator: generation dominates a round, and a generator is fastest on one
        # large batch (sandbox execs take milliseconds, so there is little to overlap them with).
        return min(n_generators, n_agents)
