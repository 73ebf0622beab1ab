"""Research goals of the `experiment` environment when it runs inside `ouroboros run`.

Standalone cycles (`ouroboros experiment`) pursue the config's `experiment.goal`, or one the
model picks. A learning run needs episodes it can compare and check, so each goal here is a
small computational question whose answer the judge can compute.

Each goal is a *family*: its text has parameters (`{n}`), and every round of every run draws
new values for them. A goal with one fixed answer can be passed without doing the work: print
the answer (memorised, or one of a printed list of candidates) and state it. No judge can tell
such code from real work (`print(78497 + 1)`), so the answers are made unguessable instead:
the only way to state one is to compute it for the parameters in the prompt.

- `Goal.instance(run_id, round)` draws the parameters from the run, the round and the goal, so
  every sample of a goal in one round gets the same question (pairs need identical prompts up
  to the turn where two samples part, see learn/pairs.py), and each round and each run another.
  Held-out questions change every round too, so none can be memorised.
- No answer is stored anywhere. The judge runs the goal's `reference` program on the
  instance's parameters in the sandbox when it scores the episode (references.py); the
  program reads them from `PARAMS`, a dict put before its first line.
- Train and held-out goals are different kinds of question, not one question with another
  number, so a held-out score measures more than recall of the train goals.

A goals file (the bundled `data/goals.jsonl`, or a user's `env.goals_file`) is JSONL, one goal
per line:

    {"id": "divisor-sum", "split": "train", "goal": "Compute the sum of all positive divisors of {n}.",
     "params": {"n": {"int": [100000000, 10000000000], "log": true}},
     "reference": "n = PARAMS['n']\\n...\\nprint(total)", "rel_tol": 0}

`params` maps each `{name}` of the text to how it is drawn: `{"int": [low, high]}` (inclusive;
`"log": true` draws evenly over orders of magnitude), `{"float": [low, high], "decimals": 2}`,
or `{"choice": [v1, v2, ...]}`. `rel_tol` is 0 for an exact answer, or the relative tolerance
of an estimate. The reference must print exactly one number; a run checks that before round 0
(references.check_goals).

`shortcuts` (optional) lists known cheap ways to an answer that skip the work: an asymptote, a
truncated series, the formula of one limit of the parameters. Each is a Python expression of
the parameters, with the names of `math` and the builtins in scope (`"max(w, h) / 3"`; a
conditional expression where it needs cases), or else a program that reads `PARAMS` and prints
one number, as a reference does. A shortcut is held to the bar of a memorised constant: of the
instances check_goals draws (as a run does for a goals file, and the bundled goals' test), it
may be within `rel_tol` of the answer for at most 10%, else the goal is refused; so is a goal
with a shortcut that does not print one number. Shortcuts run in the sandbox as references do
(a goals file is code), only when goals are checked: the policy never sees them and the judge
does not use them. When a cheap guess is found to pass, record it and draw the parameters from
ranges where it misses, e.g. (uniform-sum-exceeds, whose asymptote is within 1e-6 for t > 4.9):

    "params": {"t": {"float": [1.5, 4.0], "decimals": 4}}, "shortcuts": ["2 * t + 2 / 3"]
"""
from __future__ import annotations

import ast
import hashlib
import json
import math
import random
import re
import string
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from ouroboros.config import ConfigError

DATA = Path(__file__).parent / "data" / "goals.jsonl"
SPLITS = ("train", "heldout")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_KEYS = {"id", "split", "goal", "params", "reference", "rel_tol", "shortcuts"}
MAX_SHORTCUTS = 16


class GoalsError(ConfigError):
    """A goals file that cannot be used; the message names every bad line or goal."""


