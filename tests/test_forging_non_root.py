"""The adversarial reward suites again, as an unprivileged user.

Where the harness is not root, the sandbox differs: bwrap runs as the harness's own uid in an
unprivileged user namespace, with no cgroups and no tmpfs workdir, and the pipes the host reads
belong to a uid that is mapped inside the sandbox. So when the tests run as root, this test
re-runs the forging suites (`SUITES`, each present file; their tests named `non_root` or
`end_to_end` are left out) in a subprocess as uid/gid 65534 and requires every selected test to
pass, none skipped. A suite joins by being listed in `SUITES`.

bwrap as non-root needs unprivileged user namespaces; where this kernel refuses them, or no
Python here can run as that user, the test skips with the reason (fails under
OUROBOROS_REQUIRE_SANDBOX=1).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUITES = ["tests/test_forging_tasks.py", "tests/test_forging_experiment.py"]
SELECT = "not non_root and not end_to_end"
UID = GID = 65534


def unavailable(reason: str):
    if os.environ.get("OUROBOROS_REQUIRE_SANDBOX") == "1":
        pytest.fail(f"the non-root forging run is required here (OUROBOROS_REQUIRE_SANDBOX=1): {reason}")
    pytest.skip(reason)


def as_user(argv: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups", "--", *argv],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def python_for_user(env: dict) -> tuple[list[str], dict] | str:
    """(the Python argv, extra environment) that runs this checkout's tests as the user, or why none."""
    paths = os.pathsep.join(dict.fromkeys([str(REPO), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
    # This interpreter if the user may run it; else the system's of the same version with our
    # packages on its path (a virtualenv under root's home is out of the user's reach).
    tries = [([sys.executable], {}), (["/usr/bin/python3"], {"PYTHONPATH": paths})]
    why = []
    for argv, extra in tries:
        if not os.path.exists(argv[0]):
            continue
        probe = as_user([*argv, "-c", "import sys, ouroboros, pytest; print('%d.%d' % sys.version_info[:2])"],
                        {**env, **extra}, 60)
        if probe.returncode == 0 and probe.stdout.strip() == "%d.%d" % sys.version_info[:2]:
            return argv, extra
        why.append(f"{argv[0]}: {(probe.stderr.strip().splitlines() or [probe.stdout.strip()])[-1][:200]}")
    return "no Python here runs this checkout as uid 65534 (" + "; ".join(why) + ")"


def test_forging_suites_pass_as_a_non_root_user():
    if os.geteuid() != 0:
        pytest.skip(f"the suites already ran as uid {os.geteuid()}, not root")
    if shutil.which("setpriv") is None:
        unavailable("setpriv (util-linux) is not installed, so the suites cannot drop to an unprivileged user")
    suites = [s for s in SUITES if (REPO / s).exists()]
    home = tempfile.mkdtemp(prefix="ouroboros-nonroot-")
    try:
        os.chown(home, UID, GID)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
               "OUROBOROS_SANDBOX_ROOT": os.path.join(home, "sandbox"), "PYTHONDONTWRITEBYTECODE": "1"}
        if "OUROBOROS_REQUIRE_SANDBOX" in os.environ:
            env["OUROBOROS_REQUIRE_SANDBOX"] = os.environ["OUROBOROS_REQUIRE_SANDBOX"]
        found = python_for_user(env)
        if isinstance(found, str):
            unavailable(found)
        python, extra = found
        env.update(extra)
        probe = as_user([*python, "-c", "from ouroboros.sandbox.bwrap import BwrapSandbox; BwrapSandbox().cleanup()"],
                        env, 120)
        if probe.returncode != 0:
            unavailable("bwrap cannot make a sandbox as an unprivileged user here (it needs unprivileged user "
                        f"namespaces): {(probe.stderr.strip().splitlines() or ['?'])[-1][:300]}")
        proc = as_user([*python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *suites, "-k", SELECT],
                       env, 900)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 40, summary
    assert not re.search(r"skipped|failed|error", summary), tail
