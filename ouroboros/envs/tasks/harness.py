"""The program that runs model-written code against a task's hidden tests, in a sandbox.

The candidate code and the tests travel as files, never interpolated into the
harness source. The harness prints its result after every test on a line that
starts with a per-exec nonce, so a timeout keeps the partial count and the
candidate cannot forge a result line it never saw.
"""
from __future__ import annotations

import json
import secrets

from ouroboros.types import ExecResult, Task

HARNESS = r'''
import json, sys
nonce = open("nonce.txt").read().strip()
tests = json.load(open("tests.json"))
result = {"ran": False, "error": "", "passed": 0, "total": len(tests), "failures": []}
def report():
    sys.__stdout__.write("\n" + nonce + json.dumps(result) + "\n")
    sys.__stdout__.flush()
namespace = {"__name__": "__candidate__"}
try:
    exec(compile(open("candidate.py").read(), "candidate.py", "exec"), namespace)
    result["ran"] = True
except BaseException as exc:
    result["error"] = (type(exc).__name__ + ": " + str(exc))[:300]
report()
if result["ran"]:
    for test in tests:
        try:
            exec(test, namespace)
            result["passed"] += 1
        except BaseException as exc:
            result["failures"].append((test[:120], (type(exc).__name__ + ": " + str(exc))[:120]))
        report()
'''


def harness_files(task: Task, code: str) -> tuple[str, dict[str, str], str]:
    """(program, files, nonce) for one exec of `code` against `task`'s tests."""
    nonce = "@@OUROBOROS-RESULT-" + secrets.token_hex(8) + "@@"
    files = {"candidate.py": code, "tests.json": json.dumps(task.tests), "nonce.txt": nonce}
    return HARNESS, files, nonce


def read_outcome(result: ExecResult, nonce: str, total: int) -> dict:
    """The harness's last report, or a zero outcome that says why there is none."""
    outcome = {"ran": False, "passed": 0, "total": total, "error": "", "failures": []}
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(nonce):
            try:
                outcome.update(json.loads(line[len(nonce):]))
            except json.JSONDecodeError:
                continue
            break
    else:
        if result.timed_out:
            outcome["error"] = "timed out before the harness reported"
        elif result.oom:
            outcome["error"] = "ran out of memory"
        else:
            outcome["error"] = result.error or (result.stderr.strip().splitlines() or ["no result"])[-1][:300]
    if result.timed_out and not outcome["error"]:
        outcome["error"] = "timed out"
    return outcome
