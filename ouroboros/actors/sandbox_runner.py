"""SandboxRunner: owns one sandbox backend and runs programs in it."""
from __future__ import annotations

from ouroboros.config import SandboxConfig
from ouroboros.sandbox import Limits, sandbox_class
from ouroboros.types import ExecResult


def limits_from(cfg: SandboxConfig) -> Limits:
    return Limits(timeout_s=cfg.timeout_s, memory_mb=cfg.memory_mb, pids=cfg.pids,
                  output_bytes=cfg.output_bytes, file_size_mb=cfg.file_size_mb)


class SandboxRunner:
    def __init__(self, cfg: SandboxConfig) -> None:
        kwargs = {"limits": limits_from(cfg), "env": dict(cfg.env)}
        if cfg.backend == "process":
            kwargs["unsafe"] = cfg.unsafe
        self.sandbox = sandbox_class(cfg.backend)(**kwargs)

    def exec(self, program: str, files: dict[str, str] | None = None, limits: dict | None = None) -> ExecResult:
        override = self.sandbox.limits.override(**limits) if limits else None
        return self.sandbox.exec(program, files=files, limits=override)

    def cleanup(self) -> None:
        self.sandbox.cleanup()
