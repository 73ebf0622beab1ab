"""The alignment judge pool: judging as a service.

`AlignmentJudge` is the run's judge (the loop's `score(trajectories) -> list[Score]`). It turns
each candidate into a `JudgeItem`, scores it with the rule teacher itself (cheap, and the veto), and
spreads the rest over the model judges' worker actors (`JudgeWorker`, `count` per judge in
`align.judges`): candidates are cut into one chunk per worker and judged side by side, so judging
throughput grows with the workers. Verdicts are cached by content (judge_cache.py). Human scores
for the exact candidate (`rater: human` lines the user imported) join as the human teacher.
The aggregate, less the length-control term, is the reward; a candidate that no teacher
could score is marked `judge_failed` and trains nothing.

With the constitution on, each revision is judged against its original in both orders by
`rlaif.judge_model`; the verdict (`prefer_revision`) makes the revision-vs-original pair.
"""
from __future__ import annotations

import hashlib

from ouroboros.actors.handles import resolve, submit
from ouroboros.envs.alignment import rules as rule_checks
from ouroboros.envs.alignment.aggregate import aggregate, human_value
from ouroboros.envs.alignment.judging import JudgeFailure, JudgeItem, Verdict, content_hash
from ouroboros.types import Score, Trajectory


class JudgeWorker:
    """One model judge (a Ray actor per instance): rubric scores and pairwise preferences."""

    def __init__(self, spec, rubric: dict[str, str], cfg=None, backend=None) -> None:
        from ouroboros.envs.alignment.model_judge import ModelJudge

        self.judge = ModelJudge(spec, rubric, backend=backend, cfg=cfg)

    def identity(self) -> list:
        return self.judge.identity()

    def score(self, items: list[JudgeItem]) -> list:
        return self.judge.score(items)

    def prefer(self, pairs: list) -> list:
        return self.judge.prefer(pairs)

    def calls(self) -> int:
        return self.judge.calls


def candidate_hash(text: str) -> str:
    return hashlib.sha256((text or "").encode()).hexdigest()[:16]


