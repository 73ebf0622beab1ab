"""Sanity checks for the `tasks` environment dataset (ouroboros/envs/tasks/data/tasks.jsonl).

Every reference solution must pass all of its hidden tests, and a deliberately
wrong solution must fail at least one test of every task.  All solutions are run
in a single fresh subprocess of ``sys.executable`` (one per solution kind), each
task in its own fresh namespace, so the whole module runs in well under a second.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

DATA_PATH = Path(__file__).resolve().parents[1] / "ouroboros" / "envs" / "tasks" / "data" / "tasks.jsonl"
REQUIRED_KEYS = {"id", "split", "prompt", "entry_point", "tests", "reference"}
SPLITS = {"train", "heldout"}

# Reads [{"id", "source", "tests"}, ...] as JSON on stdin; writes
# {id: {"error": str | None, "failed": [test, ...]}} as JSON on stdout.
_RUNNER = r"""
import json, sys
jobs = json.load(sys.stdin)
results = {}
for job in jobs:
    ns = {"__name__": "__task__"}
    res = {"error": None, "failed": []}
    try:
        exec(compile(job["source"], "<solution>", "exec"), ns)
    except BaseException as e:
        res["error"] = "solution failed to load: %r" % (e,)
        res["failed"] = list(job["tests"])
    else:
        for t in job["tests"]:
            try:
                exec(compile(t, "<test>", "exec"), ns)
            except BaseException as e:
                res["failed"].append("%s  -> %r" % (t, e))
    results[job["id"]] = res
json.dump(results, sys.stdout)
"""


def _load_tasks() -> list[dict]:
    tasks = []
    with DATA_PATH.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                tasks.append(json.loads(line))
    return tasks


TASKS = _load_tasks()
TASK_IDS = [t.get("id", f"#{i}") for i, t in enumerate(TASKS)]


def _run_batch(jobs: list[dict]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert proc.returncode == 0, f"runner crashed:\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def reference_results() -> dict:
    return _run_batch([{"id": t["id"], "source": t["reference"], "tests": t["tests"]} for t in TASKS])


@pytest.fixture(scope="module")
def wrong_results() -> dict:
    jobs = [
        {
            "id": t["id"],
            "source": f"def {t['entry_point']}(*a, **k):\n    return None\n",
            "tests": t["tests"],
        }
        for t in TASKS
    ]
    return _run_batch(jobs)


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
    assert isinstance(tests, list) and 4 <= len(tests) <= 6
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
def test_reference_passes(task, reference_results):
    res = reference_results[task["id"]]
    assert res["error"] is None, res["error"]
    assert not res["failed"], "reference fails:\n" + "\n".join(res["failed"])


@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_wrong_solution_fails(task, wrong_results):
    res = wrong_results[task["id"]]
    assert res["error"] is None, res["error"]
    assert res["failed"], "a solution returning None passes every test; tests do not discriminate"
