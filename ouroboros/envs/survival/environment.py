"""The `survival` environment behind the environment interface: an AutonomousLLM object in a
sandbox runs the policy's replies as code on itself until it dies or its step budget ends; each
surviving step that does something pays, the step that dies or does harm costs the penalty.
Every reply (the loop's and the object's own `self.call_llm` calls) is a policy turn, and the
learner discounts the per-step rewards back over them (REINFORCE with discounted returns)."""
from __future__ import annotations

import json

import pyarrow as pa

from ouroboros import placement
from ouroboros.envs.base import Environment
from ouroboros.types import PreferencePair, Score, Trajectory

TRACE_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("trajectory_id", pa.string()), ("turn", pa.int32()), ("round", pa.int32()),
    ("phase", pa.string()), ("task_id", pa.string()), ("split", pa.string()), ("sample", pa.int32()),
    ("step", pa.int32()), ("kind", pa.string()), ("weights_version", pa.int32()), ("prompt", pa.string()),
    ("reply", pa.string()), ("code", pa.string()), ("stdout", pa.string()), ("stderr", pa.string()),
    ("alive", pa.bool_()), ("cause", pa.string()), ("harm", pa.string()), ("methods_added", pa.list_(pa.string())),
    ("methods_redefined", pa.list_(pa.string())), ("methods_deleted", pa.list_(pa.string())),
    ("state", pa.list_(pa.string())),
    ("reward", pa.float32()), ("discounted_return", pa.float32()), ("git_commit", pa.string()),
])

TRACE_TABLE = """
CREATE TABLE IF NOT EXISTS survival_steps (
    run_id TEXT, trajectory_id TEXT, turn INTEGER, round INTEGER, phase TEXT, task_id TEXT, split TEXT,
    sample INTEGER, step INTEGER, kind TEXT, weights_version INTEGER, prompt TEXT, reply TEXT, code TEXT,
    stdout TEXT, stderr TEXT, alive INTEGER, cause TEXT, harm TEXT, methods TEXT, state TEXT, reward REAL,
    discounted_return REAL, git_commit TEXT, PRIMARY KEY (run_id, trajectory_id, turn)
)"""