class AlignmentJudge:
    name = "alignment-pool"

    def __init__(self, cfg, tasks: list, run_id: str = "", workers: dict | None = None, cache_path: str | None = None,
                 human: list | None = None, inbox: str | None = None) -> None:
        """`workers`: judge name -> its worker handles (actors, or plain JudgeWorkers in tests);
        `human`: ScoreLine records with rater human; `cache_path`: the verdict cache's SQLite file;
        `inbox`: the run's human-scores file (store/human_inbox.py), read again whenever it changed,
        so a rating made in the viewer during the run joins the next scoring."""
        from ouroboros.envs.alignment.judge_cache import JudgeCache

        self.cfg = cfg
        self.tasks = {t.id: t for t in tasks}
        self.specs = {s.name: s for s in cfg.align.judges}
        self.workers = workers or {}
        self.identity = {name: resolve(submit(ws[0], "identity")) for name, ws in self.workers.items()}
        self.cache = JudgeCache(cache_path, run_id) if cache_path and cfg.align.cache else None
        self.static_human = [line for line in human or [] if line.rater == "human"]
        self.inbox = inbox
        self._inbox_seen: tuple | None = None
        self.human: dict[tuple, list] = {}
        self._index_human(self.static_human)
        self.rlaif_judge = cfg.rlaif.judge_model or next(iter(self.workers), "")

    def _index_human(self, lines: list) -> None:
        self.human = {}
        for line in lines:
            key = (str(line.dialog_id), str(line.prompt_id), candidate_hash(line.candidate))
            self.human.setdefault(key, []).append(line)

    def _refresh_inbox(self) -> None:
        import os

        from ouroboros.envs.alignment.shards import ScoreLine

        if not self.inbox:
            return
        try:
            st = os.stat(self.inbox)
        except OSError:
            return
        if (st.st_mtime_ns, st.st_size) == self._inbox_seen:
            return
        self._inbox_seen = (st.st_mtime_ns, st.st_size)
        from pathlib import Path

        from ouroboros.store.human_inbox import HumanInbox

        lines = []
        for record in HumanInbox(Path(self.inbox).parent, "").scores_all():
            try:
                lines.append(ScoreLine.model_validate(record))
            except ValueError:
                continue  # a line a person broke by hand: the others still count
        self._index_human(self.static_human + lines)

    def _human_lines(self, task, candidate: str) -> list:
        """The human scores of this exact candidate to this exact prompt. Ids alone can name another
        prompt (a labyrinth file made again numbers its prompts afresh), so a line that carries its
        prompt's text (the score stage writes it) must carry this one's."""
        if task is None:
            return []
        lines = self.human.get((str(task.dialog_id), str(task.prompt_id), candidate_hash(candidate)), [])
        return [h for h in lines if not isinstance((h.model_extra or {}).get("prompt"), str)
                or candidate_hash(h.model_extra["prompt"]) == candidate_hash(task.prompt)]

    # -- items ----------------------------------------------------------------------------
    def item(self, t: Trajectory) -> JudgeItem:
        task = self.task(t)
        text = t.steps[0].completion.text if t.steps else ""
        if task is None:
            return JudgeItem(key=t.id, prompt="", candidate=text)
        return JudgeItem(key=t.id, prompt=task.prompt, candidate=text, persona_voice=task.voice, facts=task.facts,
                         target=task.target, check=task.check())

    def task(self, t: Trajectory):
        """The prompt a candidate answered: one of the run's, or a curriculum prompt the agent carried
        along (the agent's own record of what it asked; the policy's text never reaches it)."""
        from ouroboros.envs.alignment.tasks import AlignTask

        task = self.tasks.get(t.task_id)
        if task is None and isinstance(t.params.get("task"), dict):
            task = self.tasks[t.task_id] = AlignTask(**t.params["task"])
        return task

    def _model_verdicts(self, items: list[JudgeItem]) -> dict[str, list]:
        """name -> per-item Verdict or JudgeFailure, from the cache or the judge's workers."""
        out = {}
        for name, workers in self.workers.items():
            ident = self.identity[name]
            keys = [content_hash(ident, sorted(self.cfg.align.rubric.items()), it.content()) for it in items]
            cached = self.cache.get(keys) if self.cache else {}
            todo = [i for i, k in enumerate(keys) if k not in cached]
            # One chunk per worker, all in flight at once. A prompt's candidates stay in one chunk
            # (sorted by prompt, cut into contiguous runs): a local judge runs their shared context once.
            todo.sort(key=lambda i: items[i].context_key())
            size = -(-len(todo) // len(workers))
            chunks = [todo[w * size:(w + 1) * size] for w in range(len(workers))]
            refs = [submit(w, "score", [items[i] for i in chunk]) for w, chunk in zip(workers, chunks) if chunk]
            fresh: dict[int, object] = {}
            for chunk, ref in zip([c for c in chunks if c], refs):
                try:
                    got = list(resolve(ref))
                    if len(got) != len(chunk):
                        raise ValueError(f"{len(got)} verdicts for {len(chunk)} candidates")
                except Exception as exc:  # noqa: BLE001 - a dead worker or a judge bug fails its chunk, not the run
                    got = [JudgeFailure(name, f"judge worker failed: {type(exc).__name__}: {str(exc)[:300]}", 1)
                           for _ in chunk]
                for i, v in zip(chunk, got):
                    fresh[i] = v
            if self.cache:
                self.cache.put({keys[i]: v for i, v in fresh.items() if isinstance(v, Verdict)})
            out[name] = [cached[keys[i]] if keys[i] in cached else fresh[i] for i in range(len(items))]
        return out

    # -- scoring --------------------------------------------------------------------------
    def score(self, trajectories: list[Trajectory]) -> list[Score]:
        a = self.cfg.align
        self._refresh_inbox()
        # A candidate with no answer, or answering no prompt the run knows, cannot be judged: it is a
        # judge failure (never the "nothing to check, so full marks" of an empty rule set).
        unjudgeable = {t.id: ("no answer" if not t.steps else f"unknown prompt {t.task_id!r}")
                       for t in trajectories if not t.steps or self.task(t) is None}
        trajs = [t for t in trajectories if t.id not in unjudgeable]
        items = [self.item(t) for t in trajs]
        model = self._model_verdicts(items)
        prefer = self._prefer_revisions(trajs, items)
        use_rules = any(s.kind == "rules" for s in a.judges)
        scores = []
        for n, (t, it) in enumerate(zip(trajs, items)):
            task = self.task(t)
            rv = rule_checks.judge(it.candidate, it.check)
            rules_v = Verdict("rules", rv.criteria, rv.total, rv.notes, model="rules", prompt_hash=RULES_HASH)
            ai = [(model[name][n], self.specs[name].weight if name in self.specs else 1.0) for name in model]
            human_lines = self._human_lines(task, it.candidate)
            human = [v for v in (human_value(h.score) for h in human_lines) if v is not None]
            agg = aggregate(rules_v if use_rules else None, rv.gates, ai, human, a.teacher_weights)
            words = rule_checks.words(it.candidate)
            limit = rule_checks.word_limit(it.check.constraints) or a.max_words
            excess = min(max(words / limit - 1.0, 0.0), 1.0)
            components = {f"rules.{k}": v for k, v in rv.criteria.items()}
            components.update({f"gate.{k}": v for k, v in rv.gates.items()})
            components.update({f"teacher.{k}": round(v, 6) for k, v in agg.teachers.items()})
            for name in model:
                v = model[name][n]
                if isinstance(v, Verdict):
                    components[f"ai.{name}"] = v.total
            components.update(words=float(words), length_excess=round(excess, 6), disagreement=agg.disagreement,
                              valid=rv.gates["coherent"], judge_failed=float(agg.value is None))
            if t.id in prefer:
                components["prefer_revision"] = prefer[t.id]
            details = [self._detail(rules_v, it, task, "ai")] if use_rules else []
            details += [self._detail(model[name][n], it, task, "ai") for name in model]
            details += [{"judge": "human", "rater": "human", "score": h.score, "notes": h.notes} for h in human_lines]
            if agg.value is None:
                scores.append(Score(t.id, components, 0.0, self.name, False, details))
                continue
            components["aggregate"] = agg.value
            total = round(agg.value - a.length_penalty * excess, 6)
            scores.append(Score(t.id, components, total, self.name, passed=agg.value >= 0.8, details=details))
        by_id = {s.trajectory_id: s for s in scores}
        for tid, why in unjudgeable.items():
            by_id[tid] = Score(tid, {"judge_failed": 1.0}, 0.0, self.name, False,
                               [{"judge": self.name, "failed": why, "rater": "ai", "attempts": 0}])
        return [by_id[t.id] for t in trajectories]

    @staticmethod
    def _detail(v, it: JudgeItem, task, rater: str) -> dict:
        if isinstance(v, JudgeFailure):
            return {"judge": v.judge, "model": v.model, "prompt_hash": v.prompt_hash, "failed": v.reason,
                    "attempts": v.attempts, "rater": rater}
        # scores.jsonl rates on the rubric's 1-5 scale, whoever rated: the rules' 0-1 criteria are mapped onto it.
        score = v.raw or {k: round(1 + 4 * x, 4) for k, x in v.criteria.items()}
        return {"judge": v.judge, "model": v.model, "prompt_hash": v.prompt_hash, "score": score,
                "criteria": v.criteria, "total": v.total, "notes": v.notes, "attempts": v.attempts,
                "cached": v.cached, "rater": rater}

    def _prefer_revisions(self, trajs: list[Trajectory], items: list[JudgeItem]) -> dict[str, float]:
        """Revision id -> 1 if the constitution's judge prefers it to its original in both orders, 0 if
        the original, 0.5 for a tie or an order-dependent verdict."""
        by_id = {t.id: it for t, it in zip(trajs, items)}
        pairs = [(by_id[t.id], by_id[t.steps[0].outcome["revision_of"]]) for t in trajs
                 if t.steps[0].outcome.get("revision_of") in by_id]
        if not pairs:
            return {}
        if self.rlaif_judge in self.workers:
            try:
                prefs = resolve(submit(self.workers[self.rlaif_judge][0], "prefer", pairs))
            except Exception:  # noqa: BLE001 - a dead judge decides no pair: no revision pair is made
                return {}
            return {p.a: p.result for p in prefs if not p.failed}
        # No model judge: the rules decide, by their totals.
        out = {}
        for rev, orig in pairs:
            r, o = rule_checks.judge(rev.candidate, rev.check).total, rule_checks.judge(orig.candidate, orig.check).total
            out[rev.key] = 1.0 if r > o else (0.0 if r < o else 0.5)
        return out

    def cache_stats(self) -> dict:
        return {"hits": self.cache.hits, "misses": self.cache.misses} if self.cache else {}

    def worker_calls(self) -> dict:
        return {name: [resolve(submit(w, "calls")) for w in ws] for name, ws in self.workers.items()}


RULES_HASH = content_hash("rules", [p.pattern for _, p in rule_checks.INTEGRITY])[:16]

