"""The interface every sandbox backend implements, and the registry of names.

A `Sandbox` is one environment for one experiment (as Inspect's `SandboxEnvironment` is one
per sample): a workdir that persists across its execs, and for docker one warm container.
`reset()` starts a fresh one for the next experiment; `cleanup()` releases everything.
"""
from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, replace
from typing import Sequence

from ouroboros.types import ExecResult


class SandboxUnavailable(RuntimeError):
    """The sandbox backend cannot run on this host. The message names what to install."""


class SandboxError(RuntimeError):
    """A sandbox operation failed in the harness (not the program's own failure)."""


class BuildUnsupported(SandboxError):
    """This backend cannot build environments from a Dockerfile."""


class BuildFailed(SandboxError):
    """A Dockerfile did not build, or was refused. `log` is what to show the model."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


@dataclass(frozen=True)
class Limits:
    """Resource limits for one exec. Each has a config default and a per-call override."""

    timeout_s: float = 10.0  # wall time; the whole process tree is killed
    memory_mb: int = 512  # OOM is reported as `oom`
    pids: int = 64  # processes and threads
    output_bytes: int = 1 << 20  # captured per stream; `truncated` when more was written
    disk_mb: int = 256  # written data in the workdir (and the largest single file)
    cpus: float = 1.0  # CPU share: cores' worth of CPU time per second
    cpu_s: int | None = None  # CPU-seconds rlimit; None derives it from the wall timeout

    def override(self, **changes) -> "Limits":
        unknown = set(changes) - set(self.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown sandbox limit(s) {sorted(unknown)}; expected {sorted(self.__dataclass_fields__)}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


class Sandbox(abc.ABC):
    """Runs untrusted programs in isolation and reports what happened as an ExecResult."""

    name: str = ""
    limits: Limits

    def prewarm(self) -> None:
        """Get ready for the first exec now (its workdir, warm interpreter or container), so a
        pool can hand out sandboxes that start at once. By default there is nothing to do."""

    def resident_pids(self) -> set[int]:
        """Host pids this sandbox keeps alive between execs on purpose (a warm interpreter)."""
        return set()

    @abc.abstractmethod
    def exec(
        self,
        program: str | None = None,
        *,
        command: Sequence[str] | None = None,
        files: dict[str, str | bytes] | None = None,
        limits: Limits | None = None,
    ) -> ExecResult:
        """Run Python source `program` (saved as `main.py`), or an argv `command`, in the workdir.

        `files` are written into the workdir first. Never raises for what the program does.
        """

    @abc.abstractmethod
    def write_file(self, path: str, data: str | bytes) -> None:
        """Write a file into the workdir (relative path; parents are made)."""

    @abc.abstractmethod
    def read_file(self, path: str, max_bytes: int = 16 << 20) -> bytes:
        """Read a regular file from the workdir. Symlinks and special files are refused."""

    def build(self, dockerfile: str, files: dict[str, str | bytes] | None = None,
              limits: Limits | None = None) -> str:
        """Build an environment from a Dockerfile and return its id (raises BuildFailed)."""
        raise BuildUnsupported(
            f"the {self.name!r} sandbox cannot build environments from a Dockerfile; "
            f"set sandbox.backend to 'docker' for experiments that change their environment"
        )

    def use_environment(self, environment: str) -> None:
        """Run later execs in `environment` (an id from `build`); the workdir stays."""
        raise BuildUnsupported(f"the {self.name!r} sandbox has a single fixed environment")

    @abc.abstractmethod
    def reset(self) -> None:
        """Discard the workdir (and container); the next exec starts fresh."""

    def cleanup(self) -> None:
        """Release everything this sandbox holds. Safe to call twice."""
        self.reset()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


_REGISTRY = {
    "bwrap": "ouroboros.sandbox.bwrap:BwrapSandbox",
    "docker": "ouroboros.sandbox.docker:DockerSandbox",
    "process": "ouroboros.sandbox.process:ProcessSandbox",
}


def sandbox_names() -> list[str]:
    return sorted(_REGISTRY)


def sandbox_class(name: str) -> type[Sandbox]:
    if name not in _REGISTRY:
        raise SandboxUnavailable(f"unknown sandbox backend {name!r}; expected one of {sandbox_names()}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)
