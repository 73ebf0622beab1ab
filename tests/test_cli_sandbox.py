"""`ouroboros sandbox exec FILE --json`: exactly one JSON ExecResult on stdout, whatever the program did."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ouroboros.sandbox import SandboxUnavailable
from ouroboros.sandbox.docker import DockerSandbox

REQUIRE = os.environ.get("OUROBOROS_REQUIRE_SANDBOX") == "1"
CLI = [sys.executable, "-m", "ouroboros.cli"]

PROGRAMS = {
    "binary-garbage": "import os, sys\nsys.stdout.buffer.write(os.urandom(200_000))\nsys.stderr.buffer.write(b'\\xff\\x00' * 1000)\n",
    "gigabytes": "import sys\nchunk = b'\\xfe' * (1 << 20)\nwhile True:\n    sys.stdout.buffer.write(chunk)\n",
    "json-lookalike": "print('{\"exit_code\": 0}')\nprint('}{')\nraise SystemExit(3)\n",
}


@pytest.fixture(params=["bwrap", "docker"])
def backend(request):
    if request.param == "docker":
        try:
            DockerSandbox().cleanup()
        except SandboxUnavailable as exc:
            if REQUIRE:
                pytest.fail(f"OUROBOROS_REQUIRE_SANDBOX=1 but docker is unavailable: {exc}")
            pytest.skip(f"docker unavailable: {exc}")
    return request.param


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_json_output_is_one_object(tmp_path, backend, name):
    path = tmp_path / "program.py"
    path.write_text(PROGRAMS[name])
    proc = subprocess.run([*CLI, "sandbox", "exec", str(path), "--backend", backend, "--timeout", "3", "--json"],
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    lines = proc.stdout.decode("utf-8").splitlines()
    assert len(lines) == 1, proc.stdout[:500]
    result = json.loads(lines[0])
    assert set(result) >= {"exit_code", "stdout", "stderr", "timed_out", "oom", "duration_s", "truncated", "image"}
    if name == "gigabytes":
        assert result["timed_out"] and result["truncated"] and len(result["stdout"]) <= (1 << 20)
    if name == "json-lookalike":
        assert result["exit_code"] == 3 and not result["timed_out"]
    assert bool(result["image"]) == (backend == "docker")


def test_missing_engine_still_gives_one_json_object(tmp_path):
    path = tmp_path / "program.py"
    path.write_text("print('hi')\n")
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    proc = subprocess.run([*CLI, "sandbox", "exec", str(path), "--backend", "docker", "--json"],
                          capture_output=True, timeout=60, env=env)
    assert proc.returncode == 2
    result = json.loads(proc.stdout)
    assert "apt-get install -y docker.io" in result["error"]
    # Without --json the same failure is one plain line on stderr.
    plain = subprocess.run([*CLI, "sandbox", "exec", str(path), "--backend", "docker"],
                           capture_output=True, timeout=60, env=env, text=True)
    assert plain.returncode == 2 and plain.stderr.startswith("error: ") and "docker.io" in plain.stderr
    assert "Traceback" not in plain.stderr
