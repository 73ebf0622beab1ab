"""What each sandbox backend does and does not guarantee: the known differences, in one place.

The conformance and attack suite (`tests/test_sandbox_conformance.py`) reads this table, so a
backend is tested for exactly what it claims, and a difference cannot hide in a skipped test.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Traits:
    isolated: bool  # host files, processes, network and the engine socket are out of reach
    builds: bool  # `build(dockerfile)` makes environments
    image: bool  # results carry an image digest
    written_data_cap: str  # "total": the workdir is capped as a whole; "per-file": RLIMIT_FSIZE only
    oom_report: str  # "cgroup": the memory cgroup's kill counter; "heuristic": exit status and stderr
    gpus: bool  # can pass GPUs in when the config asks
    note: str


TRAITS: dict[str, Traits] = {
    "bwrap": Traits(
        isolated=True,
        builds=False,
        image=False,
        # As root the workdir is a size-capped tmpfs; a non-root harness cannot mount one.
        written_data_cap="total-as-root",
        oom_report="cgroup-where-v1",
        gpus=False,
        note="namespaces + rlimits; per-exec cgroup v1 pids/memory/cpu when the harness may make "
        "them. A cold exec's program is the sandbox's pid 1 (no bwrap init holds its stdout). "
        "The host's /usr is visible read-only (it is the environment). With `network: true` "
        "it shares the host's network namespace, host loopback included: turn it on only for "
        "trusted programs. Experiment sessions (sandbox.warm) fork each program from one Python "
        "kept running in the session's sandbox: /tmp lasts as long as the session, and a program "
        "can interfere with that interpreter, which only affects its own session.",
    ),
    "docker": Traits(
        isolated=True,
        builds=True,
        image=True,
        written_data_cap="total-as-root",
        oom_report="cgroup",
        gpus=True,
        note="a warm container per experiment; read-only root, tmpfs /tmp, the workdir bind-"
        "mounted at /work. Builds run with --network none; the build container itself runs "
        "with Docker's default capabilities (legacy builder), not ours, and without pids or "
        "disk limits. With `network: true` the bridge can reach host services bound to 0.0.0.0.",
    ),
    "process": Traits(
        isolated=False,
        builds=False,
        image=False,
        written_data_cap="total-as-root",
        oom_report="cgroup-where-v1",
        gpus=False,
        note="NO isolation: host files, processes and network are visible. Limits only. A "
        "grandchild that starts its own session can outlive the exec when the harness is "
        "neither root nor able to make cgroups.",
    ),
}


# Inspect AI's sandbox conformance checks (inspect_ai.util._sandbox.self_check) that a backend,
# run as an Inspect sandbox provider (sandbox/inspect_provider.py), fails on purpose, and why.
# tests/test_inspect_sandbox.py runs every check and expects exactly these to fail.
_NO_ROOT = ("every program runs as one unprivileged user; there is no root (or other user) to "
            "run as, so `user=` other than nobody raises SandboxUserUnsupportedError")
INSPECT_DIFFERENCES: dict[str, dict[str, str]] = {
    "bwrap": {
        "test_exec_as_user": _NO_ROOT,
        # /tmp is a fresh tmpfs for each exec: what must last goes in the workdir. Binding a
        # persistent host directory there instead would be bound by path each exec, and a
        # program could swap that path for a symlink to a host directory.
        "test_read_and_write_file_including_directory_absolute": "/tmp is private to each exec",
        "test_write_text_file_is_directory": "/tmp is private to each exec",
        "test_write_binary_file_is_directory": "/tmp is private to each exec",
        "test_cwd_absolute": "/tmp is private to each exec",
        # Only /usr (and the system library directories) of the host are mounted: no /etc.
        "test_read_file_is_directory": "there is no /etc in the sandbox (the check reads /etc)",
        "test_exec_permission_error": "there is no /etc in the sandbox (the check runs /etc/passwd)",
    },
    "docker": {
        "test_exec_as_user": _NO_ROOT,
    },
}
