"""The environment interface: what the loop and the learner need from an environment.

In the spirit of an Inspect `Task` or a Gym env, an environment provides its train and
held-out tasks, the agents that run its episodes, the judge that scores them, how preference
pairs and per-turn returns are formed from scored episodes, and its per-round metrics. The
loop (`ouroboros/loop.py`) and the learner call only this, so neither branches on an
environment's name; `environment(cfg)` in `ouroboros/envs/__init__.py` picks the class.

An environment object is built from the run's config and holds nothing else, so it pickles
cheaply to the actors that need it (the recorder forms pairs and metrics with it).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from ouroboros.config import Config
from ouroboros.types import PreferencePair, Score, Trajectory


class Environment(ABC):
    """One kind of episode. Subclasses set `name` and implement the abstract methods."""

    name: str = ""
    # SandboxRunners of this environment serve long-lived sessions (start their spares at once).
    sandbox_sessions: bool = False
    # Whether its episodes or judges run programs at all: a run of an environment that runs none
    # starts no SandboxRunner and needs no sandbox on the host.
    uses_sandbox: bool = True

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    # -- tasks -------------------------------------------------------------------
    @abstractmethod
    def load_tasks(self) -> list:
        """Every task of both splits (`.split` is "train" or "heldout"). Runs in the driver before
        Ray starts, so a malformed user file stops the run at once."""

    @abstractmethod
    def source(self) -> str:
        """Where the tasks come from, for messages ("env.tasks_file 'x.jsonl'")."""

    def check_user_tasks(self, tasks: list, runners: list, reporter) -> None:
        """Refuse, before round 0, a user's task set whose references fail in the sandbox.
        Called only when the config names a user's file; the bundled sets are checked by CI."""

    def uses_user_file(self) -> bool:
        return False

    def preflight(self) -> None:
        """Refuse, before Ray starts, a host that lacks what this environment needs (raise a
        user error that says what to install)."""

    # -- actors ------------------------------------------------------------------
    @abstractmethod
    def make_agents(self, run_id: str, run_dir: str, generators: list, runners: list) -> list:
        """`env.agents` Ray actor handles, each with `run_episodes(tasks, samples, round, temperature,
        top_p, seed) -> list[Trajectory]`."""

    @abstractmethod
    def make_judge(self, tasks: list, run_id: str, runners: list, run_dir: str = ""):
        """A Ray actor handle with `score(trajectories) -> list[Score]`. `run_dir`: the run directory, for
        what a judge keeps across runs (a verdict cache)."""

    def actor_cpus(self) -> float:
        """Ray CPUs this environment's own actors reserve beyond the agents (judge actors), which a
        local Ray must advertise."""
        return 0.0

    def chunks(self, n_agents: int, n_generators: int) -> int:
        """How many pieces one phase's tasks are cut into (one `run_episodes` call each)."""
        return min(n_generators, n_agents)

    def next_tasks(self, round_: int, sampled: list) -> list:
        """The train tasks of `round_`, given the ones the loop sampled; an environment with a replay
        buffer or a curriculum changes them. Called in the recorder (which has seen every scored
        round so far, through `record_traces`)."""
        return sampled

    # -- what learning uses -----------------------------------------------------
    def trains_on(self, score: Score) -> bool:
        """Whether a scored episode may train the policy (a judge failure is recorded, not learned from)."""
        return True

    def pairs(self, trajectories: list[Trajectory], scores: list[Score], round_: int) -> list[PreferencePair]:
        from ouroboros.learn.pairs import build_pairs

        return build_pairs(trajectories, scores, round_, margin=self.cfg.learner.pair_margin)

    def human_pairs(self, paths, db, round_: int) -> list[PreferencePair]:
        """Preference pairs people made in the viewer since the last training round (the run's human
        inbox, store/human_inbox.py), for this round's batch, each exactly once (its id is its
        rating's, and the pairs already stored for this run are skipped). Ratings stay annotations
        unless the environment learns from people (`learns_from_people`)."""
        if not self.learns_from_people():
            return []
        from ouroboros.store.human_inbox import HumanInbox

        used = {r[0] for r in db.query("SELECT id FROM pairs WHERE run_id=? AND id LIKE 'human:%'", (paths.run_id,))}
        return HumanInbox(paths.run, paths.run_id).new_pairs(used, round_)

    def learns_from_people(self) -> bool:
        """Whether the viewer's pairwise ratings join the DPO batches: an opt-in here
        (`env.human_ratings: pairs`); the alignment environment always does."""
        return self.cfg.env.human_ratings == "pairs"

    def turn_rewards(self, trajectory: Trajectory, score: Score) -> list[float]:
        """The reward each turn earned, in order. The default pays the episode's total on its last
        turn (the judge scores whole episodes); an environment with per-step rewards overrides it."""
        rewards = [0.0] * len(trajectory.steps)
        if rewards:
            rewards[-1] = score.total
        return rewards

    def record_traces(self, paths, db, trajectories: list[Trajectory], scores: list[Score], round_: int,
                      phase: str) -> None:
        """Store what this environment traces beyond the completions and scores (the recorder calls
        it, as the run's one writer, with the run's `RunPaths` and database)."""

    def metrics(self, trajectories: list[Trajectory], scores: list[Score], pairs: int) -> dict:
        from ouroboros.envs.metrics import phase_metrics

        return phase_metrics(trajectories, scores, pairs)

    # -- the end of a run -------------------------------------------------------
    def restore(self, paths, last_round: int) -> None:
        """A resumed run (the recorder calls it after dropping the interrupted round): bring back
        what this environment kept in memory across rounds, as it was after `last_round`, from
        what `record_traces` stored."""

    def before_shutdown(self, agents: list, status: str) -> None:
        """Runs while the actors still live (an environment's agents may hold unflushed work)."""

    def after_shutdown(self, run_dir: str, run_id: str) -> None:
        """Runs once every actor is gone."""