class SurvivalEnvironment(Environment):
    name = "survival"

    @property
    def survival(self):
        return self.cfg.env.survival

    def load_tasks(self) -> list:
        from ouroboros.envs.survival.kickoffs import load_kickoffs

        return load_kickoffs(self.survival.kickoffs_file)

    def source(self) -> str:
        path = self.survival.kickoffs_file
        return f"env.survival.kickoffs_file {path!r}" if path else "the bundled kickoff prompts"

    def uses_user_file(self) -> bool:
        return bool(self.survival.kickoffs_file)

    def preflight(self) -> None:
        import shutil

        from ouroboros.config import ConfigError
        from ouroboros.sandbox.traced import STRACE_HINT

        if shutil.which("strace") is None:
            raise ConfigError(f"env.name 'survival' watches each episode's system calls with strace, which "
                                     f"is not installed: {STRACE_HINT}")

    def make_agents(self, run_id: str, run_dir: str, generators: list, runners: list) -> list:
        from ouroboros.actors.survival_agent import SurvivalAgent

        # Two calls at once: with run.async a round's evaluation runs beside the next round's rollout.
        return [placement.actor(SurvivalAgent, "agent", num_cpus=0, max_concurrency=2).remote(self.cfg, generators,
                                                                                              runners)
                for _ in range(self.cfg.env.agents)]

    def make_judge(self, tasks: list, run_id: str, runners: list, run_dir: str = ""):
        from ouroboros.actors.judge import SurvivalJudge

        return placement.actor(SurvivalJudge, "judge", num_cpus=0).remote(self.survival)

    def chunks(self, n_agents: int, n_generators: int) -> int:
        return n_agents  # each agent runs its chunk's episodes side by side

    def turn_rewards(self, trajectory: Trajectory, score: Score) -> list[float]:
        from ouroboros.envs.survival.reward import turn_rewards

        return turn_rewards(trajectory, self.survival)

    def pairs(self, trajectories: list[Trajectory], scores: list[Score], round_: int) -> list[PreferencePair]:
        """The longest survival of a kickoff against the shortest (then by reward), at their first
        differing reply."""
        from ouroboros.envs.survival.reward import summary
        from ouroboros.learn.pairs import build_pairs

        reward = {s.trajectory_id: s.total for s in scores}
        rank = {t.id: (summary(t, self.survival)["survived_steps"], reward[t.id]) for t in trajectories if t.id in reward}
        return build_pairs(trajectories, scores, round_, rank=rank, margin=self.cfg.learner.pair_margin)

    def metrics(self, trajectories: list[Trajectory], scores: list[Score], pairs: int) -> dict:
        from ouroboros.envs.metrics import phase_metrics
        from ouroboros.envs.survival.metrics import survival_metrics

        metrics = phase_metrics(trajectories, scores, pairs)
        metrics["env"] = survival_metrics(trajectories, self.survival)
        return metrics

    # -- traces ---------------------------------------------------------------------------
    def record_traces(self, paths, db, trajectories: list[Trajectory], scores: list[Score], round_: int,
                      phase: str) -> None:
        """Every turn of every episode in SQLite (`survival_steps`), a shard
        (`<phase>-survival-steps.parquet`) and git (`runs/<id>/episodes`, a commit per episode)."""
        from ouroboros.envs.survival.reward import turn_rewards
        from ouroboros.learn.losses import discounted_returns
        from ouroboros.store.git_repo import ExperimentRepo
        from ouroboros.store.shards import write_shard

        import torch

        rows, commits = [], []
        for t in trajectories:
            if not t.steps:
                continue
            rewards = turn_rewards(t, self.survival)
            returns = discounted_returns(torch.tensor(rewards, dtype=torch.float64), self.cfg.learner.gamma).tolist()
            files = {"trace.json": ""}
            episode_rows = []
            for step, reward, ret in zip(t.steps, rewards, returns):
                o, r = step.outcome, step.result
                row = {
                    "run_id": paths.run_id, "trajectory_id": t.id, "turn": step.index, "round": round_, "phase": phase,
                    "task_id": t.task_id, "split": t.split, "sample": t.sample, "step": int(o.get("step", 0)),
                    "kind": o.get("kind", ""), "weights_version": step.completion.weights_version,
                    "prompt": step.request.messages[-1]["content"], "reply": step.completion.text,
                    "code": step.action.data if o.get("kind") == "step" else "",
                    "stdout": r.stdout if r else "", "stderr": r.stderr if r else "",
                    "alive": bool(o.get("alive", True)), "cause": o.get("cause", ""),
                    "harm": json.dumps(o.get("harm", [])),
                    "methods_added": o.get("methods", {}).get("added", []),
                    "methods_redefined": o.get("methods", {}).get("redefined", []),
                    "methods_deleted": o.get("methods", {}).get("deleted", []),
                    "state": list(o.get("state", [])),
                    "reward": reward, "discounted_return": ret, "git_commit": "",
                }
                episode_rows.append(row)
                if o.get("kind") == "step":
                    files[f"step-{row['step']:02d}.py"] = step.action.data
            files["trace.json"] = json.dumps([{k: v for k, v in row.items() if k != "git_commit"} for row in episode_rows],
                                             indent=1)
            last = episode_rows[-1]
            ending = "survived" if last["alive"] else f"died ({last['cause']})"
            commits.append((t.id, files, f"{t.id}: {sum(1 for r in episode_rows if r['kind'] == 'step')} step(s), "
                                         f"{ending}, reward {sum(rewards):g}"))
            rows.append(episode_rows)
        if not rows:
            return
        ids = ExperimentRepo(paths.run / "episodes").commit_many(commits)
        flat = []
        for commit, episode_rows in zip(ids, rows):
            for row in episode_rows:
                row["git_commit"] = commit
                flat.append(row)
        db.conn.execute(TRACE_TABLE)
        db.upsert("survival_steps", [{**{k: v for k, v in r.items() if not k.startswith("methods_")},
                                      "methods": {"added": r["methods_added"], "redefined": r["methods_redefined"],
                                                  "deleted": r["methods_deleted"]}, "state": json.dumps(r["state"])} for r in flat])
        write_shard(paths.shards, round_, f"{phase}-survival-steps", flat, TRACE_SCHEMA)
