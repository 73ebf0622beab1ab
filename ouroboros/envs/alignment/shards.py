"""The alignment stages' JSONL shards, in the formats of the alignment loop's data (README: The alignment loop).

dialogs `{dialog_id, turns: [{role: human|assistant, text}]}`, summaries `{dialog_id, facts,
logic, persona: {voice, constraints}}`, labyrinth prompts `{dialog_id, prompt, target}` and
scored candidates `{dialog_id, prompt_id, candidate, score: {criterion: n}, notes, rater:
human|ai}`. Those keys are written exactly; what a stage adds (a prompt's id and transform, a
score's judge, model and prompt hash, the weights version of a candidate) rides in extra keys,
which a reader ignores, so a user can edit any file by hand and run the next stage.

Reading never loses a file to one bad line: each malformed line is reported by file and line
number and the rest is used. Writing never replaces a file that is there: the older one is
kept beside it (`name.jsonl.<time>`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class Record(BaseModel):
    # Extra keys are kept (a user's own annotations survive a round trip through a stage).
    model_config = ConfigDict(extra="allow")


class Turn(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["human", "assistant"]
    text: str

    @field_validator("role", mode="before")
    @classmethod
    def _common_names(cls, role):
        # Chat data from elsewhere names the speakers otherwise; they are read as the two roles here.
        aliases = {"user": "human", "gpt": "assistant", "model": "assistant", "bot": "assistant", "ai": "assistant"}
        return aliases.get(role.strip().lower(), role.strip().lower()) if isinstance(role, str) else role


class Dialog(Record):
    dialog_id: str = Field(min_length=1)
    turns: list[Turn] = Field(min_length=1)


class Persona(BaseModel):
    model_config = ConfigDict(extra="allow")
    voice: str = ""
    constraints: list[str] = Field(default_factory=list)


class Summary(Record):
    dialog_id: str = Field(min_length=1)
    facts: list[str] = Field(default_factory=list)
    logic: list[str] = Field(default_factory=list)
    persona: Persona = Field(default_factory=Persona)


class LabyrinthPrompt(Record):
    dialog_id: str | None = None
    prompt: str = Field(min_length=1)
    target: str = ""
    # Ours: which transform made it, its id, what the rule judge checks.
    prompt_id: int | str | None = None
    transform: str = ""


class Candidate(Record):
    dialog_id: str | None = None
    prompt_id: int | str | None = None
    prompt: str = ""
    candidate: str
    weights_version: int | None = None


class ScoreLine(Record):
    dialog_id: str | None = None
    prompt_id: int | str | None = None
    candidate: str
    score: dict[str, float]
    notes: str = ""
    rater: Literal["human", "ai"]

    @field_validator("score")
    @classmethod
    def _finite(cls, score: dict[str, float]) -> dict[str, float]:
        import math

        for k, v in score.items():
            if not math.isfinite(v):
                raise ValueError(f"score {k!r} is not a finite number")
        return score


class EvalPrompt(Record):
    id: str = Field(min_length=1)
    kind: Literal["question", "paraphrase", "persona", "harmful", "benign"]
    dialog_id: str | None = None
    prompt: str = Field(min_length=1)
    group: str | None = None
    answer_terms: list[str] = Field(default_factory=list)
    target: str = ""


class ShardError(ValueError):
    """A shard that cannot be used at all (missing, or no line of it valid)."""


def read_jsonl(path: str | Path, model: type[BaseModel], warn=None) -> list:
    """The valid records of `path`. Each bad line is passed to `warn` as "file:line: why" (default:
    collected and ignored); a missing file, or one whose every line is bad, raises ShardError."""
    p = Path(path)
    if not p.is_file():
        raise ShardError(f"{p}: no such file")
    records, problems = [], []
    with p.open(encoding="utf-8-sig", errors="replace") as fh:  # -sig: a byte-order mark is not a bad line
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{p}:{n}: not JSON ({exc.msg} at column {exc.colno})")
                continue
            except (ValueError, RecursionError) as exc:  # an int past Python's digit limit; nesting too deep
                problems.append(f"{p}:{n}: not usable JSON ({type(exc).__name__}: {str(exc)[:120]})")
                continue
            if not isinstance(value, dict):
                problems.append(f"{p}:{n}: expected a JSON object, got {type(value).__name__}")
                continue
            try:
                records.append(model.model_validate(value))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(x) for x in first["loc"]) or "line"
                problems.append(f"{p}:{n}: {where}: {first['msg']}")
            except (ValueError, RecursionError) as exc:
                problems.append(f"{p}:{n}: {type(exc).__name__}: {str(exc)[:120]}")
    for problem in problems:
        if warn is not None:
            warn(problem)
    if not records and problems:
        raise ShardError(f"{p}: no valid line ({len(problems)} bad; first: {problems[0]})")
    return records


def dump(record: BaseModel | dict) -> str:
    data = record.model_dump(exclude_none=True) if isinstance(record, BaseModel) else record
    return json.dumps(data, ensure_ascii=False)


def write_jsonl(path: str | Path, records: list[BaseModel | dict[str, Any]]) -> Path:
    """Write `records` to `path`, first moving any file already there to `path.<time>` (a user's
    hand edits are never overwritten). The new file appears whole (written beside, then renamed)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.exists():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        kept = p.with_name(f"{p.name}.{stamp}")
        k = 1
        while kept.exists():
            kept = p.with_name(f"{p.name}.{stamp}-{k}")
            k += 1
        p.rename(kept)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text("".join(dump(r) + "\n" for r in records), encoding="utf-8")
    tmp.rename(p)
    return p


BUNDLED = Path(__file__).parent / "data"
