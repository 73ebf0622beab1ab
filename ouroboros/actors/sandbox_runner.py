"""SandboxRunner: owns sandboxes of one backend and runs programs in them.

Two ways to use it:
- `exec(program, files, limits)` with no session: a throwaway environment per call (a fresh
  workdir; for docker a fresh container), as the tasks judge wants.
- sessions for multi-step experiments: `open_session()` returns an id whose sandbox (workdir,
  warm container, built environment) persists across `exec(..., session=id)`, `write_file`,
  `read_file` and `build`, until `close_session(id)`.

Opening a session hands out a spare: a fresh sandbox that was started in the background
(`sandbox.spares` of them per runner: workdir made, warm interpreter or container up) and that
nothing has used, so an experiment's first program does not wait for the sandbox to boot.

A runner may run several calls at once (`sandbox.concurrency`, a threaded actor): sessions are
independent, and each concurrent scratch exec takes its own idle scratch sandbox.

Credentials (`sandbox.env_from`, read from this process's environment) are passed only into
session sandboxes, where experiments run; one-shot execs (tasks' candidates, goals' reference
programs) never hold them. Sandbox output is redacted here, as it leaves the runner: those
credentials and their common encodings never reach a caller, whatever the program printed
(ouroboros/secrets.py).

A runner that dies mid-exec leaves nothing behind: its janitor (`sandbox/reaper.py`) removes
its workdirs, containers and sandbox-uid processes, and the caller's `ray.get` raises
`RayActorError`, so it can retry on another runner.
"""
from __future__ import annotations

import logging
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

from ouroboros import secrets as secrets_mod
from ouroboros.config import SandboxConfig
from ouroboros.sandbox import Limits, Sandbox, SandboxError, sandbox_class
from ouroboros.types import ExecResult

log = logging.getLogger(__name__)


def limits_from(cfg: SandboxConfig) -> Limits:
    return Limits(timeout_s=cfg.timeout_s, memory_mb=cfg.memory_mb, pids=cfg.pids,
                  output_bytes=cfg.output_bytes, disk_mb=cfg.disk_mb, cpus=cfg.cpus)


def make_sandbox(cfg: SandboxConfig, run_id: str = "adhoc", session: bool = False) -> Sandbox:
    """A sandbox from config. A session's bwrap sandbox keeps a warm interpreter (`sandbox.warm`):
    its programs fork from it instead of starting Python; a scratch one runs once, so it does not."""
    # Credentials (read from this process's environment) go only where an experiment may use
    # them: its session. A one-shot exec runs a task's candidate or a goal's reference program
    # (anyone's code), which has no use for them.
    env = {**cfg.env, **(secrets_mod.resolve(cfg.env_from) if session else {})}
    kwargs = {"limits": limits_from(cfg), "env": env, "network": cfg.network}
    if cfg.backend == "bwrap":
        kwargs["warm"] = session and cfg.warm
    if cfg.backend == "process":
        kwargs["unsafe"] = cfg.unsafe
    if cfg.backend == "docker":
        kwargs.update(image=cfg.image, run_id=run_id, gpus=cfg.gpus, build_timeout_s=cfg.build_timeout_s,
                      build_memory_mb=cfg.build_memory_mb, build_network=cfg.build_network, keep_images=cfg.keep_images)
    return sandbox_class(cfg.backend)(**kwargs)


