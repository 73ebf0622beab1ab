"""Recorder: the one writer of a run's records (SQLite rows, Parquet shards, summary.json).

DESIGN.md lists no store actor, but the driver must not pull batches into its
own process and SQLite wants a single writer, so trajectories and scores go by
reference to this actor, which writes them, builds the round's training batch (preference
pairs for DPO, policy turns for the policy gradients, as the run's environment forms them)
and hands back only small metrics and the batch's ref. It also writes what the learner
returns: the per-turn learner rows and each version's checkpoint.

Every row and shard it writes carries the run id, and the run's own files live under
`runs/<run id>/` (store/layout.py), so a run never replaces another's.
"""
from __future__ import annotations

import json
import time

from ouroboros.actors.handles import gather, resolve
from ouroboros.store.db import RunDB
from ouroboros.store.layout import RunPaths
from ouroboros.store.shards import write_shard
from ouroboros.store.summary import Summary
from ouroboros.types import (COMPLETION_SCHEMA, LEARNER_STEP_FIELDS, LEARNER_STEP_SCHEMA, LEARNER_TURN_SCHEMA,
                             PAIR_SCHEMA, Score, Trajectory, WeightsRef)


class Recorder:
    def __init__(self, run_dir: str, run_id: str, name: str, config: dict, env=None, algorithm: str = "dpo") -> None:
        """`env`: the run's environment (envs/base.py), which forms pairs, turn rewards and
        metrics; `algorithm`: what the learner trains on (dpo: pairs; else policy turns)."""
        if env is None:
            from ouroboros.envs.tasks.environment import TasksEnvironment
            from ouroboros.config import Config

            env = TasksEnvironment(Config())
        self.env = env
        self.algorithm = algorithm
        self.paths = RunPaths(run_dir, run_id).make()
        self.run_id = run_id
        self.db = RunDB(self.paths.db)
        self.db.start_run(run_id, name, config)
        self.summary = Summary(self.paths.summary, run_id)
        self.trackers = None
        if (config or {}).get("tracking"):
            from ouroboros.store.trackers import Trackers

            self.trackers = Trackers(config["tracking"], self.paths.run, run_id, config)

    def rewind(self, last_round: int, version: int) -> dict:
        """Drop what a resumed run redoes (ouroboros/resume.py): this run's rows, shards and summary
        entries of rounds after `last_round` (-1: all), and its weights rows and checkpoints after
        `version`. Rows of other runs in a shared database are never touched. Returns counts."""
        import shutil

        from ouroboros.learn.checkpoint import versions, version_dir

        dropped: dict[str, int] = {}
        tables = [name for (name,) in self.db.query("SELECT name FROM sqlite_master WHERE type='table'")]
        with self.db.conn:
            for table in tables:
                cols = {row[1] for row in self.db.query(f"PRAGMA table_info({table})")}
                if {"run_id", "round"} <= cols:
                    cur = self.db.conn.execute(f"DELETE FROM {table} WHERE run_id=? AND round>?", (self.run_id, last_round))
                    dropped[table] = cur.rowcount
            cur = self.db.conn.execute("DELETE FROM weights WHERE run_id=? AND version>?", (self.run_id, version))
            dropped["weights"] = cur.rowcount
        if self.paths.shards.is_dir():
            for d in self.paths.shards.iterdir():
                if d.name.startswith("round-") and d.name[6:].isdigit() and int(d.name[6:]) > last_round:
                    shutil.rmtree(d)
        for v in versions(self.paths.run):
            if v > version:
                shutil.rmtree(version_dir(self.paths.run, v))
        self.summary.keep_rounds(last_round)
        self.env.restore(self.paths, last_round)
        return dropped

    def start_round(self, round_: int, weights_version: int) -> None:
        self.db.upsert("rounds", [{"run_id": self.run_id, "round": round_, "weights_version": weights_version,
                                   "status": "running", "metrics": {}, "started_at": time.time(),
                                   "finished_at": None}])

    def record(self, round_: int, phase: str, trajectory_refs, score_refs, make_pairs: bool = False):
        """Store a phase's episodes; return (metrics, batch): the learner's batch when
        `make_pairs` (a train phase), else []. Called with num_returns=2 under Ray."""
        trajectories: list[Trajectory] = gather(trajectory_refs)
        scores: list[Score] = gather(score_refs)
        by_id = {s.trajectory_id: s for s in scores}
        completions, shard_rows, score_rows = [], [], []
        for t in trajectories:
            s = by_id.get(t.id)
            if s:
                score_rows.append({"trajectory_id": t.id, "run_id": self.run_id, "round": round_,
                                   "judge": s.judge, "components": s.components, "total": s.total})
            if not t.steps:  # a cycle that crashed before its first reply: its score says so
                continue
            # The DB keeps one row per episode, its last turn (an experiment's turns are in the
            # experiments and steps tables); the shard keeps every turn, for a learner.
            step = t.steps[-1]
            c, a, r, o = step.completion, step.action, step.result, step.outcome
            completions.append({
                "trajectory_id": t.id, "run_id": self.run_id, "round": round_, "phase": phase,
                "task_id": t.task_id, "split": t.split, "sample": t.sample, "request_id": c.request_id,
                "prompt": json.dumps(step.request.messages), "text": c.text, "weights_version": c.weights_version,
                "backend": c.backend, "prompt_tokens": sum(x.completion.prompt_tokens for x in t.steps),
                "completion_tokens": sum(x.completion.completion_tokens for x in t.steps),
                "finish_reason": c.finish_reason,
                "action": {"name": a.name, "data": a.data, "notes": a.notes}, "action_valid": a.valid,
                "action_error": a.error, "exec_result": r.to_dict() if r else None,
                "outcome": {**o, "turns": len(t.steps)},
            })
            for step in t.steps:
                c, a, r, o = step.completion, step.action, step.result, step.outcome
                shard_rows.append({
                    "run_id": self.run_id, "trajectory_id": t.id, "step": step.index, "round": round_, "task_id": t.task_id,
                    "split": t.split, "sample": t.sample, "prompt": json.dumps(step.request.messages),
                    "text": c.text, "token_ids": c.token_ids, "logprobs": c.logprobs,
                    "weights_version": c.weights_version, "action_valid": a.valid, "action_error": a.error,
                    "exit_code": r.exit_code if r else None, "tests_passed": int(o.get("passed", 0)),
                    "tests_total": int(o.get("total", 0)), "reward": s.total if s else None,
                })
        self.db.upsert("completions", completions)
        self.db.upsert("scores", score_rows)
        write_shard(self.paths.shards, round_, f"{phase}-completions", shard_rows, COMPLETION_SCHEMA)

        self.env.record_traces(self.paths, self.db, trajectories, scores, round_, phase)
        pairs = self.env.pairs(trajectories, scores, round_) if make_pairs else []
        if make_pairs and self.algorithm == "dpo":
            pairs += self.env.human_pairs(self.paths, self.db, round_)
        if make_pairs:
            self.db.upsert("pairs", [{
                "id": p.id, "run_id": self.run_id, "round": round_, "task_id": p.task_id, "prompt": p.prompt,
                "chosen": p.chosen, "rejected": p.rejected, "chosen_reward": p.chosen_reward,
                "rejected_reward": p.rejected_reward, "chosen_trajectory": p.chosen_trajectory,
                "rejected_trajectory": p.rejected_trajectory} for p in pairs])
            write_shard(self.paths.shards, round_, "pairs", [{
                "run_id": self.run_id, "id": p.id, "round": round_, "task_id": p.task_id, "prompt": json.dumps(p.prompt),
                "chosen": p.chosen, "rejected": p.rejected, "chosen_reward": p.chosen_reward,
                "rejected_reward": p.rejected_reward} for p in pairs], PAIR_SCHEMA)
        metrics = self.env.metrics(trajectories, scores, len(pairs))
        if not make_pairs:
            return metrics, []
        if self.algorithm == "dpo":
            return metrics, pairs
        from ouroboros.learn.rollouts import policy_turns

        return metrics, policy_turns(trajectories, scores, self.env)

    def next_tasks(self, round_: int, sampled: list) -> list:
        """A round's train tasks as the environment's replay and curriculum make them."""
        return self.env.next_tasks(round_, sampled)

    def record_learning(self, round_: int, rows) -> int:
        """The learner's per-turn rows of a round (learner step, learner and generator log-probs,
        clipped and masked tokens) as `learner-turns.parquet`; returns how many."""
        rows = gather(rows)
        write_shard(self.paths.shards, round_, "learner-turns", [{"run_id": self.run_id, **r} for r in rows],
                    LEARNER_TURN_SCHEMA)
        return len(rows)

    def record_learner_steps(self, round_: int, steps: list[dict]) -> int:
        """One row per optimizer step of a round (loss, gradient norm, KL, clip fraction, learning
        rate) as `learner-steps.parquet`, and to the trackers against the learner step."""
        write_shard(self.paths.shards, round_, "learner-steps",
                    [{"run_id": self.run_id, "round": round_, **{k: s.get(k) for k in LEARNER_STEP_FIELDS}}
                     for s in steps], LEARNER_STEP_SCHEMA)
        if self.trackers is not None:
            self.trackers.log_steps(steps)
        return len(steps)

    def write_checkpoint(self, version: int, files) -> str:
        """A published version's checkpoint (learn/checkpoint.py), under the run's checkpoints/."""
        from ouroboros.learn.checkpoint import write

        files = resolve(files)
        return str(write(self.paths.run, version, files))

    def record_weights(self, weights: WeightsRef) -> None:
        self.db.upsert("weights", [{"run_id": self.run_id, "version": weights.version, "kind": weights.kind,
                                    "checksum": weights.checksum, "num_bytes": weights.num_bytes,
                                    "base_model": weights.base_model, "published_at": time.time()}])

    def finish_round(self, row: dict) -> None:
        with self.db.conn:
            self.db.conn.execute(
                "UPDATE rounds SET status='done', metrics=?, finished_at=? WHERE run_id=? AND round=?",
                (json.dumps(row), time.time(), self.run_id, row["round"]))
        self.summary.add_round(row)
        if self.trackers is not None:
            self.trackers.log(row)

    def close(self, status: str) -> None:
        with self.db.conn:
            self.db.conn.execute("UPDATE rounds SET status='interrupted' WHERE run_id=? AND status='running'",
                                 (self.run_id,))
        self.db.finish_run(self.run_id, status)
        self.db.close()
        if self.trackers is not None:
            self.trackers.close(status)
