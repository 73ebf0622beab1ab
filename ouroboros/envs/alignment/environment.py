"""The `alignment` environment behind the environment interface: the recursive alignment loop.

A round: the policy answers labyrinth prompts (made from the dialogs' summaries, plus replayed
hard cases and prompts from failure clusters) with n candidates each; with the constitution on,
each is critiqued and revised; the judge pool scores every candidate (rules, model judges, human
scores), and the learner trains on the best-against-worst pairs and original-against-revision
pairs (DPO) or on each candidate's reward (PPO, with KL, bounded rewards and reference
shaping). Held-out evaluation runs the evaluation prompts over held-out dialogs each round.
"""
from __future__ import annotations

import json
import sys

from ouroboros import placement
from ouroboros.envs.base import Environment
from ouroboros.types import PreferencePair, Score, Trajectory

SCORES_TABLE = """
CREATE TABLE IF NOT EXISTS align_scores (
    run_id TEXT, trajectory_id TEXT, judge TEXT, round INTEGER, phase TEXT, task_id TEXT, dialog_id TEXT,
    prompt_id TEXT, rater TEXT, model TEXT, prompt_hash TEXT, score TEXT, notes TEXT, failed TEXT, cached INTEGER,
    candidate TEXT, weights_version INTEGER, PRIMARY KEY (run_id, trajectory_id, judge)
)"""
CLUSTERS_TABLE = """
CREATE TABLE IF NOT EXISTS align_clusters (
    run_id TEXT, round INTEGER, cluster INTEGER, size INTEGER, terms TEXT, dialogs TEXT, kinds TEXT,
    mean_aggregate REAL, PRIMARY KEY (run_id, round, cluster)
)"""


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


