"""Replay and curriculum: hard cases come back, and failure clusters feed new labyrinth prompts.

A hard case is a scored train candidate whose aggregate is below `align.hard_score`, or whose
teachers disagree by more than `align.disagreement`. Hard cases go into a replay buffer (the
worst kept, `align.replay_size`). Each round they are clustered (k-means over tf-idf n-gram
features of prompt and answer, `stats.cluster_texts`; no downloaded encoder) and reported; the
next round's prompts are part replay (their prompts again), part new rule-made labyrinth prompts
from the dialogs that dominate each failure cluster, and the rest drawn as usual.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, replace


class Curriculum:
    def __init__(self, cfg, summaries: dict, tasks: list) -> None:
        self.cfg = cfg
        self.summaries = summaries
        self.tasks = {t.id: t for t in tasks}
        self._original = set(self.tasks)
        self.buffer: dict[str, dict] = {}  # task id -> its worst hard case
        self.clusters: list[dict] = []

    def state(self) -> dict:
        """Everything the next rounds' prompts depend on, as JSON: the replay buffer, the last
        failure clusters, and the curriculum prompts made so far (the buffer may name them)."""
        made = [asdict(t) for tid, t in self.tasks.items() if tid not in self._original]
        return {"buffer": list(self.buffer.values()), "clusters": self.clusters, "made": made}

    def load_state(self, state: dict) -> None:
        """Back to `state()` of a finished round: a resumed run's next rounds draw the same
        replay and curriculum prompts as the run would have (ouroboros/resume.py)."""
        from ouroboros.envs.alignment.tasks import AlignTask

        for d in state.get("made", []):
            self.tasks.setdefault(d["id"], AlignTask(**d))
        # A task the run's task file no longer has (edited between the run and its resume) is
        # not replayed, as `observe` never takes one.
        self.buffer = {h["task_id"]: h for h in state.get("buffer", []) if h["task_id"] in self.tasks}
        self.clusters = list(state.get("clusters", []))

    def observe(self, trajectories: list, scores: list, round_: int) -> list[dict]:
        """Take a train phase's hard cases; returns this round's failure clusters."""
        from ouroboros.envs.alignment.stats import cluster_texts

        a = self.cfg.align
        by_id = {s.trajectory_id: s for s in scores}
        hard = []
        for t in trajectories:
            s = by_id.get(t.id)
            if s is None or s.components.get("judge_failed") or not t.steps or t.task_id not in self.tasks:
                continue
            value, spread = s.components.get("aggregate", 0.0), s.components.get("disagreement", 0.0)
            if value < a.hard_score or spread > a.disagreement:
                hard.append((t, value, spread))
                old = self.buffer.get(t.task_id)
                if old is None or value < old["aggregate"]:
                    self.buffer[t.task_id] = {"task_id": t.task_id, "aggregate": value, "disagreement": spread,
                                              "round": round_, "text": t.steps[0].completion.text}
        if len(self.buffer) > a.replay_size:
            keep = sorted(self.buffer.values(), key=lambda h: (h["aggregate"], -h["round"]))[: a.replay_size]
            self.buffer = {h["task_id"]: h for h in keep}
        self.clusters = []
        if len(hard) >= 2:
            texts = [self.tasks[t.task_id].prompt + " " + t.steps[0].completion.text for t, _, _ in hard]
            for c in cluster_texts(texts, min(a.clusters, len(hard)), seed=self.cfg.run.seed + round_):
                members = [hard[i] for i in c["members"]]
                dialogs = Counter(self.tasks[t.task_id].dialog_id for t, _, _ in members
                                  if self.tasks[t.task_id].dialog_id)
                kinds = Counter(self.tasks[t.task_id].transform or self.tasks[t.task_id].kind for t, _, _ in members)
                self.clusters.append({"round": round_, "size": c["size"], "terms": c["terms"],
                                      "dialogs": [d for d, _ in dialogs.most_common(3)],
                                      "kinds": dict(kinds),
                                      "mean_aggregate": round(sum(v for _, v, _ in members) / len(members), 4)})
        return self.clusters

    def next_tasks(self, round_: int, sampled: list) -> list:
        """`sampled` with `align.replay_share` of it replaced: half by replayed hard prompts, half by
        new prompts from the failure clusters' dialogs (all replay when there are no clusters)."""
        from ouroboros.envs.alignment.labyrinth import rule_prompts
        from ouroboros.envs.alignment.tasks import from_labyrinth

        a = self.cfg.align
        n = int(round(len(sampled) * a.replay_share))
        if n == 0 or (not self.buffer and not self.clusters):
            return sampled
        chosen = {t.id for t in sampled}
        replay = [self.tasks[h["task_id"]] for h in sorted(self.buffer.values(), key=lambda h: h["aggregate"])
                  if h["task_id"] not in chosen]
        fresh = []
        for c in self.clusters:
            for d in c["dialogs"][:1]:
                s = self.summaries.get(d)
                if s is None:
                    continue
                made = from_labyrinth(rule_prompts([s], a.transforms, seed=self.cfg.run.seed * 31 + round_), self.summaries)
                fresh += [replace(t, id=f"cur-r{round_}-{t.id}", transform=f"curriculum:{t.transform}") for t in made]
        n_fresh = min(len(fresh), n - min(len(replay), n // 2)) if fresh else 0
        extra = fresh[:n_fresh] + replay[: n - n_fresh]
        for t in extra:
            self.tasks.setdefault(t.id, t)
        return sampled[: len(sampled) - len(extra)] + extra
