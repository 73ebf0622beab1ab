"""The `process` backend: Python as a plain child process. NOT a security boundary.

It gets the limits the `bwrap` backend gets (rlimits, per-exec cgroups where usable, wall
timeout with a kill of its whole tree, output caps, a cleared environment plus the allowlist,
a fresh temporary workdir as cwd and HOME, and an unprivileged host uid when the harness is
root), but no namespaces: the program sees the host's files, processes and network. For
development and trusted programs only; it refuses to start unless configured `unsafe: true`.
"""
from __future__ import annotations

import logging
import shutil

from ouroboros.sandbox import runner
from ouroboros.sandbox.base import Limits, Sandbox, SandboxUnavailable
from ouroboros.types import ExecResult

log = logging.getLogger(__name__)


class ProcessSandbox(Sandbox):
    name = "process"

    def __init__(
        self,
        limits: Limits | None = None,
        python: str = "/usr/bin/python3",
        env: dict[str, str] | None = None,
        network: bool = False,
        unsafe: bool = False,
    ):
        if not unsafe:
            raise SandboxUnavailable(
                "the 'process' sandbox backend has no isolation: programs see the host's files, "
                "processes and network. Set `unsafe: true` in the sandbox config to use it anyway "
                "(trusted programs only), or use the 'bwrap' backend (Debian package 'bubblewrap')"
            )
        resolved = shutil.which(python)
        if resolved is None:
            raise SandboxUnavailable(f"sandbox python {python!r} not found or not executable")
        self.limits = limits or Limits()
        self.python = resolved
        self.network = network
        self.extra_env = dict(env or {})
        runner.base_env("/", self.extra_env)  # validate now, not on the first exec

    def exec(self, program: str, files: dict[str, str] | None = None, limits: Limits | None = None) -> ExecResult:
        log.warning(
            "process sandbox: running a program WITHOUT isolation (host files, processes%s visible)",
            "" if self.network else " and network",
        )
        limits = limits or self.limits
        ids = runner.sandbox_ids()

        def command(workdir: str) -> tuple[list[str], str, dict[str, str]]:
            env = runner.base_env(workdir, self.extra_env)
            env.setdefault("TMPDIR", workdir)
            return [self.python, "main.py"], workdir, env

        outcome, cgroup_oom = runner.run_in_workdir(program, files, limits, ids, command)
        return runner.build_result(outcome, cgroup_oom)

    def cleanup(self) -> None:
        runner.remove_stale_cgroups(wait_s=1.0)
