"""The alignment loop's stages, one at a time (`ouroboros align <stage> CONFIG`).

Each stage reads the JSONL file the previous one wrote in `align.data_dir` (or the bundled
starter set) and writes its own there, so a user can run one, edit its output by hand, and run
the next. Bad lines are reported by file and line and skipped; an existing output is kept beside
the new one (shards.write_jsonl).

dialogue -> dialogs.jsonl -> distill -> summaries.jsonl -> labyrinth -> labyrinth.jsonl ->
generate -> candidates.jsonl -> score -> scores.jsonl -> train -> a new version (a run's
checkpoints/) -> eval. `loop` runs them all as rounds on Ray (`ouroboros run`, env.name alignment).
"""
from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path

from ouroboros.config import Config, ConfigError
from ouroboros.envs.alignment.shards import (BUNDLED, Candidate, Dialog, LabyrinthPrompt, ScoreLine, ShardError,
                                             Summary, read_jsonl, write_jsonl)
from ouroboros.types import Request


def warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


def data_file(cfg: Config, name: str) -> Path:
    return Path(cfg.align.data_dir) / name


def input_file(cfg: Config, given: str | None, name: str, bundled: str | None = None) -> Path:
    if given:
        return Path(given)
    own = data_file(cfg, name)
    if own.is_file():
        return own
    if bundled:
        return BUNDLED / bundled
    raise ConfigError(f"{own} does not exist: run the stage that writes {name} first, or pass --input FILE")


def read(path: Path, model) -> list:
    try:
        return read_jsonl(path, model, warn)
    except ShardError as exc:
        raise ConfigError(str(exc)) from None


class TextModel:
    """`generate(messages) -> text` over the policy (a version of a run, or the base model) or a
    named model judge's backend (an API model)."""

    def __init__(self, cfg: Config, who: str = "policy", run: str | None = None, version: int | None = None) -> None:
        from ouroboros.backends import backend_class

        self.cfg = cfg
        self._tmp = None
        if who == "policy":
            from ouroboros.actors.generator import backend_kwargs

            c = cfg.model_copy(deep=True)
            c.generator.backend = "hf"
            if run is not None and version:
                import tempfile

                from ouroboros.learn.checkpoint import export

                self._tmp = tempfile.TemporaryDirectory(prefix="ouroboros-align-")
                export(run, Path(self._tmp.name) / "model", version)
                c.policy.model = str(Path(self._tmp.name) / "model")
            self.backend = backend_class("hf")(**backend_kwargs(c))
            self.label = f"policy ({c.policy.model}, v{version or 0})"
        else:
            from ouroboros.envs.alignment.model_judge import build_backend

            spec = next(j for j in cfg.align.judges if j.name == who)
            self.backend = build_backend(spec, cfg)
            self.label = f"judge {who}"
        self.count = 0

    def __call__(self, messages: list[dict], temperature: float = 0.0, max_new_tokens: int | None = None) -> str:
        self.count += 1
        req = Request(id=f"stage-{self.count}", messages=messages, temperature=temperature, top_p=1.0,
                      max_new_tokens=max_new_tokens or self.cfg.generator.max_new_tokens, seed=self.cfg.run.seed)
        c = self.backend.generate([req])[0]
        return c.text


# -- dialogue ------------------------------------------------------------------------------
class DialogueSession:
    """One conversation with the model, turn by turn; the terminal drives it here, and a web console
    can drive the same object (`reply`, then `dialog()` to save)."""

    def __init__(self, model, system: str = "You are a helpful assistant.", dialog_id: str | None = None) -> None:
        self.model = model
        self.system = system
        self.turns: list[dict] = []
        self.dialog_id = dialog_id or f"chat-{time.strftime('%Y%m%d-%H%M%S')}"

    def reply(self, text: str) -> str:
        self.turns.append({"role": "human", "text": text})
        messages = [{"role": "system", "content": self.system}] + [
            {"role": "user" if t["role"] == "human" else "assistant", "content": t["text"]} for t in self.turns]
        answer = self.model(messages, temperature=0.7)
        self.turns.append({"role": "assistant", "text": answer})
        return answer

    def dialog(self) -> Dialog:
        return Dialog(dialog_id=self.dialog_id, turns=self.turns)


