"""The `process` backend: Python as a plain child process. NOT a security boundary.

It gets the limits the `bwrap` backend gets (rlimits, per-exec cgroups where usable, wall
timeout with a kill of its whole tree, output caps, a cleared environment plus the allowlist,
the workdir as cwd and HOME, and an unprivileged host uid when the harness is root), but no
namespaces: the program sees the host's files, processes and network. For development and
trusted programs only; it refuses to start unless configured `unsafe: true`, and warns on
every exec.
"""
from __future__ import annotations

import logging
import shutil

from ouroboros.sandbox import runner
from ouroboros.sandbox.base import Limits, SandboxUnavailable
from ouroboros.sandbox.local import LocalSandbox

log = logging.getLogger(__name__)


class ProcessSandbox(LocalSandbox):
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
        super().__init__(limits, resolved, env, network)

    def _command(self, workdir: str, argv: list[str], limits: Limits) -> tuple[list[str], str, dict[str, str]]:
        log.warning(
            "process sandbox: running a program WITHOUT isolation (host files, processes%s visible)",
            "" if self.network else " and network",
        )
        env = runner.base_env(workdir, self.extra_env)
        env.setdefault("TMPDIR", workdir)
        if argv[0] != self.python:  # a command: resolve it on the sandbox PATH, as bwrap does
            argv = [shutil.which(argv[0], path=env["PATH"]) or argv[0], *argv[1:]]
        return argv, workdir, env
