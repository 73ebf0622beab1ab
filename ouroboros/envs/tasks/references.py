"""Each task's reference solution, run in the sandbox through the same harness and host checks a
candidate gets. A task whose reference does not pass all its own tests (a wrong test, or a value
that does not cross as a literal) cannot score anyone, so a task set with such a task is refused,
with every such task listed. References run several to an exec (`BATCH`), each in its own fresh
candidate process, spread over the run's sandbox runners.
"""
from __future__ import annotations

from ouroboros.actors.handles import resolve, submit
from ouroboros.config import SandboxConfig
from ouroboros.envs.tasks import harness
from ouroboros.envs.tasks.dataset import TaskSetError, refusal, suite_of
from ouroboros.types import Task

BATCH = 16


def reference_outcomes(tasks: list[Task], runners: list, sandbox: SandboxConfig) -> dict[str, dict]:
    """{task id: the outcome its reference earns}, from execs on `runners` (actors or objects)."""
    batches = [tasks[i:i + BATCH] for i in range(0, len(tasks), BATCH)]
    pending = []
    for n, batch in enumerate(batches):
        units = [harness.Unit(t.reference, suite_of(t).wire(), harness.unit_timeout(sandbox.timeout_s)) for t in batch]
        # Each unit gets the output share it would have alone, so a value that fits in a
        # candidate's exec fits here too.
        job = harness.prepare(units, sandbox.output_bytes * len(batch))
        runner = runners[n % len(runners)]
        pending.append((batch, job, submit(runner, "exec", job.program, job.files, job.limits)))
    outcomes = {}
    for batch, job, handle in pending:
        result = resolve(handle)
        reports, failure = harness.read(result, job)
        for task, report in zip(batch, reports):
            outcomes[task.id] = harness.outcome(suite_of(task), report, result, failure)
    return outcomes


def reference_problems(tasks: list[Task], runners: list, sandbox: SandboxConfig) -> list[str]:
    """One line per task whose reference does not pass all its tests in the sandbox."""
    problems = []
    outcomes = reference_outcomes(tasks, runners, sandbox)
    for task in tasks:
        out = outcomes[task.id]
        if out["passed"] == out["total"]:
            continue
        if not out["ran"]:
            problems.append(f"task {task.id!r}: its reference does not run: {out['error']}")
            continue
        test, why = out["failures"][0]
        problems.append(f"task {task.id!r}: its reference fails {out['total'] - out['passed']} of {out['total']} "
                        f"tests, first `{test}`: {why}")
    return problems


def check_references(tasks: list[Task], runners: list, sandbox: SandboxConfig, what: str) -> None:
    """Raise TaskSetError listing every task of `what` whose reference fails its tests."""
    problems = reference_problems(tasks, runners, sandbox)
    if problems:
        raise TaskSetError(refusal(what, problems))