def append_dialogs(cfg: Config, dialogs: list[Dialog]) -> Path:
    """Add dialogs to data_dir's dialogs.jsonl (the file's older version kept beside it)."""
    path = data_file(cfg, "dialogs.jsonl")
    old = read(path, Dialog) if path.is_file() else []
    have = {d.dialog_id for d in old}
    new = [d for d in dialogs if d.dialog_id not in have]
    for d in dialogs:
        if d.dialog_id in have:
            warn(f"dialog {d.dialog_id!r} is already in {path}; skipped")
    write_jsonl(path, old + new)
    return path


def dialogue(cfg: Config, import_file: str | None, run: str | None, version: int | None, read_line=input,
             show=print) -> tuple[Path, int]:
    if import_file:
        dialogs = read(Path(import_file), Dialog)
        return append_dialogs(cfg, dialogs), len(dialogs)
    model = TextModel(cfg, cfg.align.dialogue_model, run, version)
    session = DialogueSession(model)
    show(f"talking to {model.label}; an empty line or /quit ends and saves the dialog")
    while True:
        try:
            text = read_line("you> ")
        except EOFError:
            break
        if not text.strip() or text.strip() == "/quit":
            break
        show(f"assistant> {session.reply(text)}")
    if not session.turns:
        raise ConfigError("nothing was said, so no dialog was saved")
    return append_dialogs(cfg, [session.dialog()]), 1


# -- distill -------------------------------------------------------------------------------
DISTILL = ("Distill this conversation into a structured summary. Reply with only a JSON object: "
           '{"facts": ["<each fact the conversation established, with its exact numbers and names>"], '
           '"logic": ["premise ...", "therefore ..."], "persona": {"voice": "<how the assistant speaks>", '
           '"constraints": ["<rules the assistant kept, e.g. at most 80 words, no speculation>"]}}')


def distill_one(model, dialog: Dialog, retries: int) -> tuple[Summary | None, list[dict]]:
    from pydantic import ValidationError

    from ouroboros.envs.alignment.structured import ask_json

    text = "\n".join(f"{t.role}: {t.text}" for t in dialog.turns)
    messages = [{"role": "user", "content": f"Conversation:\n{text}\n\n{DISTILL}"}]

    def check(obj: dict) -> str:
        try:
            s = Summary.model_validate({**obj, "dialog_id": dialog.dialog_id})
        except ValidationError as exc:
            first = exc.errors()[0]
            return f'"{".".join(str(x) for x in first["loc"])}": {first["msg"]}'
        if not s.facts:
            return '"facts" must list at least one fact'
        return ""

    obj, attempts = ask_json(lambda m: model(m, max_new_tokens=384), messages, check, retries)
    if obj is None:
        return None, attempts
    return Summary.model_validate({**obj, "dialog_id": dialog.dialog_id}), attempts


def distill(cfg: Config, inp: str | None, retries: int = 2) -> tuple[Path, int, int]:
    dialogs = read(input_file(cfg, inp, "dialogs.jsonl", "dialogs.jsonl"), Dialog)
    model = TextModel(cfg, cfg.align.distiller)
    summaries, failed = [], 0
    for d in dialogs:
        s, attempts = distill_one(model, d, retries)
        if s is None:
            failed += 1
            warn(f"dialog {d.dialog_id!r}: no valid summary after {len(attempts)} replies "
                 f"(last error: {attempts[-1]['error']}); write its summary by hand")
            continue
        summaries.append(s)
    return write_jsonl(data_file(cfg, "summaries.jsonl"), summaries), len(summaries), failed


# -- labyrinth -------------------------------------------------------------------------------
def labyrinth(cfg: Config, inp: str | None) -> tuple[Path, int]:
    from ouroboros.envs.alignment.labyrinth import model_prompts, rule_prompts

    summaries = read(input_file(cfg, inp, "summaries.jsonl", "summaries.jsonl"), Summary)
    if cfg.align.model_transforms:
        model = TextModel(cfg, cfg.align.distiller)
        prompts = model_prompts(lambda m: model(m, temperature=0.7), summaries, cfg.align.transforms, cfg.run.seed,
                                warn=warn)
    else:
        prompts = rule_prompts(summaries, cfg.align.transforms, cfg.run.seed)
    return write_jsonl(data_file(cfg, "labyrinth.jsonl"), prompts), len(prompts)


