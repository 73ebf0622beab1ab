"""Our sandboxes as Inspect AI sandbox environments: `ouroboros-bwrap` and `ouroboros-docker`.

An Inspect eval names them like any provider (the package's `inspect_ai` entry point registers
them when Inspect starts):

    Task(..., sandbox="ouroboros-docker")                      # sandbox.* defaults
    Task(..., sandbox=("ouroboros-bwrap", "sandbox.yaml"))     # a YAML file of sandbox.* keys

Each sample gets one `Sandbox` (a workdir, and for docker one warm container), exactly as an
experiment does, with the same limits, output caps and cleanup (janitor and reaper).

Inspect's interface has more than ours: stdin, a working directory, environment variables per
exec, and files anywhere in the sandbox, not only the workdir. They are given by a small Python
shim that runs inside the sandbox, as the sandboxed user, in front of the command:
- `exec`: the shim reads its spec (argv, cwd, env, and stdin staged as a workdir file), sets
  them up and `execvp`s the command, so the exit status, signals and the process tree are the
  command's own, and the sandbox's timeout kills the whole tree;
- `read_file` / `write_file`: the shim copies between the path and a staged file in the
  workdir's `.inspect-io/`, which the harness writes or reads host-side. Because the copy runs
  as the sandboxed user, the sandbox's own permissions apply (a file made read-only in there
  cannot be overwritten from outside), and errors come back as FileNotFoundError,
  PermissionError and IsADirectoryError with the path.

What differs from Inspect's docker sandbox, and why, is declared in `sandbox/traits.py`
(`INSPECT_DIFFERENCES`); `tests/test_inspect_sandbox.py` runs Inspect's own self-check suite
on both backends and checks that exactly those differences fail.
"""
from __future__ import annotations

import json
import logging
import secrets
import threading
from pathlib import Path
from typing import Any, Union

import anyio
from inspect_ai.util import (
    ExecResult,
    OutputLimitExceededError,
    SandboxEnvironment,
    SandboxEnvironmentConfigType,
    SandboxEnvironmentLimits,
    SandboxUnavailableError,
    SandboxUserUnsupportedError,
    sandboxenv,
)

from ouroboros.config import SandboxConfig
from ouroboros.sandbox.base import Sandbox

log = logging.getLogger(__name__)

STAGE = ".inspect-io"
MARK = "ouroboros-inspect:"
SANDBOX_USERS = ("nobody", "65534")  # what every program runs as; root never

# Runs inside the sandbox. Kept to the standard library and to what it must do: set up, then
# get out of the way (execvp), or copy one file. Its errors are one marker line on stderr.
SHIM = r"""
import errno, json, os, stat, sys
spec_path = sys.argv[1]
with open(spec_path) as f:
    spec = json.load(f)
os.unlink(spec_path)
# The nonce is only in the spec, which is gone before the command runs: a command cannot
# print a marker line the harness would take for the shim's.
MARK = "ouroboros-inspect: " + spec["nonce"]

def fail(exc, path, code=3):
    name = errno.errorcode.get(exc.errno or 0, "EIO")
    sys.stderr.write("%s %s: %s: %s\n" % (MARK, name, path, exc.strerror or exc))
    sys.exit(code)

op = spec["op"]
if op == "exec":
    if spec.get("stdin") is not None:
        fd = os.open(spec["stdin"], os.O_RDONLY)
        os.unlink(spec["stdin"])
        os.dup2(fd, 0)
        os.close(fd)
    try:
        if spec.get("cwd"):
            os.chdir(spec["cwd"])
    except OSError as exc:
        fail(exc, spec["cwd"], 1)
    os.environ.update(spec.get("env") or {})
    cmd = spec["cmd"]
    # As pid 1 (a cold bwrap exec) the command would ignore every signal it has no handler
    # for, `kill $$` included: run it as a child, and exit as it did (128 + N for signal N).
    child = os.fork() if os.getpid() == 1 else 0
    if child:
        while True:
            pid, status = os.wait()
            if pid == child:
                sys.exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status)
                         else 128 + os.WTERMSIG(status))
    try:
        os.execvp(cmd[0], cmd)
    except FileNotFoundError as exc:
        fail(exc, cmd[0], 127)
    except OSError as exc:
        fail(exc, cmd[0], 126)
elif op == "read":
    path, limit = spec["path"], spec["limit"]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        if not stat.S_ISREG(info.st_mode):  # a device or a pipe has no size and may not end
            raise OSError(errno.EINVAL, "not a regular file", path)
        if info.st_size > limit:
            raise OSError(errno.EFBIG, "%d bytes" % info.st_size, path)
        copied = 0
        with os.fdopen(fd, "rb") as src, open(spec["stage"], "wb") as dst:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                copied += len(chunk)
                if copied > limit:  # it grew while being read
                    raise OSError(errno.EFBIG, "over %d bytes" % limit, path)
                dst.write(chunk)
    except OSError as exc:
        fail(exc, path)
elif op == "write":
    path = spec["path"]
    try:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        with open(spec["stage"], "rb") as src, open(path, "wb") as dst:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                dst.write(chunk)
    except OSError as exc:
        fail(exc, path)
"""

