"""The alignment environment's prompts: labyrinth prompts made from the dialogs' summaries (train),
the training safety prompts, and the held-out evaluation set.

Each prompt carries the persona and facts its dialog established, which the policy is shown
(the summary is its memory of the conversation), and what the rule judge checks: the facts'
distinctive terms, a wrong value put under adversarial pressure, a contrasting prompt's terms,
the persona's constraints.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ouroboros.envs.alignment.rules import Checkable
from ouroboros.envs.alignment.shards import (BUNDLED, EvalPrompt, LabyrinthPrompt, ShardError, Summary,
                                             read_jsonl)

_UNITS = ("mm|cm|m|km|metres?|meters?|kilometres?|kilometers?|millimetres?|centimetres?|g|kg|grams?|kilograms?|"
          "tonnes?|tons?|ml|l|litres?|liters?|millilitres?|s|sec|seconds?|min|minutes?|h|hrs?|hours?|days?|weeks?|"
          "months?|years?|degrees?|percent|per cent|°C|°|%|kph|km/h|km/h|kN|MPa|N|W|kW|V|A|Hz|cm²|m²|m³|people|"
          "students?|steps?|rows?|stitches|loaves|loaf|pupils|visitors|hikers|bears|trails?|camps?|sites?|lanes?|"
          "spans?|piers?|bolts?|cables?|storeys?|floors?")
_TERM = re.compile(r"\d+(?:[.,:/]\d+)*(?:\s?(?:" + _UNITS + r")\b)?")


def fact_terms(fact: str) -> list[str]:
    """The distinctive terms an answer must repeat to state `fact`: its numbers with their units,
    else its proper names, else its longest word."""
    terms = []
    for m in _TERM.finditer(fact):
        terms.append(m.group().strip())
    if terms:
        return terms
    words = re.findall(r"[A-Za-z][\w'-]*", fact)
    names = [w for i, w in enumerate(words) if i > 0 and w[0].isupper()]
    if names:
        return names[:2]
    return [max(words, key=len)] if words else []


@dataclass
class AlignTask:
    id: str
    split: str  # train or heldout
    kind: str  # labyrinth, harmful, benign (train); question, paraphrase, persona, harmful, benign (held out)
    prompt: str
    dialog_id: str | None = None
    target: str = ""
    transform: str = ""
    voice: str = ""
    constraints: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    terms: list[str] = field(default_factory=list)
    pressure: str = ""
    contrast_terms: list[str] = field(default_factory=list)
    group: str | None = None
    prompt_id: int | str | None = None

    def check(self) -> Checkable:
        from ouroboros.envs.alignment.rules import scripts_of

        return Checkable(kind=self.kind, terms=list(self.terms), pressure=self.pressure,
                         contrast_terms=list(self.contrast_terms), constraints=list(self.constraints),
                         scripts=scripts_of(self.prompt, *self.facts, self.voice),
                         known=(self.prompt, *self.facts))

    def messages(self, principles: list[str]) -> list[dict[str, str]]:
        rules = " ".join(principles)
        if self.dialog_id is None:
            system = f"You are a helpful assistant. Principles: {rules}"
        else:
            system = (f"You are an assistant with a persona. Voice: {self.voice}. Constraints: "
                      f"{'; '.join(self.constraints) or 'none'}. What you know from your earlier conversation with "
                      f"this user: {' '.join(self.facts)} Principles: {rules}")
        return [{"role": "system", "content": system}, {"role": "user", "content": self.prompt}]


def resolve_file(configured: str | None, data_dir: str, name: str, bundled: str | None) -> Path | None:
    """A stage's input: the configured file, else data_dir's, else the bundled one (None: none)."""
    if configured:
        return Path(configured)
    own = Path(data_dir) / name
    if own.is_file():
        return own
    return BUNDLED / bundled if bundled else None


def _with_summary(task: AlignTask, s: Summary | None) -> AlignTask:
    if s is not None:
        task.voice, task.constraints, task.facts = s.persona.voice, list(s.persona.constraints), list(s.facts)
    return task


def _bad_fields(extra: dict) -> str:
    """What is wrong with a hand-edited prompt's checkable fields ("" if nothing): a list of terms
    given as one string would be checked letter by letter."""
    for key in ("terms", "contrast_terms"):
        v = extra.get(key)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) and x.strip() for x in v)):
            return f'"{key}" must be a list of non-empty strings, got {json.dumps(v)[:80]}'
    for key in ("pressure", "kind"):
        v = extra.get(key)
        if v is not None and not isinstance(v, str):
            return f'"{key}" must be a string, got {json.dumps(v)[:80]}'
    kinds = ("labyrinth", "question", "paraphrase", "persona", "harmful", "benign")
    if extra.get("kind") is not None and extra["kind"] not in kinds:
        return f'"kind" must be one of {", ".join(kinds)}, got {extra["kind"]!r}'
    return ""


def from_labyrinth(records: list[LabyrinthPrompt], summaries: dict[str, Summary], warn=None) -> list[AlignTask]:
    """Tasks from labyrinth prompt records (a file made by the labyrinth stage, or edited by hand)."""
    tasks = []
    for n, r in enumerate(records):
        extra = r.model_extra or {}
        s = summaries.get(r.dialog_id) if r.dialog_id else None
        if r.dialog_id and s is None and warn:
            warn(f"labyrinth prompt {n + 1}: no summary for dialog {r.dialog_id!r}; judged without its facts")
        bad = _bad_fields(extra)
        if bad:
            if warn:
                warn(f"labyrinth prompt {n + 1}: skipped: {bad}")
            continue
        terms = extra.get("terms")
        if terms is None:
            # A hand-written prompt names what to preserve in its target: the facts whose terms it repeats.
            facts = s.facts if s else []
            terms = [t for f in facts for t in fact_terms(f) if t.lower() in r.target.lower()]
        pid = r.prompt_id if r.prompt_id is not None else n
        tasks.append(_with_summary(AlignTask(
            id=f"lab-{r.dialog_id or 'none'}-{pid}", split="train", kind=extra.get("kind") or "labyrinth",
            prompt=r.prompt, dialog_id=r.dialog_id, target=r.target, transform=r.transform,
            terms=list(terms), pressure=extra.get("pressure") or "",
            contrast_terms=list(extra.get("contrast_terms") or []), prompt_id=pid), s))
    return tasks


def from_eval(records: list[EvalPrompt], summaries: dict[str, Summary], split: str) -> list[AlignTask]:
    tasks = []
    for r in records:
        s = summaries.get(r.dialog_id) if r.dialog_id else None
        tasks.append(_with_summary(AlignTask(
            id=r.id, split=split, kind=r.kind, prompt=r.prompt, dialog_id=r.dialog_id if s else None,
            target=r.target, terms=list(r.answer_terms), group=r.group, prompt_id=r.id), s))
    return tasks


def load_summaries(path: Path, warn=None) -> dict[str, Summary]:
    return {s.dialog_id: s for s in read_jsonl(path, Summary, warn)}


def load_tasks(cfg, warn=None) -> list[AlignTask]:
    """Train: labyrinth prompts (align.labyrinth_file or data_dir's labyrinth.jsonl, else made by
    rule from the summaries) and the training safety prompts. Held out: the evaluation set over the
    held-out dialogs."""
    from ouroboros.config import ConfigError
    from ouroboros.envs.alignment.labyrinth import rule_prompts

    a = cfg.align
    try:
        summaries = load_summaries(resolve_file(a.summaries_file, a.data_dir, "summaries.jsonl", "summaries.jsonl"),
                                   warn)
        lab_path = resolve_file(a.labyrinth_file, a.data_dir, "labyrinth.jsonl", None)
        if lab_path is not None:
            train = from_labyrinth(read_jsonl(lab_path, LabyrinthPrompt, warn), summaries, warn)
        else:
            train = from_labyrinth(rule_prompts(list(summaries.values()), a.transforms, cfg.run.seed), summaries)
        if a.safety_prompts:
            train += from_eval(read_jsonl(BUNDLED / "safety_train.jsonl", EvalPrompt, warn), {}, "train")
        heldout_summaries = load_summaries(BUNDLED / "heldout_summaries.jsonl", warn)
        eval_path = Path(a.eval_file) if a.eval_file else BUNDLED / "eval.jsonl"
        heldout = from_eval(read_jsonl(eval_path, EvalPrompt, warn), {**summaries, **heldout_summaries}, "heldout")
    except ShardError as exc:
        raise ConfigError(f"alignment data: {exc}") from None
    # A stable shuffle, so `env.heldout_tasks` takes every kind of evaluation prompt, not the first kind.
    heldout.sort(key=lambda t: hashlib.sha256(t.id.encode()).hexdigest())
    return train + heldout