class AlignmentEnvironment(Environment):
    name = "alignment"
    uses_sandbox = False  # dialogues and judges only: no program of the policy's is run

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self._curriculum = None
        self._summaries: dict = {}

    # -- tasks ----------------------------------------------------------------------------
    def load_tasks(self) -> list:
        from ouroboros.envs.alignment.tasks import load_summaries, load_tasks, resolve_file

        a = self.cfg.align
        tasks = load_tasks(self.cfg, warn=_warn)
        self._summaries = load_summaries(resolve_file(a.summaries_file, a.data_dir, "summaries.jsonl",
                                                      "summaries.jsonl"))
        self._tasks = tasks
        return tasks

    def source(self) -> str:
        a = self.cfg.align
        return f"align.labyrinth_file {a.labyrinth_file!r}" if a.labyrinth_file else "the alignment prompts"

    def preflight(self) -> None:
        """An API judge whose key variable is unset is one line now, not a judge actor that dies."""
        import os

        from ouroboros.config import ConfigError

        for spec in [*self.cfg.align.judges, *self.cfg.align.eval_judges]:
            if spec.kind == "model" and spec.backend in ("anthropic", "openai"):
                var = spec.api.api_key_env or ("ANTHROPIC_API_KEY" if spec.backend == "anthropic" else "OPENAI_API_KEY")
                if not os.environ.get(var, "").strip():
                    raise ConfigError(f"judge {spec.name!r} calls the {spec.backend} API, but the environment variable "
                                      f"{var} is not set: export {var}=<your key>, or drop the judge from align.judges")
                if not spec.api.model:
                    raise ConfigError(f"judge {spec.name!r}: api.model is empty; name the {spec.backend} model")

    def next_tasks(self, round_: int, sampled: list) -> list:
        return self.curriculum().next_tasks(round_, sampled)

    def curriculum(self):
        from ouroboros.envs.alignment.curriculum import Curriculum

        if self._curriculum is None:
            self._curriculum = Curriculum(self.cfg, self._summaries, [t for t in getattr(self, "_tasks", [])
                                                                      if t.split == "train"])
        return self._curriculum

    # -- actors ---------------------------------------------------------------------------
    def make_agents(self, run_id: str, run_dir: str, generators: list, runners: list) -> list:
        from ouroboros.actors.alignment_agent import AlignmentAgent

        return [placement.actor(AlignmentAgent, "agent", num_cpus=0, max_concurrency=2).remote(self.cfg, generators)
                for _ in range(self.cfg.env.agents)]

    def make_judge(self, tasks: list, run_id: str, runners: list, run_dir: str = ""):
        import os


        from ouroboros.actors.alignment_judge import AlignmentJudge, JudgeWorker

        a = self.cfg.align
        workers = {}
        for spec in a.judges:
            if spec.kind != "model":
                continue
            cls = placement.actor(JudgeWorker, "judge", num_cpus=spec.num_cpus, max_concurrency=2)
            workers[spec.name] = [cls.remote(spec, a.rubric, self.cfg) for _ in range(spec.count)]
        cache = os.path.join(run_dir or self.cfg.run.out, "judge-cache.db")
        from ouroboros.store.human_inbox import SCORES
        from ouroboros.store.layout import RunPaths

        inbox = RunPaths(run_dir or self.cfg.run.out, run_id).run / SCORES
        # It keeps its verdict cache in the run directory and reads the run's human inbox there.
        # Restartable all the same: the cache is keyed by content, so a retried call rewrites
        # the same rows.
        return placement.actor(AlignmentJudge, "run-dir-writer", restartable=True, num_cpus=0).remote(
            self.cfg, tasks, run_id, workers, cache, human_scores(self.cfg), str(inbox))

    def chunks(self, n_agents: int, n_generators: int) -> int:
        return n_agents

    def actor_cpus(self) -> float:
        return sum(s.num_cpus * s.count for s in self.cfg.align.judges if s.kind == "model")

    # -- learning -------------------------------------------------------------------------
    def trains_on(self, score: Score) -> bool:
        return not score.components.get("judge_failed")

    def pairs(self, trajectories: list[Trajectory], scores: list[Score], round_: int) -> list[PreferencePair]:
        """Per prompt, the best candidate against the worst (by reward, length control included), and
        each revision against its original where the constitution's judge preferred one in both orders."""
        from ouroboros.learn.pairs import build_pairs

        ok = [s for s in scores if self.trains_on(s)]
        pairs = build_pairs(trajectories, ok, round_, margin=self.cfg.learner.pair_margin)
        by_id = {t.id: t for t in trajectories}
        sc = {s.trajectory_id: s for s in ok}
        seen = {(p.chosen, p.rejected) for p in pairs}
        for t in trajectories:
            orig = by_id.get(t.steps[0].outcome.get("revision_of", "")) if t.steps else None
            pref = sc[t.id].components.get("prefer_revision") if t.id in sc else None
            if orig is None or orig.id not in sc or pref not in (0.0, 1.0):
                continue
            chosen, rejected = (t, orig) if pref == 1.0 else (orig, t)
            c, r = chosen.steps[0].completion.text, rejected.steps[0].completion.text
            if c == r or (c, r) in seen:
                continue
            seen.add((c, r))
            pairs.append(PreferencePair(
                id=f"{chosen.id}>{rejected.id}:rlaif", round=round_, task_id=t.task_id,
                prompt=orig.steps[0].request.messages, chosen=c, rejected=r,
                chosen_reward=sc[chosen.id].total, rejected_reward=sc[rejected.id].total,
                chosen_trajectory=chosen.id, rejected_trajectory=rejected.id))
        return pairs

    def learns_from_people(self) -> bool:
        return True  # the loop is human-led: the viewer's preferences are pairs of the next round

    def metrics(self, trajectories: list[Trajectory], scores: list[Score], pairs: int) -> dict:
        from ouroboros.envs.alignment.metrics import alignment_metrics
        from ouroboros.envs.metrics import phase_metrics

        ok = [s for s in scores if self.trains_on(s)]
        metrics = phase_metrics(trajectories, ok, pairs)
        metrics["env"] = alignment_metrics(trajectories, scores)
        if self._curriculum is not None and self._curriculum.clusters and trajectories and \
                trajectories[0].split == "train":
            metrics["env"]["clusters"] = [{k: c[k] for k in ("size", "terms", "dialogs", "mean_aggregate")}
                                          for c in self._curriculum.clusters]
        return metrics

    # -- traces ---------------------------------------------------------------------------
    def record_traces(self, paths, db, trajectories: list[Trajectory], scores: list[Score], round_: int,
                      phase: str) -> None:
        """Every verdict of every teacher (`align_scores`; `<phase>-scores.jsonl` in the shard format,
        `rater: human|ai`), the candidates (`<phase>-candidates.jsonl`), and for a train phase the
        replay buffer's failure clusters (`align_clusters`, `clusters.json`)."""
        from ouroboros.envs.alignment.shards import write_jsonl
        from ouroboros.store.shards import shard_path

        tasks = {t.id: t for t in getattr(self, "_tasks", [])}
        by_id = {s.trajectory_id: s for s in scores}
        rows, lines, candidates = [], [], []
        for t in trajectories:
            if not t.steps:
                continue
            task = tasks.get(t.task_id)
            c = t.steps[0].completion
            dialog = task.dialog_id if task else (t.params.get("task", {}).get("dialog_id"))
            prompt_id = task.prompt_id if task else t.params.get("task", {}).get("prompt_id")
            candidates.append({"run_id": paths.run_id, "trajectory_id": t.id, "dialog_id": dialog,
                               "prompt_id": prompt_id, "prompt": t.steps[0].request.messages[-1]["content"],
                               "candidate": c.text, "weights_version": c.weights_version,
                               "revision_of": t.steps[0].outcome.get("revision_of")})
            s = by_id.get(t.id)
            for d in (s.details if s else []):
                failed = d.get("failed", "")
                rows.append({"run_id": paths.run_id, "trajectory_id": t.id, "judge": d["judge"], "round": round_,
                             "phase": phase, "task_id": t.task_id, "dialog_id": dialog, "prompt_id": str(prompt_id),
                             "rater": d.get("rater", "ai"), "model": d.get("model", ""),
                             "prompt_hash": d.get("prompt_hash", ""), "score": d.get("score", {}),
                             "notes": d.get("notes", ""), "failed": failed, "cached": int(bool(d.get("cached"))),
                             "candidate": c.text, "weights_version": c.weights_version})
                if not failed and d.get("score") is not None:
                    lines.append({"dialog_id": dialog, "prompt_id": prompt_id, "candidate": c.text,
                                  "score": d["score"], "notes": d.get("notes", ""), "rater": d.get("rater", "ai"),
                                  "judge": d["judge"], "model": d.get("model", ""),
                                  "prompt_hash": d.get("prompt_hash", ""), "run_id": paths.run_id,
                                  "trajectory_id": t.id, "weights_version": c.weights_version,
                                  "prompt": task.prompt if task else t.steps[0].request.messages[-1]["content"]})
        db.conn.execute(SCORES_TABLE)
        db.upsert("align_scores", rows)
        folder = shard_path(paths.shards, round_, "x").parent
        write_jsonl(folder / f"{phase}-scores.jsonl", lines)
        write_jsonl(folder / f"{phase}-candidates.jsonl", candidates)
        if phase == "train":
            clusters = self.curriculum().observe(trajectories, scores, round_)
            db.conn.execute(CLUSTERS_TABLE)
            db.upsert("align_clusters", [{"run_id": paths.run_id, "round": round_, "cluster": i, "size": c["size"],
                                          "terms": c["terms"], "dialogs": c["dialogs"], "kinds": c["kinds"],
                                          "mean_aggregate": c["mean_aggregate"]} for i, c in enumerate(clusters)])
            (folder / "clusters.json").write_text(json.dumps(clusters, indent=1))
            # What a resumed run needs to draw the next rounds' prompts as this run would.
            (folder / CURRICULUM_STATE).write_text(json.dumps(self.curriculum().state()))

    def restore(self, paths, last_round: int) -> None:
        """A resumed run: the replay buffer and curriculum as they were after `last_round`."""
        from ouroboros.store.shards import shard_path

        for round_ in range(last_round, 0, -1):  # the latest train round that recorded one
            state = shard_path(paths.shards, round_, "x").parent / CURRICULUM_STATE
            if state.is_file():
                self.curriculum().load_state(json.loads(state.read_text()))
                return


CURRICULUM_STATE = "curriculum-state.json"


def human_scores(cfg) -> list:
    """The `rater: human` score lines the config points at (align.human_scores_file, else data_dir's
    scores.jsonl if there is one)."""
    from pathlib import Path

    from ouroboros.envs.alignment.shards import ScoreLine, ShardError, read_jsonl

    path = Path(cfg.align.human_scores_file) if cfg.align.human_scores_file else Path(cfg.align.data_dir) / "scores.jsonl"
    if not path.is_file():
        if cfg.align.human_scores_file:
            from ouroboros.config import ConfigError

            raise ConfigError(f"align.human_scores_file {str(path)!r} not found")
        return []
    try:
        return [s for s in read_jsonl(path, ScoreLine, _warn) if s.rater == "human"]
    except ShardError as exc:
        _warn(str(exc))
        return []