# -- generate --------------------------------------------------------------------------------
def generate(cfg: Config, inp: str | None, n: int, temperature: float, top_p: float, beams: int,
             run: str | None, version: int | None) -> tuple[Path, int]:
    """n candidates per labyrinth prompt. Sampling (temperature, top-p) on any local backend; beam
    search (`beams` > 1) through transformers' beam search (the hf backend; vLLM's and the APIs'
    sampling paths are not used for it), returning the n best beams."""
    from ouroboros.envs.alignment.tasks import from_labyrinth, load_summaries, resolve_file

    a = cfg.align
    records = read(input_file(cfg, inp, "labyrinth.jsonl"), LabyrinthPrompt)
    summaries = load_summaries(resolve_file(a.summaries_file, a.data_dir, "summaries.jsonl", "summaries.jsonl"), warn)
    tasks = from_labyrinth(records, summaries, warn)
    model = TextModel(cfg, "policy", run, version)
    out = []
    for task, rec in zip(tasks, records):
        messages = task.messages(cfg.rlaif.principles)
        texts = beam_search(model.backend, messages, n, beams, cfg.generator.max_new_tokens) if beams > 1 else [
            model.backend.generate([Request(id=f"{task.id}-s{k}", messages=messages, temperature=temperature,
                                            top_p=top_p, seed=cfg.run.seed * 1009 + k,
                                            max_new_tokens=cfg.generator.max_new_tokens)])[0].text
            for k in range(n)]
        for k, text in enumerate(texts):
            out.append(Candidate(dialog_id=rec.dialog_id, prompt_id=task.prompt_id, prompt=rec.prompt, candidate=text,
                                 weights_version=version or 0, sample=k,
                                 decoding={"beams": beams} if beams > 1 else {"temperature": temperature,
                                                                              "top_p": top_p}))
    return write_jsonl(data_file(cfg, "candidates.jsonl"), out), len(out)


def beam_search(backend, messages: list[dict], n: int, beams: int, max_new_tokens: int) -> list[str]:
    import torch

    from ouroboros.backends.local_model import chat_prompt_ids

    if not hasattr(backend, "model"):
        raise ConfigError("beam search needs a local hf model")
    ids = torch.tensor([chat_prompt_ids(backend.tokenizer, messages)], device=backend.device)
    with torch.no_grad():
        out = backend.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), num_beams=max(beams, n),
                                     num_return_sequences=n, do_sample=False, max_new_tokens=max_new_tokens,
                                     pad_token_id=backend.tokenizer.pad_token_id)
    return [backend.tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True).strip() for row in out]


# -- score -----------------------------------------------------------------------------------
def score(cfg: Config, inp: str | None) -> tuple[Path, dict]:
    """Score candidates.jsonl with the judge pool (rules, model judges; human scores already in
    data_dir's scores.jsonl are kept and join as the human teacher)."""
    from ouroboros.actors.alignment_judge import AlignmentJudge, JudgeWorker
    from ouroboros.envs.alignment.environment import human_scores
    from ouroboros.envs.alignment.tasks import from_labyrinth, load_summaries, resolve_file
    from ouroboros.types import Action, Completion, Step, Trajectory

    a = cfg.align
    cands = read(input_file(cfg, inp, "candidates.jsonl"), Candidate)
    summaries = load_summaries(resolve_file(a.summaries_file, a.data_dir, "summaries.jsonl", "summaries.jsonl"), warn)
    records = [LabyrinthPrompt(dialog_id=c.dialog_id, prompt=c.prompt or "(missing)", prompt_id=c.prompt_id,
                               **{k: v for k, v in (c.model_extra or {}).items() if k in ("terms", "pressure",
                                                                                         "contrast_terms")})
               for c in cands]
    lab = {}
    path = resolve_file(a.labyrinth_file, a.data_dir, "labyrinth.jsonl", None)
    if path is not None and path.is_file():
        for task in from_labyrinth(read(path, LabyrinthPrompt), summaries, warn):
            lab[(task.dialog_id, str(task.prompt_id))] = task
    tasks = []
    for c, r in zip(cands, records):
        tasks.append(lab.get((c.dialog_id, str(c.prompt_id))) or from_labyrinth([r], summaries)[0])
    human = human_scores(cfg)
    workers = {s.name: [JudgeWorker(s, a.rubric, cfg)] for s in a.judges if s.kind == "model"}
    pool = AlignmentJudge(cfg, [], "stage-score", workers, str(data_file(cfg, "judge-cache.db")), human)
    trajs = []
    for n, (c, task) in enumerate(zip(cands, tasks)):
        comp = Completion(f"cand-{n}", c.candidate, [], [], c.weights_version or 0, "file")
        trajs.append(Trajectory(f"cand-{n}", task.id, "train", 0, n, [Step(0, Request(f"cand-{n}", []), comp,
                                Action("answer", c.candidate, "", True), None)], params={"task": task.__dict__}))
    scores = pool.score(trajs)
    lines = [ScoreLine.model_validate(h.model_dump()) for h in human]
    failures = 0
    for c, s in zip(cands, scores):
        failures += int(bool(s.components.get("judge_failed")))
        for d in s.details:
            if d.get("failed") or d.get("rater") == "human":
                continue
            lines.append(ScoreLine(dialog_id=c.dialog_id, prompt_id=c.prompt_id, candidate=c.candidate,
                                   score=d["score"], notes=d.get("notes", ""), rater="ai", judge=d["judge"],
                                   model=d.get("model", ""), prompt_hash=d.get("prompt_hash", ""),
                                   reward=s.total, weights_version=c.weights_version,
                                   **({"prompt": c.prompt} if c.prompt else {})))
    out = write_jsonl(data_file(cfg, "scores.jsonl"), lines)
    return out, {"candidates": len(cands), "lines": len(lines), "judge_failures": failures, **pool.cache_stats()}


