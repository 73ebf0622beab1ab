"""The interface every sandbox backend implements, and the registry of names."""
from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, replace

from ouroboros.types import ExecResult


class SandboxUnavailable(RuntimeError):
    """The sandbox backend cannot run on this host. The message names what to install."""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one exec. Each has a config default and a per-call override."""

    timeout_s: float = 10.0
    memory_mb: int = 512
    pids: int = 64
    output_bytes: int = 1 << 20  # per stream
    file_size_mb: int = 256
    cpu_s: int | None = None  # CPU-seconds rlimit; None derives it from the wall timeout

    def override(self, **changes) -> "Limits":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


class Sandbox(abc.ABC):
    """Runs untrusted Python in isolation and reports what happened as an ExecResult."""

    name: str = ""

    @abc.abstractmethod
    def exec(self, program: str, files: dict[str, str] | None = None, limits: Limits | None = None) -> ExecResult:
        """Run `program` (Python source) with `files` written into a fresh workdir."""

    def cleanup(self) -> None:
        """Release anything this sandbox holds. Safe to call twice."""


_REGISTRY = {
    "bwrap": "ouroboros.sandbox.bwrap:BwrapSandbox",
    "process": "ouroboros.sandbox.process:ProcessSandbox",
}


def sandbox_names() -> list[str]:
    return sorted(_REGISTRY)


def sandbox_class(name: str) -> type[Sandbox]:
    if name not in _REGISTRY:
        raise SandboxUnavailable(f"unknown sandbox backend {name!r}; expected one of {sandbox_names()}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)