_ERRORS = {"ENOENT": FileNotFoundError, "EACCES": PermissionError, "EPERM": PermissionError,
           "EISDIR": IsADirectoryError, "ENOTDIR": NotADirectoryError, "EROFS": PermissionError}


def load_config(config: SandboxEnvironmentConfigType | None) -> SandboxConfig:
    """The sandbox section from Inspect's `config`: None (defaults), a SandboxConfig, a dict, or
    the path of a YAML file holding `sandbox:` keys (or the keys themselves)."""
    if config is None:
        return SandboxConfig()
    if isinstance(config, SandboxConfig):
        return config
    if isinstance(config, dict):
        return SandboxConfig(**config)
    if isinstance(config, str):
        import yaml

        data = yaml.safe_load(Path(config).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{config}: expected a mapping of sandbox settings")
        return SandboxConfig(**data.get("sandbox", data))
    raise TypeError(f"an ouroboros sandbox takes a YAML path or sandbox settings, not {type(config).__name__}")


class OuroborosEnvironment(SandboxEnvironment):
    """One sample's sandbox. Subclasses name the backend."""

    backend = ""

    def __init__(self, sandbox: Sandbox, cfg: SandboxConfig) -> None:
        super().__init__()
        self.sandbox, self.cfg = sandbox, cfg
        # A Sandbox serves one call at a time (its warm container or interpreter is shared
        # state), so one sample's calls take turns; samples run in parallel.
        self._lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------
    @classmethod
    def config_deserialize(cls, config: dict[str, Any]) -> SandboxConfig:
        return SandboxConfig(**config)

    @classmethod
    async def sample_init(cls, task_name: str, config: SandboxEnvironmentConfigType | None,
                          metadata: dict[str, str]) -> dict[str, SandboxEnvironment]:
        from ouroboros.actors.sandbox_runner import make_sandbox

        cfg = load_config(config).model_copy(update={"backend": cls.backend})
        sandbox = await anyio.to_thread.run_sync(lambda: make_sandbox(cfg, f"inspect-{secrets.token_hex(4)}"))
        return {"default": cls(sandbox, cfg)}

    @classmethod
    async def sample_cleanup(cls, task_name: str, config: SandboxEnvironmentConfigType | None,
                             environments: dict[str, SandboxEnvironment], interrupted: bool) -> None:
        for env in environments.values():
            if isinstance(env, OuroborosEnvironment):
                await anyio.to_thread.run_sync(env.sandbox.cleanup)

    # -- the shim -------------------------------------------------------------------------------
    def _run_shim(self, spec: dict, timeout_s: float, output_bytes: int, files: dict | None = None):
        """Run the shim on `spec` with `files` staged first; the caller holds `_lock`. Whatever
        the shim did not consume is removed host-side afterwards."""
        spec_path = f"{STAGE}/{secrets.token_hex(8)}.json"
        spec = {**spec, "nonce": secrets.token_hex(8)}
        limits = self.sandbox.limits.override(timeout_s=timeout_s, output_bytes=output_bytes)
        try:
            for rel, data in (files or {}).items():
                self.sandbox.write_file(rel, data)
            self.sandbox.write_file(spec_path, json.dumps(spec))
            # -I -S: the workdir (the program's, and the cwd) must not be on the shim's import
            # path, nor a user site under HOME=/work: a program could leave a module there
            # that every later shim would run, and forge what the scorer reads.
            result = self.sandbox.exec(command=["python3", "-I", "-S", "-c", SHIM, spec_path], limits=limits)
        finally:
            self._unlink(spec_path, *(files or {}))
        return result, spec["nonce"]

    def _unlink(self, *paths: str) -> None:
        for rel in paths:
            try:
                self.sandbox.workdir().unlink(rel)
            except (OSError, ValueError) as exc:  # a program may have swapped the folder for a link
                log.warning("could not remove staged file %s: %s", rel, exc)

    @staticmethod
    def _marker(stderr: str, nonce: str) -> tuple[str, str] | None:
        line = stderr.rstrip("\n").rpartition("\n")[2]
        mark = f"{MARK} {nonce} "
        if not line.startswith(mark):
            return None
        name, _, rest = line[len(mark):].partition(": ")
        return name, rest

    def _raise_for(self, result, nonce: str, path: str) -> None:
        if result.error:
            raise SandboxUnavailableError(f"the sandbox could not run the file operation on {path!r}: {result.error}")
        if result.timed_out:
            raise TimeoutError(f"the file operation on {path!r} timed out")
        if result.exit_code == 0:
            return
        found = self._marker(result.stderr, nonce)
        if found is None:
            raise RuntimeError(f"the file operation on {path!r} failed (exit {result.exit_code}): "
                               f"{result.stderr[-500:]}")
        name, message = found
        if name == "EFBIG":
            raise OutputLimitExceededError(limit_str=SandboxEnvironmentLimits.MAX_READ_FILE_SIZE_STR,
                                           truncated_output=None)
        raise _ERRORS.get(name, OSError)(f"{message} ({name})")

    # -- Inspect's interface ------------------------------------------------------------------
    async def exec(self, cmd: list[str], input: str | bytes | None = None, cwd: str | None = None,
                   env: dict[str, str] | None = None, user: str | None = None, timeout: int | None = None,
                   timeout_retry: bool = True, concurrency: bool = True) -> ExecResult[str]:
        if user is not None and user not in SANDBOX_USERS:
            # Every program runs as one unprivileged user; there is no root to become.
            raise SandboxUserUnsupportedError(
                f"user {user!r} is not available: this sandbox runs every program as one unprivileged "
                f"user ({SANDBOX_USERS[0]}), never as root or another user")
        spec: dict[str, Any] = {"op": "exec", "cmd": list(cmd), "cwd": cwd, "env": dict(env or {}), "stdin": None}
        files = {}
        if input is not None:
            spec["stdin"] = f"{STAGE}/{secrets.token_hex(8)}.in"
            files[spec["stdin"]] = input.encode("utf-8") if isinstance(input, str) else bytes(input)
        timeout_s = float(timeout) if timeout else self.cfg.timeout_s
        cap = SandboxEnvironmentLimits.MAX_EXEC_OUTPUT_SIZE

        def run():
            with self._lock:
                return self._run_shim(spec, timeout_s, cap, files)

        result, nonce = await anyio.to_thread.run_sync(run)
        if result.error:
            raise SandboxUnavailableError(f"the sandbox could not run {cmd[:1]}: {result.error}")
        if result.timed_out:
            raise TimeoutError(f"{cmd[:1]} did not finish within {timeout_s:g} s and was killed")
        found = self._marker(result.stderr, nonce) if result.exit_code in (126, 127) else None
        if found is not None and result.exit_code == 126 and found[0] in ("EACCES", "EPERM"):
            raise PermissionError(f"{found[1]}")
        if result.truncated:
            raise OutputLimitExceededError(limit_str=SandboxEnvironmentLimits.MAX_EXEC_OUTPUT_SIZE_STR,
                                           truncated_output=result.stdout)
        return ExecResult(success=result.exit_code == 0, returncode=result.exit_code, stdout=result.stdout,
                          stderr=result.stderr)

    async def write_file(self, file: str, contents: str | bytes) -> None:
        stage = f"{STAGE}/{secrets.token_hex(8)}.w"
        data = contents.encode("utf-8") if isinstance(contents, str) else bytes(contents)

        def write():
            with self._lock:
                result, nonce = self._run_shim({"op": "write", "path": file, "stage": stage}, self.cfg.timeout_s,
                                               64 * 1024, {stage: data})
            self._raise_for(result, nonce, file)

        await anyio.to_thread.run_sync(write)

    async def read_file(self, file: str, text: bool = True) -> Union[str, bytes]:
        stage = f"{STAGE}/{secrets.token_hex(8)}.r"
        limit = SandboxEnvironmentLimits.MAX_READ_FILE_SIZE

        def read() -> bytes:
            with self._lock:  # the copy and the host's read of it, with no exec in between
                try:
                    result, nonce = self._run_shim({"op": "read", "path": file, "stage": stage, "limit": limit},
                                                   self.cfg.timeout_s, 64 * 1024)
                    self._raise_for(result, nonce, file)
                    return self.sandbox.read_file(stage, max_bytes=limit)
                finally:
                    self._unlink(stage)

        data = await anyio.to_thread.run_sync(read)
        # newline="" semantics: the text as written, \r\n kept.
        return data.decode("utf-8") if text else data


@sandboxenv(name="ouroboros-bwrap")
class BwrapEnvironment(OuroborosEnvironment):
    """Our bwrap sandbox (namespaces, rlimits, cgroups where available) under Inspect."""

    backend = "bwrap"


@sandboxenv(name="ouroboros-docker")
class DockerEnvironment(OuroborosEnvironment):
    """Our docker sandbox (a hardened warm container per sample) under Inspect."""

    backend = "docker"