class SandboxRunner:
    def __init__(self, cfg: SandboxConfig, run_id: str = "adhoc", sessions: bool = False) -> None:
        """`sessions`: this runner will serve experiment sessions, so start its spares now."""
        self.cfg = cfg
        self.run_id = run_id
        self.redactor = secrets_mod.Redactor(secrets_mod.resolve(cfg.env_from))
        self.scratch = make_sandbox(cfg, run_id)  # checks the backend works here, at start-up
        self._idle_scratch: list[Sandbox] = [self.scratch]
        self._scratch_all: list[Sandbox] = [self.scratch]
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(cfg.concurrency)  # execs running at once
        self.sessions: dict[str, Sandbox] = {}
        self._holders: dict[str, str] = {}  # session -> who opened it (close_sessions_of)
        self.processes: dict[str, tuple] = {}  # start_process: key -> (sandbox, hosted object)
        self._spares: list[Sandbox] = []
        self._closing = False
        self._refill = threading.Event()
        self._spare_thread: threading.Thread | None = None  # started by the first session
        self._closer = ThreadPoolExecutor(1, thread_name_prefix="sandbox-teardown")
        self._teardowns: list = []
        self.counts = {"sessions_from_spares": 0, "sessions_cold": 0}
        if sessions:
            self._start_spares()

    def _start_spares(self) -> None:
        if self.cfg.spares <= 0:
            return
        with self._lock:
            if self._spare_thread is None or not self._spare_thread.is_alive():
                self._closing = False
                self._spare_thread = threading.Thread(target=self._keep_spares, name="sandbox-spares", daemon=True)
                self._spare_thread.start()
        self._refill.set()

    def _keep_spares(self) -> None:
        """Keep `cfg.spares` started sandboxes ready, one at a time (boots are CPU work)."""
        while True:
            self._refill.wait()
            self._refill.clear()
            while not self._closing:
                with self._lock:
                    if len(self._spares) >= self.cfg.spares:
                        break
                try:
                    spare = make_sandbox(self.cfg, self.run_id, session=True)
                    spare.prewarm()
                except Exception as exc:  # the session opens cold instead; say why once
                    log.warning("could not start a spare sandbox (%s); sessions start cold", exc)
                    return
                with self._lock:
                    if self._closing:
                        spare.cleanup()
                        return
                    self._spares.append(spare)
            if self._closing:
                return

    def _limits(self, limits: dict | None) -> Limits | None:
        return self.scratch.limits.override(**limits) if limits else None

    def _session(self, session: str) -> Sandbox:
        try:
            return self.sessions[session]
        except KeyError:
            raise SandboxError(f"no open sandbox session {session!r} on this runner (a runner that was "
                               "restarted has lost the sessions it held, with their files)") from None

    def exec(self, program: str | None = None, files: dict | None = None, limits: dict | None = None,
             *, command: list[str] | None = None, session: str | None = None) -> ExecResult:
        with self._slots:
            return self.redactor.result(self._exec(program, files, limits, command, session))

    def _exec(self, program, files, limits, command, session) -> ExecResult:
        if session is not None:
            return self._session(session).exec(program, command=command, files=files, limits=self._limits(limits))
        with self._lock:
            scratch = self._idle_scratch.pop() if self._idle_scratch else None
        if scratch is None:
            scratch = make_sandbox(self.cfg, self.run_id)
            with self._lock:
                self._scratch_all.append(scratch)
        try:
            return scratch.exec(program, command=command, files=files, limits=self._limits(limits))
        finally:
            scratch.reset()
            with self._lock:
                self._idle_scratch.append(scratch)

    def open_session(self, holder: str | None = None) -> str:
        """A new session. `holder` names who opened it (an experiment agent's owner token), so
        that if it dies mid-cycle its sessions can be closed for it (`close_sessions_of`)."""
        session = secrets.token_hex(8)
        with self._lock:
            sandbox = self._spares.pop(0) if self._spares else None
            self.counts["sessions_from_spares" if sandbox else "sessions_cold"] += 1
        if sandbox is None:
            sandbox = make_sandbox(self.cfg, self.run_id, session=True)
        self.sessions[session] = sandbox
        if holder is not None:
            self._holders[session] = holder
        self._start_spares()
        return session

    def write_file(self, session: str, path: str, data: str | bytes) -> None:
        self._session(session).write_file(path, data)

    def read_file(self, session: str, path: str, max_bytes: int = 16 << 20) -> bytes:
        data = self._session(session).read_file(path, max_bytes)
        return self.redactor.redact_bytes(data) if self.redactor else data

    def build(self, session: str, dockerfile: str, files: dict | None = None) -> str:
        """Build an environment and switch the session to it; raises BuildFailed with the log."""
        from ouroboros.sandbox import BuildFailed

        sandbox = self._session(session)
        try:
            environment = sandbox.build(dockerfile, files)
        except BuildFailed as exc:  # a RUN step's output is sandbox output: it leaves redacted
            if not self.redactor:
                raise
            raise BuildFailed(self.redactor.redact(str(exc)), self.redactor.redact(exc.log)) from None
        sandbox.use_environment(environment)
        return sandbox.environment  # another id if a prune made it build the environment again

    def close_session(self, session: str) -> None:
        """Close the session; its sandbox is torn down in the background (the caller's experiment
        is over and need not wait for a namespace to die). `cleanup` waits for every teardown."""
        sandbox = self.sessions.pop(session, None)
        self._holders.pop(session, None)
        if sandbox is not None:
            with self._lock:
                self._teardowns = [t for t in self._teardowns if not t.done()]
                self._teardowns.append(self._closer.submit(sandbox.cleanup))

    def close_sessions_of(self, holder: str) -> int:
        """Close every session `holder` opened: it died with them open (its cycles never reach
        their own `close_session`), and each would otherwise keep a container or a workdir for
        the rest of the run. Returns how many were closed."""
        mine = [s for s, h in list(self._holders.items()) if h == holder]
        for session in mine:
            self.close_session(session)
        return len(mine)

    # -- long-lived processes (a survival episode's object) ----------------------------------
    def start_process(self, factory, *args) -> str:
        """Start `factory(sandbox, *args)` on a fresh sandbox of this runner, and keep it here: the
        object (e.g. `envs/survival/episode.EpisodeProcess`) owns a process and its channel, which
        never leave this runner. No credentials reach it (a scratch sandbox's environment)."""
        sandbox = make_sandbox(self.cfg, self.run_id)
        try:
            hosted = factory(sandbox, *args)
        except BaseException:
            sandbox.cleanup()
            raise
        key = secrets.token_hex(8)
        with self._lock:
            self.processes[key] = (sandbox, hosted)
        return key

    def call_process(self, key: str, method: str, *args):
        """Call a public method of a hosted object; what comes back leaves redacted."""
        if method.startswith("_"):
            raise SandboxError(f"{method!r} is not a public method of a hosted process")
        return self._redact_tree(getattr(self._hosted(key)[1], method)(*args))

    def stop_process(self, key: str):
        """Close a hosted object (its `close()`), then its sandbox; safe to call twice."""
        with self._lock:
            entry = self.processes.pop(key, None)
        if entry is None:
            return None
        sandbox, hosted = entry
        try:
            return self._redact_tree(hosted.close())
        finally:
            sandbox.cleanup()

    def _hosted(self, key: str):
        try:
            return self.processes[key]
        except KeyError:
            raise SandboxError(f"no hosted process {key!r} on this runner") from None

    def _redact_tree(self, value):
        if not self.redactor:
            return value
        if isinstance(value, str):
            return self.redactor.redact(value)
        if isinstance(value, dict):
            return {k: self._redact_tree(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._redact_tree(v) for v in value)
        return value

    def cleanup(self) -> None:
        for key in list(self.processes):
            try:
                self.stop_process(key)
            except Exception as exc:
                log.warning("stopping a hosted process failed: %s", exc)
        with self._lock:
            self._closing = True
            spares, self._spares = self._spares, []
        self._refill.set()
        for session in list(self.sessions):
            self.close_session(session)
        with self._lock:
            teardowns, self._teardowns = self._teardowns, []
        for done in teardowns:
            try:
                done.result()
            except Exception as exc:
                log.warning("tearing down a sandbox failed: %s", exc)
        for sandbox in [*spares, *self._scratch_all]:
            sandbox.cleanup()

    def stats(self) -> dict:
        """How sessions were opened: from a started spare, or cold."""
        with self._lock:
            return {**self.counts, "spares_ready": len(self._spares)}

    def owner(self) -> str:
        """This runner's owner token (`<pid>-<start time>`), as its leftovers are labelled."""
        from ouroboros.sandbox import reaper

        return reaper.owner_token()