@dataclass(frozen=True)
class Param:
    """How one parameter of a goal is drawn."""

    name: str
    kind: str  # "int", "float" or "choice"
    low: float = 0
    high: float = 0
    log: bool = False  # int: evenly over orders of magnitude, so wide ranges are not all large values
    decimals: int = 2  # float: rounded to this many decimals, as the prompt shows it
    values: tuple = ()  # choice

    @classmethod
    def parse(cls, name: str, spec) -> "Param":
        """Raises ValueError saying what is wrong with `spec`."""
        if not (isinstance(name, str) and name.isidentifier()):
            raise ValueError(f"parameter name {name!r} is not an identifier")
        if not isinstance(spec, dict):
            raise ValueError(f"parameter {name!r}: expected an object such as {{\"int\": [1, 100]}}, got {spec!r}")
        kinds = [k for k in ("int", "float", "choice") if k in spec]
        extra = set(spec) - {"int", "float", "choice", "log", "decimals"}
        if len(kinds) != 1 or extra:
            raise ValueError(f"parameter {name!r}: expected exactly one of int, float or choice (with log for int, "
                             f"decimals for float), got {sorted(spec)}")
        kind = kinds[0]
        if kind == "choice":
            values = spec["choice"]
            if not (isinstance(values, list) and len(values) >= 2
                    and all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in values)):
                raise ValueError(f"parameter {name!r}: choice needs a list of two or more numbers or strings")
            return cls(name, kind, values=tuple(values))
        bounds = spec[kind]
        number = int if kind == "int" else (int, float)
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, number) and not isinstance(b, bool)
                                                                      for b in bounds) and bounds[0] < bounds[1]):
            raise ValueError(f"parameter {name!r}: {kind} needs [low, high] with low < high, got {bounds!r}")
        log = spec.get("log", False)
        if log not in (True, False) or (log and (kind != "int" or bounds[0] < 1)):
            raise ValueError(f"parameter {name!r}: log is true or false, and only for int ranges above 0")
        decimals = spec.get("decimals", 2)
        if not (isinstance(decimals, int) and 0 <= decimals <= 12) or (kind == "int" and "decimals" in spec):
            raise ValueError(f"parameter {name!r}: decimals is an integer from 0 to 12, and only for float ranges")
        return cls(name, kind, bounds[0], bounds[1], log, decimals)

    def draw(self, rng: random.Random):
        if self.kind == "choice":
            return rng.choice(self.values)
        if self.kind == "float":
            return round(rng.uniform(self.low, self.high), self.decimals)
        if self.log:
            value = round(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
            return int(min(max(value, self.low), self.high))
        return rng.randint(int(self.low), int(self.high))


@dataclass(frozen=True)
class Goal:
    id: str
    split: str  # "train" or "heldout"
    goal: str  # the question, with a {name} for each parameter ({goal} in the prompt)
    reference: str  # prints the answer, reading the parameters from PARAMS
    params: tuple[Param, ...] = ()
    rel_tol: float = 0.0  # 0 for exact answers, a few percent for estimates
    source: str = ""  # where it was read ("goals.jsonl:3"), for messages
    shortcuts: tuple[str, ...] = ()  # cheap guesses of the answer that must miss (see the module's doc)

    def draw(self, key: str) -> "Instance":
        """The instance for `key`: the same key always draws the same parameters."""
        rng = random.Random(int.from_bytes(hashlib.sha256(f"{key}|{self.id}".encode()).digest()[:8], "big"))
        return Instance(self, {p.name: p.draw(rng) for p in self.params})

    def instance(self, run_id: str, round_: int) -> "Instance":
        """This goal's question in round `round_` of run `run_id` (see the module's doc)."""
        return self.draw(f"{run_id}|{round_}|{self.split}")


@dataclass(frozen=True)
class Instance:
    """A goal with its parameters drawn: the question asked, and the program that answers it."""

    goal: Goal
    params: dict

    @property
    def text(self) -> str:
        return self.goal.goal.format(**self.params)

    @property
    def program(self) -> str:
        return f"PARAMS = {self.params!r}\n{self.goal.reference}"

    @property
    def key(self) -> str:
        return json.dumps([self.goal.id, self.goal.reference, self.params], sort_keys=True)

    def shortcut(self, index: int) -> "Instance":
        """This instance with the goal's `index`th shortcut as its reference: its `program`
        prints the shortcut's value for these parameters (run as a reference is, in the sandbox)."""
        return Instance(replace(self.goal, reference=shortcut_program(self.goal.shortcuts[index])), self.params)


def is_expression(source: str) -> bool:
    """A shortcut written as one expression (else it is a program that prints its value)."""
    try:
        ast.parse(source.strip(), mode="eval")
    except SyntaxError:
        return False
    return True


def shortcut_program(source: str) -> str:
    """A shortcut as a reference program (PARAMS is put before it): an expression is evaluated
    with the parameters and math's names in scope and its value printed as print() writes it,
    as a policy's program would; a program is used as it is."""
    if not is_expression(source):
        return source
    return ("import math\n"
            "_names = {k: v for k, v in vars(math).items() if not k.startswith('_')}\n"
            f"print(eval({source.strip()!r}, {{**_names, **PARAMS}}))")


def _shortcuts(value) -> tuple[str, ...]:
    """The `shortcuts` field, checked; raises ValueError saying what is wrong."""
    if not (isinstance(value, list) and len(value) <= MAX_SHORTCUTS
            and all(isinstance(v, str) and v.strip() for v in value)):
        raise ValueError(f"shortcuts must be a list of at most {MAX_SHORTCUTS} non-empty strings (expressions of the "
                         "parameters, or programs that print one number)")
    for n, source in enumerate(value, 1):
        try:
            compile(source.strip() if is_expression(source) else source, f"<shortcut {n}>",
                    "eval" if is_expression(source) else "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as exc:
            raise ValueError(f"shortcut {n} {source[:80]!r} is neither a Python expression nor a program: "
                             f"{exc}") from None
    if len(set(value)) != len(value):
        raise ValueError("shortcuts lists one shortcut twice")
    return tuple(value)


def _goal(obj, source: str) -> Goal:
    """One goal from a parsed JSON line; raises ValueError saying what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "answer" in obj:
        raise ValueError("'answer' is not a goal field: goals carry no answer, their reference program computes it "
                         "for the parameters drawn")
    unknown = set(obj) - _KEYS
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}; expected {sorted(_KEYS)}")
    missing = [k for k in ("id", "split", "goal", "reference") if k not in obj]
    if missing:
        raise ValueError(f"missing field(s) {missing}")
    gid, split, text, reference = obj["id"], obj["split"], obj["goal"], obj["reference"]
    if not (isinstance(gid, str) and _ID.match(gid)):
        raise ValueError(f"id {gid!r}: expected letters, digits, '.', '_' or '-' (at most 100)")
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {list(SPLITS)}")
    if not (isinstance(text, str) and text.strip()) or not (isinstance(reference, str) and reference.strip()):
        raise ValueError("goal and reference must be non-empty strings")
    rel_tol = obj.get("rel_tol", 0)
    if not (isinstance(rel_tol, (int, float)) and not isinstance(rel_tol, bool) and 0 <= rel_tol < 1):
        raise ValueError(f"rel_tol {rel_tol!r}: expected a number from 0 (exact) to below 1")
    specs = obj.get("params", {})
    if not isinstance(specs, dict):
        raise ValueError("params must be an object mapping each {name} of the goal to how it is drawn")
    params = tuple(Param.parse(name, spec) for name, spec in specs.items())
    shortcuts = _shortcuts(obj.get("shortcuts", []))
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise ValueError(f"goal text is not a valid template: {exc}") from None
    names = {p.name for p in params}
    if set(fields) - names:
        raise ValueError(f"goal text names {sorted(set(fields) - names)}, which params does not define")
    if names - set(fields):
        # A parameter the question does not show cannot be computed from the question.
        raise ValueError(f"params {sorted(names - set(fields))} do not appear in the goal text")
    goal = Goal(gid, split, text, reference, params, float(rel_tol), source, shortcuts)
    try:
        goal.draw("check").text
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"goal text does not format with its parameters: {exc}") from None
    return goal


def parse_goals(text: str, source: str) -> list[Goal]:
    """The goals of a JSONL text; raises GoalsError naming every bad line (`source:line: why`)."""
    goals, errors, seen = [], [], {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source}:{n}"
        try:
            goal = _goal(json.loads(line), where)
        except json.JSONDecodeError as exc:
            errors.append(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        except (ValueError, RecursionError) as exc:
            errors.append(f"{where}: {exc}")
            continue
        if goal.id in seen:
            errors.append(f"{where}: id {goal.id!r} is already used at line {seen[goal.id]}")
            continue
        seen[goal.id] = n
        goals.append(goal)
    if errors:
        raise GoalsError(f"{len(errors)} bad line(s) in {source}: " + "; ".join(errors))
    if not any(g.split == "heldout" for g in goals):
        raise GoalsError(f"{source} has no held-out goal (split \"heldout\"): a run evaluates on them every round")
    return goals


@lru_cache(maxsize=1)
def _bundled() -> tuple[Goal, ...]:
    return tuple(parse_goals(DATA.read_text(), DATA.name))


def load_goals(split: str | None = None, path: str | Path | None = None) -> list[Goal]:
    """The bundled goals, or those of a user's goals file (`env.goals_file`)."""
    if path is None:
        goals = _bundled()
    else:
        p = Path(path)
        if not p.is_file():
            raise GoalsError(f"env.goals_file {str(p)!r} not found: pass a JSONL file of goals "
                             f"(the bundled {DATA} shows the format)")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise GoalsError(f"env.goals_file {str(p)!r} cannot be read: {exc}") from None
        goals = parse_goals(text, str(p))
    return [g for g in goals if split is None or g.split == split]
