"""Recorder: the one writer of a run's records (SQLite rows, Parquet shards, summary.json).

DESIGN.md lists no store actor, but the driver must not pull batches into its
own process and SQLite wants a single writer, so trajectories and scores go by
reference to this actor, which writes them, builds the round's preference
pairs and hands back only small metrics and the pairs' ref.

Every row and shard it writes carries the run id, and the run's own files live under
`runs/<run id>/` (store/layout.py), so a run never replaces another's.
"""
from __future__ import annotations

import json
import time

from ouroboros.actors.handles import gather
from ouroboros.learn.pairs import build_pairs
from ouroboros.store.db import RunDB
from ouroboros.store.layout import RunPaths
from ouroboros.store.shards import write_shard
from ouroboros.store.summary import Summary
from ouroboros.types import COMPLETION_SCHEMA, PAIR_SCHEMA, Score, Trajectory, WeightsRef


class Recorder:
    def __init__(self, run_dir: str, run_id: str, name: str, config: dict) -> None:
        self.paths = RunPaths(run_dir, run_id).make()
        self.run_id = run_id
        self.db = RunDB(self.paths.db)
        self.db.start_run(run_id, name, config)
        self.summary = Summary(self.paths.summary, run_id)

    def start_round(self, round_: int, weights_version: int) -> None:
        self.db.upsert("rounds", [{"run_id": self.run_id, "round": round_, "weights_version": weights_version,
                                   "status": "running", "metrics": {}, "started_at": time.time(),
                                   "finished_at": None}])

    def record(self, round_: int, phase: str, trajectory_refs, score_refs, make_pairs: bool = False):
        """Store a phase's episodes; return (metrics, pairs). Called with num_returns=2 under Ray."""
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

        pairs = build_pairs(trajectories, scores, round_) if make_pairs else []
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
        return phase_metrics(trajectories, scores, len(pairs)), pairs

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

    def close(self, status: str) -> None:
        with self.db.conn:
            self.db.conn.execute("UPDATE rounds SET status='interrupted' WHERE run_id=? AND status='running'",
                                 (self.run_id,))
        self.db.finish_run(self.run_id, status)
        self.db.close()


def phase_metrics(trajectories: list[Trajectory], scores: list[Score], pairs: int) -> dict:
    """valid_rate: the mean of the judges' `valid` component (the share of valid replies, which
    for one-reply tasks is the share of episodes); pass_rate: episodes the judge marked passed."""
    n = len(trajectories)
    by_id = {s.trajectory_id: s for s in scores}
    valid = sum(by_id[t.id].components.get("valid", 0.0) for t in trajectories if t.id in by_id)
    passed = sum(1 for t in trajectories if t.id in by_id and by_id[t.id].passed)
    rewards = [by_id[t.id].total for t in trajectories if t.id in by_id]
    versions = sorted({s.completion.weights_version for t in trajectories for s in t.steps})
    return {
        "samples": n,
        "valid_rate": valid / n if n else 0.0,
        "pass_rate": passed / n if n else 0.0,
        "reward_mean": sum(rewards) / len(rewards) if rewards else 0.0,
        "tokens": sum(s.completion.completion_tokens for t in trajectories for s in t.steps),
        "turns": sum(len(t.steps) for t in trajectories),
        "weights_versions": versions,
        "pairs": pairs,
    }
