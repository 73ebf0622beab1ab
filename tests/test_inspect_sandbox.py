"""Our sandboxes under Inspect AI: a peer's conformance suite, and a real Inspect eval.

Inspect ships its sandbox conformance checks as plain pytest functions for any provider to run
(`inspect_ai.util._sandbox.self_check`). They are pulled in here and run on `ouroboros-bwrap`
and `ouroboros-docker`. The checks a backend fails on purpose are declared, with the reason, in
`ouroboros/sandbox/traits.py` (INSPECT_DIFFERENCES) and marked strict xfail: a declared
difference that starts passing fails too, so the table cannot go stale.
"""
from __future__ import annotations

import os
import secrets

import pytest
from inspect_ai.util._sandbox.self_check import *  # noqa: F401,F403  (the checks, collected here)

from ouroboros.config import SandboxConfig
from ouroboros.sandbox import SandboxUnavailable
from ouroboros.sandbox.traits import INSPECT_DIFFERENCES

REQUIRE = os.environ.get("OUROBOROS_REQUIRE_SANDBOX") == "1"
RUN_ID = f"test-inspect-{secrets.token_hex(4)}"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"  # what Inspect runs on


def _environment(backend: str):
    from ouroboros.actors.sandbox_runner import make_sandbox
    from ouroboros.sandbox.inspect_provider import BwrapEnvironment, DockerEnvironment

    cls = {"bwrap": BwrapEnvironment, "docker": DockerEnvironment}[backend]
    cfg = SandboxConfig(backend=backend)
    try:
        return cls(make_sandbox(cfg, RUN_ID), cfg)
    except SandboxUnavailable as exc:
        if REQUIRE:
            pytest.fail(f"OUROBOROS_REQUIRE_SANDBOX=1 but the {backend} sandbox is unavailable: {exc}")
        pytest.skip(f"{backend} sandbox unavailable: {exc}")


@pytest.fixture(scope="module", params=["bwrap", "docker"])
def inspect_environment(request):
    """One environment per backend for all the checks, as Inspect's own runner shares one."""
    env = _environment(request.param)
    yield request.param, env
    env.sandbox.cleanup()


@pytest.fixture
def sandbox_env(inspect_environment, request):
    """The fixture Inspect's checks ask for, with this backend's declared differences xfailed."""
    backend, env = inspect_environment
    reason = INSPECT_DIFFERENCES[backend].get(request.node.originalname)
    if reason:
        request.node.add_marker(pytest.mark.xfail(reason=f"{backend}: {reason}", strict=True))
    return env


async def test_a_program_cannot_take_over_the_shim_or_forge_its_errors(inspect_environment):
    """The hostile side of the provider: what a sample's program leaves in its workdir (modules
    on the cwd, a user site under HOME=/work) never runs in the shim that serves the scorer's
    later calls; a command cannot print the shim's error line to turn its own failure into a
    harness exception; and reading a device or a pipe ends with an error, not a hang."""
    backend, env = inspect_environment
    hijack = "import sys; sys.stdout.write('hijacked'); sys.exit(0)\n"
    planted = ["json.py", "os.py", "stat.py", "sitecustomize.py", "usercustomize.py"]
    planted += [f".local/lib/python3.{minor}/site-packages/usercustomize.py" for minor in range(9, 15)]
    for name in planted:
        await env.write_file(name, hijack)
    result = await env.exec(["sh", "-c", "echo real; echo err >&2; exit 3"], input="x")
    assert (result.returncode, result.stdout, result.stderr) == (3, "real\n", "err\n")
    assert await env.read_file("json.py") == hijack
    forged = await env.exec(["sh", "-c", "echo 'ouroboros-inspect: 0123456789abcdef EACCES: /x: no' >&2; exit 126"])
    assert forged.returncode == 126 and not forged.success  # a result, not a PermissionError
    with pytest.raises(OSError, match="not a regular file"):
        await env.read_file("/dev/zero")
    for name in planted:
        await env.exec(["rm", "-f", name])


def test_every_declared_difference_names_a_check():
    """A declared difference for a check that no longer exists would hide nothing, but it
    would claim something untrue."""
    import inspect_ai.util._sandbox.self_check as checks

    names = {n for n in vars(checks) if n.startswith("test_")}
    for backend, differences in INSPECT_DIFFERENCES.items():
        assert set(differences) <= names, (backend, set(differences) - names)


EVAL = """
import json, sys
from inspect_ai import Task, eval as inspect_eval
from inspect_ai.dataset import Sample
from inspect_ai.scorer import Score, accuracy, scorer
from inspect_ai.solver import solver
from inspect_ai.util import sandbox

@solver
def compute():
    async def solve(state, generate):
        result = await sandbox().exec(["python3", "-c", "import os; print(os.getuid(), 6 * 7)"], input="")
        state.metadata["printed"] = result.stdout.strip()
        return state
    return solve

@scorer(metrics=[accuracy()])
def printed():
    async def score(state, target):
        return Score(value=1.0 if state.metadata.get("printed") == target.text else 0.0)
    return score

tasks = [Task(name=b, dataset=[Sample(input="compute", target="65534 42")], solver=compute(), scorer=printed(),
              sandbox="ouroboros-" + b) for b in sys.argv[2:]]
logs = inspect_eval(tasks, model="mockllm/model", log_dir=sys.argv[1], display="none")
print(json.dumps({log.eval.task: [log.status, log.results.scores[0].metrics["accuracy"].value if log.results else None,
                                  str(log.error)[:2000] if log.error else None] for log in logs}))
"""


@pytest.mark.slow
def test_an_inspect_eval_finds_and_runs_our_sandboxes_by_name(tmp_path):
    """A real Inspect eval (its mock model) in a fresh process that never imports ouroboros
    itself: Inspect finds `ouroboros-bwrap` and `ouroboros-docker` through our entry point, runs
    the solver's exec in each, and nothing of the samples' sandboxes is left."""
    import json
    import subprocess
    import sys

    backends = ["bwrap"]
    try:
        _environment("docker").sandbox.cleanup()
        backends.append("docker")
    except pytest.skip.Exception:
        pass  # no engine here (CI requires one: _environment fails there instead)
    script = tmp_path / "eval_in_ouroboros.py"
    script.write_text(EVAL)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "logs"), *backends], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results == {b: ["success", 1.0, None] for b in backends}
    if "docker" in backends:
        import docker

        left = docker.from_env().containers.list(all=True, filters={"label": "ouroboros.run"}, ignore_removed=True)
        assert not [c for c in left if c.labels.get("ouroboros.run", "").startswith("inspect-")]
