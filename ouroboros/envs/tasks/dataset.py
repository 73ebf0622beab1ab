"""The task sets of the `tasks` environment: the bundled one, or your own (`env.tasks_file`).

Both are JSONL, one task per line, with exactly the fields `id`, `split` ("train" or
"heldout"), `prompt`, `entry_point`, `tests` (a list of Python asserts in the language of
`checks.py`) and `reference` (a solution that passes them). Loading checks every line on the
host and refuses the whole set with one error listing every problem by file and line: a line
that is not such an object, a repeated id, a test the checker cannot decide outside the
sandbox, or a task whose tests a function that does no work passes (truth tests keep Python's
meaning, so such a task would pay for nothing). The references themselves run in the sandbox
(`references.py`): a user's set when a run starts, the bundled set in CI.
"""
from __future__ import annotations

import ast
import json
import keyword
from functools import lru_cache
from pathlib import Path

from ouroboros.config import ConfigError
from ouroboros.envs.tasks.checks import Suite, TestRefused, compile_suite
from ouroboros.types import Task

DATA = Path(__file__).parent / "data" / "tasks.jsonl"
FIELDS = ("id", "split", "prompt", "entry_point", "tests", "reference")
SPLITS = ("train", "heldout")
MAX_LISTED = 20


class TaskSetError(ConfigError):
    """A task set that cannot be used; str() is one line listing every problem found."""


def read_tasks(path: str | Path) -> list[Task]:
    """Every task of a JSONL task set, checked on the host; TaskSetError lists what is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskSetError(f"task set {str(path)!r} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    tasks, problems, first_line = [], [], {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        task, task_id, problem = _task(line)
        if problem is None and task.id in first_line:
            problem = f"id {task.id!r} is used again (first on line {first_line[task.id]})"
        if problem is None:
            first_line[task.id] = n
            problem = _test_problem(task)
        if problem is not None:
            named = f" (task {task_id!r})" if task_id is not None else ""
            problems.append(f"{path.name}:{n}{named}: {problem}")
        else:
            tasks.append(task)
    if not problems:
        missing = [s for s in SPLITS if not any(t.split == s for t in tasks)]
        if missing:
            problems.append(f"it has no {' and no '.join(missing)} tasks; a run needs both splits")
    if problems:
        raise TaskSetError(refusal(f"task set {str(path)!r}", problems))
    return tasks


def refusal(what: str, problems: list[str]) -> str:
    """One line: `what` is refused, and every problem (the first MAX_LISTED, then a count)."""
    shown = "; ".join(" ".join(p.split()) for p in problems[:MAX_LISTED])  # one line, tests' newlines too
    more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"{what} is refused, {len(problems)} problem(s): {shown}{more}"


def _task(line: str) -> tuple[Task | None, str | None, str | None]:
    """(the task, its id if the line names one, what is wrong with the line or None)."""
    try:
        row = json.loads(line)
    except ValueError as exc:
        return None, None, f"not valid JSON ({getattr(exc, 'msg', exc)})"
    if not isinstance(row, dict):
        return None, None, f"expected a JSON object with the fields {', '.join(FIELDS)}"
    task_id = row["id"] if isinstance(row.get("id"), str) and row["id"].strip() else None
    missing = [k for k in FIELDS if k not in row]
    unknown = sorted(set(row) - set(FIELDS))
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown field(s) {', '.join(unknown)}"] if unknown else [])
        return None, task_id, f"{'; '.join(parts)} (a task has exactly {', '.join(FIELDS)})"
    if task_id is None:
        return None, None, "id must be a non-empty string"
    bad = None
    if row["split"] not in SPLITS:
        bad = f"split must be 'train' or 'heldout', not {row['split']!r}"
    elif not isinstance(row["prompt"], str) or not row["prompt"].strip():
        bad = "prompt must be a non-empty string"
    elif not isinstance(row["entry_point"], str) or not row["entry_point"].isidentifier() \
            or keyword.iskeyword(row["entry_point"]):
        bad = f"entry_point must be a Python function name, not {row['entry_point']!r}"
    elif not isinstance(row["tests"], list) or not row["tests"] or not all(isinstance(t, str) for t in row["tests"]):
        bad = "tests must be a non-empty list of strings"
    elif not isinstance(row["reference"], str) or not row["reference"].strip():
        bad = "reference must be a non-empty string of Python"
    task = Task(id=task_id, split=row.get("split"), prompt=row.get("prompt"), entry_point=row.get("entry_point"),
                tests=row.get("tests"), reference=row.get("reference"))
    if bad is None:
        try:
            ast.parse(task.reference)
        except (SyntaxError, ValueError) as exc:
            bad = f"its reference is not valid Python ({type(exc).__name__}: {exc})"
    return task, task_id, bad


def _test_problem(task: Task) -> str | None:
    try:
        suite = suite_of(task)
    except TestRefused as exc:
        return str(exc)
    trivial = suite.trivial_pass()
    if trivial:
        return f"{trivial} passes all its tests, so they pay for no work; add a test only a working solution passes"
    return None


@lru_cache(maxsize=4096)
def _suite(entry_point: str, tests: tuple) -> Suite:
    return compile_suite(list(tests), entry_point)


def suite_of(task: Task) -> Suite:
    """The task's compiled tests (compiled once per process); TestRefused if they cannot be."""
    return _suite(task.entry_point, tuple(task.tests))


@lru_cache(maxsize=1)
def _bundled() -> tuple[Task, ...]:
    return tuple(read_tasks(DATA))


def load_tasks(split: str | None = None, path: str | None = None) -> list[Task]:
    """The tasks of `split` (all if None) from the bundled set, or from the JSONL file `path`."""
    tasks = _bundled() if path is None else read_tasks(path)
    return [t for t in tasks if split is None or t.split == split]
