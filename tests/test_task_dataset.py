"""Sanity checks for the `tasks` environment's bundled task set (ouroboros/envs/tasks/data/tasks.jsonl).

Every reference solution must pass all of its hidden tests, run the way a candidate is: in the
bwrap sandbox, through the harness, with the tests decided on the host (so every value a test
needs crosses as a literal). No function that does no work (a constant, or its first argument)
may pass a whole task. The references run a batch to an exec, in a few seconds in all; a run
on the bundled set does not run them again, it relies on this test.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from conftest import require_bwrap
from ouroboros.actors.sandbox_runner import SandboxRunner
from ouroboros.config import SandboxConfig
from ouroboros.envs.tasks.dataset import read_tasks, suite_of
from ouroboros.envs.tasks.references import reference_outcomes

DATA_PATH = Path(__file__).resolve().parents[1] / "ouroboros" / "envs" / "tasks" / "data" / "tasks.jsonl"
REQUIRED_KEYS = {"id", "split", "prompt", "entry_point", "tests", "reference"}
SPLITS = {"train", "heldout"}


def _load_tasks() -> list[dict]:
    tasks = []
    with DATA_PATH.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                tasks.append(json.loads(line))
    return tasks


TASKS = _load_tasks()
TASK_IDS = [t.get("id", f"#{i}") for i, t in enumerate(TASKS)]


@pytest.fixture(scope="module")
def reference_results() -> dict:
    require_bwrap()
    cfg = SandboxConfig(backend="bwrap")
    runner = SandboxRunner(cfg)
    try:
        return reference_outcomes(read_tasks(DATA_PATH), [runner], cfg)
    finally:
        runner.cleanup()


def test_dataset_shape():
    assert len(TASKS) >= 64
    splits = [t["split"] for t in TASKS]
    assert set(splits) <= SPLITS
    assert splits.count("heldout") >= 20
    assert splits.count("train") >= 40
    ids = [t["id"] for t in TASKS]
    assert len(ids) == len(set(ids)), "duplicate task ids"
    entry_points = [t["entry_point"] for t in TASKS]
    assert len(entry_points) == len(set(entry_points)), "duplicate entry points"


@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_task_fields(task):
    assert set(task) == REQUIRED_KEYS
    assert isinstance(task["id"], str) and task["id"]
    assert task["split"] in SPLITS
    ep = task["entry_point"]
    assert isinstance(ep, str) and ep.isidentifier()
    assert isinstance(task["prompt"], str)
    assert f"`{ep}(" in task["prompt"], "prompt must name the function and its signature"
    assert "\n" not in task["prompt"]

    tests = task["tests"]
    # Yes/no tasks need near misses, so that no one-line heuristic over the inputs passes them.
    assert isinstance(tests, list) and 4 <= len(tests) <= 14
    for t in tests:
        assert isinstance(t, str) and "\n" not in t, f"test must be a single line: {t!r}"
        tree = ast.parse(t)
        assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert), t
        called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert ep in called, f"test does not call {ep}: {t!r}"
    assert len(set(tests)) == len(tests), "duplicate tests"

    ref = ast.parse(task["reference"])
    defined = {n.name for n in ref.body if isinstance(n, ast.FunctionDef)}
    assert ep in defined, "reference must define the entry point at top level"


def test_heldout_distinct_from_train():
    train = {t["entry_point"] for t in TASKS if t["split"] == "train"}
    heldout = {t["entry_point"] for t in TASKS if t["split"] == "heldout"}
    assert not train & heldout
    train_tests = {t for task in TASKS if task["split"] == "train" for t in task["tests"]}
    for task in TASKS:
        if task["split"] == "heldout":
            assert not train_tests & set(task["tests"])


@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_reference_passes_in_the_sandbox(task, reference_results):
    out = reference_results[task["id"]]
    assert out["ran"], out["error"]
    assert out["passed"] == out["total"] == len(task["tests"]), "reference fails:\n" + "\n".join(
        f"{test}  -> {why}" for test, why in out["failures"])


@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_no_do_nothing_solution_passes_a_task(task):
    from ouroboros.types import Task

    suite = suite_of(Task(**task))
    assert suite.trivial_pass() is None, "tests do not discriminate"
    assert len(suite.tests) == len(task["tests"])
