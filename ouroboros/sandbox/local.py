"""What the two host-process backends (`bwrap`, `process`) share: a host workdir per experiment,
a sandbox uid per workdir, and one limited child process per exec (`runner.run_limited`).

They differ only in the command line they start, which each supplies through `_command`.
"""
from __future__ import annotations

import abc
from typing import Sequence

from ouroboros.sandbox import reaper, runner
from ouroboros.sandbox.base import Limits, Sandbox, SandboxError
from ouroboros.sandbox.workdir import HostWorkdir, check_path
from ouroboros.types import ExecResult

PROGRAM_FILE = "main.py"

_reaped = False


def reap_once() -> None:
    """The start-up sweep, once per process: leftover workdirs of dead owners on this host."""
    global _reaped
    if not _reaped:
        _reaped = True
        reaper.reap()


class LocalSandbox(Sandbox):
    # Whether `program` execs may run in a warm interpreter (`warm.py`); only bwrap has one.
    warm = False

    def __init__(self, limits: Limits | None, python: str, env: dict[str, str] | None, network: bool):
        self.limits = limits or Limits()
        self._zygote = None
        self.python = python
        self.network = network
        self.extra_env = dict(env or {})
        runner.base_env("/", self.extra_env)  # validate now, not on the first exec
        self._workdir: HostWorkdir | None = None
        self._closed = False  # set by cleanup(): a call still in flight then makes nothing new
        reap_once()

    @abc.abstractmethod
    def _command(self, workdir: str, argv: list[str], limits: Limits) -> tuple[list[str], str, dict[str, str]]:
        """(host argv, host cwd, host env) that runs `argv` in the sandbox over `workdir`."""

    def _cold_command(self, workdir: str, argv: list[str], limits: Limits) -> tuple[list[str], str, dict[str, str]]:
        """The command line of a cold exec (the warm interpreter starts from `_command` itself)."""
        return self._command(workdir, argv, limits)

    def _ids(self) -> tuple[int, int] | None:
        """The workdir's sandbox uid: a fresh unprivileged one when we are root, else None."""
        return runner.sandbox_ids()

    def workdir(self) -> HostWorkdir:
        if self._closed:
            raise SandboxError("this sandbox was closed")
        if self._workdir is None:
            ids = self._ids()
            if ids is not None:  # the janitor kills this uid's processes if we die mid-exec
                reaper.Janitor.ensure().track_uid(ids[0])
            else:
                reaper.Janitor.ensure()
            self._workdir = HostWorkdir(reaper.owner_token(), ids, self.limits.disk_mb)
        return self._workdir

    def write_file(self, path: str, data: str | bytes) -> None:
        self.workdir().write(path, data)

    def read_file(self, path: str, max_bytes: int = 16 << 20) -> bytes:
        return self.workdir().read(path, max_bytes)

    def exec(
        self,
        program: str | None = None,
        *,
        command: Sequence[str] | None = None,
        files: dict[str, str | bytes] | None = None,
        limits: Limits | None = None,
    ) -> ExecResult:
        argv = _argv(program, command, self.python)
        names = {check_path(name): data for name, data in (files or {}).items()}
        limits = limits or self.limits
        workdir = self.workdir()
        failed = write_inputs(workdir, program, names)
        if failed is not None:
            return failed
        warm = self._warm_exec(limits) if program is not None else None
        if warm is not None:
            return self._result(*warm, limits)
        host_argv, cwd, env = self._cold_command(workdir.path, argv, limits)
        cgroup = runner.ChildCgroup(limits)
        try:
            outcome = runner.run_limited(host_argv, cwd=cwd, env=env, limits=limits, cgroup=cgroup, ids=workdir.ids)
            oom = cgroup.oom_killed()
        finally:
            cgroup.remove()
        return self._result(outcome, oom, limits)

    def _result(self, outcome: runner.Outcome, oom: bool, limits: Limits) -> ExecResult:
        return runner.build_result(outcome, oom)

    def prewarm(self) -> None:
        self.workdir()
        self._warm_interpreter(self.limits)

    def resident_pids(self) -> set[int]:
        zygote = self._zygote
        return set(zygote.baseline) if zygote is not None and zygote.alive else set()

    def _warm_exec(self, limits: Limits) -> tuple[runner.Outcome, bool] | None:
        """(outcome, oom) from the warm interpreter, or None to run cold. An interpreter found
        dead before the program reached it (nothing ran) is replaced once; then cold."""
        from ouroboros.sandbox.warm import InterpreterGone

        for _ in range(2):
            zygote = self._warm_interpreter(limits)
            if zygote is None:
                return None
            try:
                return zygote.exec(limits)
            except InterpreterGone:
                continue
        return None

    def _warm_interpreter(self, limits: Limits):
        """This workdir's warm interpreter (started on first use), or None for a cold exec."""
        if not self.warm:
            return None
        zygote = self._zygote
        if zygote is not None and not zygote.alive:
            zygote.stop()
            zygote = self._zygote = None
        if zygote is None:
            from ouroboros.sandbox.warm import WarmPython

            workdir = self.workdir()
            command, cwd, env = self._command(workdir.path, [self.python], self.limits)
            try:
                zygote = self._zygote = WarmPython(command, cwd, env, self.limits, workdir.ids)
            except (OSError, RuntimeError) as exc:
                runner.log.warning("no warm interpreter in this sandbox (%s); running programs cold", exc)
                self.warm = False
                return None
        return zygote if zygote.fits(limits) else None

    def reset(self) -> None:
        if self._zygote is not None:
            self._zygote.stop()
            self._zygote = None
        if self._workdir is not None:
            workdir, self._workdir = self._workdir, None
            # Every process of the uid was started in a pids cgroup and killed with it; a /proc
            # scan for stragglers is only needed without one.
            if workdir.ids is not None and "pids" not in runner.cgroup_bases():
                runner.kill_uid(workdir.ids[0])
            workdir.remove()

    def cleanup(self) -> None:
        self._closed = True  # nothing new after this: a late call must not leave a workdir behind
        self.reset()
        runner.remove_stale_cgroups(wait_s=1.0)


def write_inputs(workdir: HostWorkdir, program: str | None, names: dict) -> ExecResult | None:
    """Write `main.py` and the files into the workdir; an ExecResult with `error` if that fails."""
    if program is not None and PROGRAM_FILE in names:
        raise ValueError(f"sandbox files must not contain {PROGRAM_FILE!r}: that is the program itself")
    try:
        if program is not None:
            workdir.write(PROGRAM_FILE, program)
        for name, data in names.items():
            workdir.write(name, data)
    except (ValueError, OSError) as exc:
        # What an earlier program left (a directory named main.py, a full workdir) is this
        # exec's failure, reported as its result, not a crash of the caller.
        return ExecResult(exit_code=-1, stdout="", stderr="", timed_out=False, oom=False, duration_s=0.0,
                          truncated=False, error=f"could not write the program's files into the workdir: {exc}")
    return None


def _argv(program: str | None, command: Sequence[str] | None, python: str) -> list[str]:
    if (program is None) == (command is None):
        raise ValueError("exec takes exactly one of `program` (Python source) or `command` (an argv list)")
    if command is not None:
        argv = list(command)
        if not argv or not all(isinstance(part, str) and "\0" not in part for part in argv):
            raise ValueError(f"sandbox command must be a non-empty list of strings, got {command!r}")
        return argv
    if not isinstance(program, str):
        raise ValueError(f"sandbox program must be Python source text, got {type(program).__name__}")
    return [python, PROGRAM_FILE]
