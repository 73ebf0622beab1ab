"""SandboxRunner: owns sandboxes of one backend and runs programs in them.

Two ways to use it:
- `exec(program, files, limits)` with no session: a throwaway environment per call (a fresh
  workdir; for docker a fresh container), as the tasks judge wants.
- sessions for multi-step experiments: `open_session()` returns an id whose sandbox (workdir,
  warm container, built environment) persists across `exec(..., session=id)`, `write_file`,
  `read_file` and `build`, until `close_session(id)`.

A runner that dies mid-exec leaves nothing behind: its janitor (`sandbox/reaper.py`) removes
its workdirs, containers and sandbox-uid processes, and the caller's `ray.get` raises
`RayActorError`, so it can retry on another runner.
"""
from __future__ import annotations

import secrets

from ouroboros.config import SandboxConfig
from ouroboros.sandbox import Limits, Sandbox, SandboxError, sandbox_class
from ouroboros.types import ExecResult


def limits_from(cfg: SandboxConfig) -> Limits:
    return Limits(timeout_s=cfg.timeout_s, memory_mb=cfg.memory_mb, pids=cfg.pids,
                  output_bytes=cfg.output_bytes, disk_mb=cfg.disk_mb, cpus=cfg.cpus)


def make_sandbox(cfg: SandboxConfig, run_id: str = "adhoc") -> Sandbox:
    kwargs = {"limits": limits_from(cfg), "env": dict(cfg.env), "network": cfg.network}
    if cfg.backend == "process":
        kwargs["unsafe"] = cfg.unsafe
    if cfg.backend == "docker":
        kwargs.update(image=cfg.image, run_id=run_id, gpus=cfg.gpus, build_timeout_s=cfg.build_timeout_s,
                      build_memory_mb=cfg.build_memory_mb, build_network=cfg.build_network)
    return sandbox_class(cfg.backend)(**kwargs)


class SandboxRunner:
    def __init__(self, cfg: SandboxConfig, run_id: str = "adhoc") -> None:
        self.cfg = cfg
        self.run_id = run_id
        self.scratch = make_sandbox(cfg, run_id)  # checks the backend works here, at start-up
        self.sessions: dict[str, Sandbox] = {}

    def _limits(self, limits: dict | None) -> Limits | None:
        return self.scratch.limits.override(**limits) if limits else None

    def _session(self, session: str) -> Sandbox:
        try:
            return self.sessions[session]
        except KeyError:
            raise SandboxError(f"no open sandbox session {session!r} on this runner") from None

    def exec(self, program: str | None = None, files: dict | None = None, limits: dict | None = None,
             *, command: list[str] | None = None, session: str | None = None) -> ExecResult:
        if session is not None:
            return self._session(session).exec(program, command=command, files=files, limits=self._limits(limits))
        try:
            return self.scratch.exec(program, command=command, files=files, limits=self._limits(limits))
        finally:
            self.scratch.reset()

    def open_session(self) -> str:
        session = secrets.token_hex(8)
        self.sessions[session] = make_sandbox(self.cfg, self.run_id)
        return session

    def write_file(self, session: str, path: str, data: str | bytes) -> None:
        self._session(session).write_file(path, data)

    def read_file(self, session: str, path: str, max_bytes: int = 16 << 20) -> bytes:
        return self._session(session).read_file(path, max_bytes)

    def build(self, session: str, dockerfile: str, files: dict | None = None) -> str:
        """Build an environment and switch the session to it; raises BuildFailed with the log."""
        sandbox = self._session(session)
        environment = sandbox.build(dockerfile, files)
        sandbox.use_environment(environment)
        return environment

    def close_session(self, session: str) -> None:
        sandbox = self.sessions.pop(session, None)
        if sandbox is not None:
            sandbox.cleanup()

    def cleanup(self) -> None:
        for session in list(self.sessions):
            self.close_session(session)
        self.scratch.cleanup()

    def owner(self) -> str:
        """This runner's owner token (`<pid>-<start time>`), as its leftovers are labelled."""
        from ouroboros.sandbox import reaper

        return reaper.owner_token()
