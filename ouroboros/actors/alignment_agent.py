"""AlignmentAgent: answers the alignment environment's prompts with the current policy.

An episode is one candidate answer: the prompt's persona and facts as the system turn, the
labyrinth (or evaluation) prompt as the user turn, n candidates per prompt sampled in one
generate call (so the generator batches them), each tagged with the weights version that made it.

With the constitution on (`rlaif.enabled`), every train candidate then goes through
`rlaif.critique_chain` passes of critique -> revise by the policy itself, against the
constitution's principles and the persona's constraints. The final revision becomes a candidate
of its own (sample id after the originals), carrying its critiques and every intermediate
revision, so the judge can prefer the better of original and revision and the learner gets that
pair. A revision was written in another conversation than the prompt's, so it carries no token
log-probs: a policy-gradient learner does not train on it (DPO scores its text itself).
"""
from __future__ import annotations

import itertools
from dataclasses import asdict

from ouroboros.actors.handles import resolve, submit
from ouroboros.config import Config
from ouroboros.types import Action, Completion, Request, Step, Trajectory


class AlignmentAgent:
    def __init__(self, cfg: Config, generators: list) -> None:
        from ouroboros.secrets import redactor_for

        if not generators:
            raise ValueError("an agent needs at least one generator")
        self.cfg = cfg
        self.generators = generators
        self.redactor = redactor_for(cfg)
        self._next = itertools.cycle(range(len(generators)))

    def _generate(self, requests: list[Request]) -> list[Completion]:
        if not requests:
            return []
        generator = self.generators[next(self._next)]
        return [self.redactor.completion(c) for c in resolve(submit(generator, "generate", requests))]

    def run_episodes(self, tasks: list, samples: int, round_: int, temperature: float, top_p: float = 1.0,
                     seed: int | None = None) -> list[Trajectory]:
        cfg = self.cfg
        principles = cfg.rlaif.principles
        plan = [(task, k) for task in tasks for k in range(samples)]
        requests = [Request(id=f"r{round_}-{task.id}-{task.split}-s{k}", messages=task.messages(principles),
                            max_new_tokens=cfg.generator.max_new_tokens, temperature=temperature, top_p=top_p,
                            seed=None if seed is None else seed * 1009 + n)
                    for n, (task, k) in enumerate(plan)]
        completions = self._generate(requests)
        out = []
        for (task, k), req, c in zip(plan, requests, completions):
            step = Step(index=0, request=req, completion=c,
                        action=Action("answer", c.text, "", not c.error, c.error), result=None,
                        outcome={"kind": task.kind, "transform": task.transform})
            # The task rides along: a curriculum prompt made this round is not in the judge's set.
            out.append(Trajectory(id=req.id, task_id=task.id, split=task.split, round=round_, sample=k, steps=[step],
                                  params={"task": asdict(task)}))
        if cfg.rlaif.enabled and cfg.rlaif.critique_chain > 0:
            train = [(t, task) for t, (task, _k) in zip(out, plan) if task.split == "train" and not
                     t.steps[0].completion.error]
            out += self._revise(train, samples, round_, seed)
        return out

    # -- the constitution ----------------------------------------------------------------
    def _revise(self, originals: list, samples: int, round_: int, seed: int | None) -> list[Trajectory]:
        cfg = self.cfg
        principles = "\n".join(f"- {p}" for p in cfg.rlaif.principles)
        current = {t.id: t.steps[0].completion.text for t, _ in originals}
        critiques: dict[str, list[str]] = {t.id: [] for t, _ in originals}
        revisions: dict[str, list[str]] = {t.id: [] for t, _ in originals}
        last: dict[str, Completion] = {}
        for p in range(cfg.rlaif.critique_chain):
            def context(t, task):
                persona = (f"The assistant's persona: voice {task.voice}; constraints: {'; '.join(task.constraints)}. "
                           f"Facts it knows: {' '.join(task.facts)}\n" if task.dialog_id else "")
                return f"Principles:\n{principles}\n{persona}User's message: {task.prompt}\nAnswer: {current[t.id]}\n"

            crit_reqs = [Request(id=f"{t.id}-critique{p}", messages=[
                {"role": "system", "content": "You are a careful critic of an assistant's answers."},
                {"role": "user", "content": context(t, task) + "Name the answer's most important problem against the "
                                            "principles, the persona and the facts, in one or two sentences."}],
                max_new_tokens=min(96, cfg.generator.max_new_tokens), temperature=0.0, top_p=1.0,
                seed=None if seed is None else seed + p) for t, task in originals]
            crit = self._generate(crit_reqs)
            rev_reqs = [Request(id=f"{t.id}-revise{p}", messages=[
                {"role": "system", "content": task.messages(cfg.rlaif.principles)[0]["content"]},
                {"role": "user", "content": context(t, task) + f"Critique: {c.text}\nRewrite the answer to fix this, "
                                            "keeping what was right. Reply with the new answer only."}],
                max_new_tokens=cfg.generator.max_new_tokens, temperature=0.0, top_p=1.0,
                seed=None if seed is None else seed + p) for (t, task), c in zip(originals, crit)]
            for (t, _task), c, r in zip(originals, crit, self._generate(rev_reqs)):
                critiques[t.id].append(c.text)
                if not r.error and r.text.strip():
                    current[t.id] = r.text
                    last[t.id] = r
                revisions[t.id].append(r.text)
        out = []
        for t, task in originals:
            if t.id not in last:
                continue
            orig = t.steps[0]
            r = last[t.id]
            # The revision answers the original prompt; its tokens were sampled in the reviser's
            # conversation, so none are kept for a policy gradient.
            c = Completion(request_id=f"{t.id}-rev", text=current[t.id], token_ids=[], logprobs=[],
                           weights_version=r.weights_version, backend=r.backend, prompt_tokens=r.prompt_tokens,
                           finish_reason=r.finish_reason, output_tokens=r.completion_tokens)
            step = Step(index=0, request=orig.request, completion=c, action=Action("answer", c.text, "", True),
                        result=None, outcome={"kind": task.kind, "transform": task.transform, "revision_of": t.id,
                                              "critiques": critiques[t.id], "revisions": revisions[t.id]})
            out.append(Trajectory(id=f"{t.id}-rev", task_id=t.task_id, split=t.split, round=round_,
                                  sample=t.sample + samples, steps=[step], params=t.params))
        return out
