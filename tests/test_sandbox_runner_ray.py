"""SandboxRunner actors on real Ray: the `sandbox` resource, sessions, and a runner killed mid-exec.

A runner killed in the middle of an exec (`ray.kill`, as on node loss) must leave no process,
container or workdir behind, and its caller gets a clear error and retries on another runner.
"""
from __future__ import annotations

import os
import secrets
import time

import pytest

from conftest import processes_tagged

from ouroboros.config import SandboxConfig
from ouroboros.sandbox import TRAITS, SandboxUnavailable, workdir
from ouroboros.sandbox.docker import DockerSandbox

REQUIRE = os.environ.get("OUROBOROS_REQUIRE_SANDBOX") == "1"
TAG = f"ouroboros-ray-{secrets.token_hex(6)}"

pytestmark = pytest.mark.slow


def _available(backend: str) -> None:
    try:
        if backend == "docker":
            DockerSandbox().cleanup()
    except SandboxUnavailable as exc:
        if REQUIRE:
            pytest.fail(f"OUROBOROS_REQUIRE_SANDBOX=1 but docker is unavailable: {exc}")
        pytest.skip(f"docker unavailable: {exc}")


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, resources={"sandbox": 2}, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


def tagged_pids() -> list[int]:
    return processes_tagged(TAG)


def wait_for(predicate, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.parametrize("backend", [b for b in ("bwrap", "docker") if TRAITS[b].isolated])
def test_runner_killed_mid_exec_leaves_nothing_and_caller_can_retry(ray_session, backend):
    ray = ray_session
    from ouroboros.actors.sandbox_runner import SandboxRunner

    _available(backend)
    run_id = f"raytest-{secrets.token_hex(4)}"
    cfg = SandboxConfig(backend=backend, timeout_s=60, env={"OUROBOROS_TAG": TAG})
    runner_cls = ray.remote(num_cpus=0, resources={"sandbox": 1})(SandboxRunner)
    doomed, spare = runner_cls.remote(cfg, run_id), runner_cls.remote(cfg, run_id)
    owner = ray.get(doomed.owner.remote())
    session = ray.get(doomed.open_session.remote())
    ray.get(doomed.write_file.remote(session, "kept.txt", "x"))
    # A long exec with a daemon of its own, killed while it runs.
    program = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(120)\n"
               "print('running', flush=True)\ntime.sleep(120)\n")
    pending = doomed.exec.remote(program, session=session)
    assert wait_for(lambda: len(tagged_pids()) >= 2, 20), "the exec never started"
    assert os.path.isdir(workdir.owner_dir(owner))
    ray.kill(doomed)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(pending, timeout=30)
    assert wait_for(lambda: not tagged_pids(), 15), f"processes left behind: {tagged_pids()}"
    assert wait_for(lambda: not os.path.exists(workdir.owner_dir(owner)), 15), "workdir left behind"
    from ouroboros.sandbox import runner

    pid = owner.split("-")[0]
    assert wait_for(lambda: not any(name.startswith(f"ouroboros-{pid}-") for base in runner.cgroup_bases().values()
                                    for name in os.listdir(base)), 15), "per-exec cgroup left behind"
    if backend == "docker":
        import docker

        client = docker.from_env()
        assert wait_for(lambda: not client.containers.list(all=True, filters={"label": f"ouroboros.run={run_id}"}),
                        15), "container left behind"
    # The caller retries on another runner.
    retried = ray.get(spare.exec.remote("print('retried')"), timeout=60)
    assert retried.stdout == "retried\n" and retried.exit_code == 0
    ray.get(spare.cleanup.remote())
    ray.kill(spare)