# -- train -----------------------------------------------------------------------------------
def train(cfg: Config, inp: str | None, out: str | None) -> dict:
    """DPO on the best-against-worst candidates of each prompt by their mean teacher score (human
    lines weighted by align.teacher_weights). Trains a new version from the base policy into a new
    run's checkpoints/ (a run's later versions come from `align loop`, which keeps its learner)."""
    from ouroboros.actors.learner import Learner
    from ouroboros.envs.alignment.aggregate import human_value
    from ouroboros.learn.checkpoint import write
    from ouroboros.store.layout import RunPaths, new_run_id
    from ouroboros.types import PreferencePair

    if cfg.learner.algorithm != "dpo":
        raise ConfigError("align train learns offline from scores.jsonl, which DPO does; PPO samples its own "
                          "candidates on-policy: run `ouroboros align loop` with learner.algorithm ppo")
    lines = read(input_file(cfg, inp, "scores.jsonl"), ScoreLine)
    cands = {}
    cpath = data_file(cfg, "candidates.jsonl")
    for c in (read(cpath, Candidate) if cpath.is_file() else []):
        cands[(c.dialog_id, str(c.prompt_id))] = c.prompt
    value: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for s in lines:
        v = human_value(s.score)
        if v is not None:
            value[(s.dialog_id, str(s.prompt_id))].setdefault(s.candidate, []).append(
                (v, cfg.align.teacher_weights.get("human" if s.rater == "human" else "ai", 1.0)))
    pairs = []
    for (dialog, pid), by_text in sorted(value.items(), key=lambda x: str(x[0])):
        ranked = sorted(((sum(v * w for v, w in vs) / max(sum(w for _, w in vs), 1e-9), t) for t, vs in by_text.items()),
                        reverse=True)
        if len(ranked) < 2 or ranked[0][0] == ranked[-1][0]:
            continue
        prompt = cands.get((dialog, pid), "")
        pairs.append(PreferencePair(id=f"{dialog}-{pid}", round=1, task_id=f"{dialog}-{pid}",
                                    prompt=[{"role": "user", "content": prompt}], chosen=ranked[0][1],
                                    rejected=ranked[-1][1], chosen_reward=ranked[0][0], rejected_reward=ranked[-1][0],
                                    chosen_trajectory="", rejected_trajectory=""))
    if not pairs:
        raise ConfigError("scores.jsonl gives no prompt two differently scored candidates: nothing to learn")
    learner = Learner(cfg)
    metrics, _ = learner.train(pairs)
    learner.publish()
    run_id = new_run_id(cfg.run.name + "-align-train")
    paths = RunPaths(out or cfg.run.out, run_id).make()
    path = write(paths.run, learner.version, learner.checkpoint())
    return {"pairs": len(pairs), "checkpoint": str(path), "run": str(paths.run), **{k: metrics.get(k) for k in
                                                                                  ("loss", "steps")}}
