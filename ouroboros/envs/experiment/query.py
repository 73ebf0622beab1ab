"""Structured queries with repair and retry (InterLab's idea): ask for one action until it is valid.

A reply is parsed by the seed-000 protocol parser (fenced or bare JSON, raw newlines inside
strings repaired, the seed's action names as aliases) and then validated by a pydantic model.
If it fails, the model is shown its reply and the exact error and asked again, up to `retries`
times. Every attempt, valid or not, is returned for the store and the trace.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Literal

from pydantic import BaseModel, Field, ValidationError

from ouroboros.envs.protocol import ACTIONS, parse_action
from ouroboros.types import Action, Completion

MAX_DATA_CHARS = 200_000


class ActionModel(BaseModel):
    model_config = {"extra": "ignore"}
    action: Literal["run", "environment", "search", "web_search", "load_url", "finalize"]
    data: str = Field(max_length=MAX_DATA_CHARS)
    notes: str = Field("", max_length=20_000)


@dataclass
class Attempt:
    text: str
    error: str
    prompt_tokens: int
    completion_tokens: int
    started_at: float
    duration_s: float
    finish_reason: str = "stop"
    # What a learner needs of the turn: the conversation it answered and the completion itself
    # (token ids, log-probabilities, weights version).
    messages: list[dict] = field(default_factory=list)
    completion: Completion | None = None


@dataclass
class QueryResult:
    action: Action
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def prompt_tokens(self) -> int:
        return sum(a.prompt_tokens for a in self.attempts)

    @property
    def completion_tokens(self) -> int:
        return sum(a.completion_tokens for a in self.attempts)


def validate(text: str, allowed: tuple[str, ...] = ACTIONS) -> Action:
    action = parse_action(text, allowed)
    if not action.valid:
        return action
    try:
        ActionModel(action=action.name, data=action.data, notes=action.notes)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return Action(action.name, "", "", False, f'"{where}": {first["msg"]}')
    return action


def repair_prompt(error: str, allowed: tuple[str, ...]) -> str:
    return (f"That reply is not a valid action: {error}. Reply again with exactly one JSON object "
            f'{{"action": one of {list(allowed)}, "data": a string, "notes": a string}} and nothing else.')


def ask(generate: Callable[[list[dict]], Completion], messages: list[dict], retries: int,
        allowed: tuple[str, ...] = ACTIONS, budget_ok: Callable[[int], bool] = lambda used: True) -> QueryResult:
    """Ask until a valid action or `retries` re-asks are spent; `budget_ok(tokens so far)` can stop early."""
    convo = list(messages)
    result = QueryResult(action=Action(None, "", "", False, "no reply"))
    for attempt in range(retries + 1):
        started = time.time()
        completion = generate(convo)
        action = Action(None, "", "", False, completion.error) if completion.error else validate(completion.text, allowed)
        if not action.valid and completion.finish_reason == "length":
            action = Action(action.name, "", "", False, f"{action.error} (the reply hit the token limit: be shorter)")
        result.attempts.append(Attempt(text=completion.text, error="" if action.valid else action.error,
                                       prompt_tokens=completion.prompt_tokens,
                                       completion_tokens=completion.completion_tokens,
                                       started_at=started, duration_s=time.time() - started,
                                       finish_reason=completion.finish_reason, messages=convo,
                                       completion=completion))
        result.action = action
        if action.valid or attempt == retries or not budget_ok(result.prompt_tokens + result.completion_tokens):
            return result
        convo = convo + [{"role": "assistant", "content": completion.text},
                         {"role": "user", "content": repair_prompt(action.error, allowed)}]
    return result
