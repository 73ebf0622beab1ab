"""Running one Python program as a limited child process: the parts the local backends share.

`bwrap` and `process` differ only in the command line they start (bwrap wraps Python in
namespaces; process runs it bare). Everything else lives here:

- `ChildCgroup`: a per-exec cgroup (v1 `pids`, `memory` and `cpu` controllers) when the host lets us
  make one; otherwise nothing, and the rlimits alone apply.
- `sandbox_ids`: when the harness runs as root, the child is dropped to a fresh unprivileged host
  uid, so RLIMIT_NPROC is enforced (the kernel does not enforce it for root) and a program
  that escapes its namespaces is not root on the host.
- `run_limited`: spawn with rlimits (in `preexec_fn`) in a new session, read stdout and stderr
  with a per-stream cap while draining the rest, kill the whole tree at the wall timeout or
  as soon as the main process exits, and build the `ExecResult`.

Exit codes follow the shell convention: a child killed by signal N reports 128 + N (this is
also what bwrap reports for the program it ran).
"""
from __future__ import annotations

import atexit
import errno
import functools
import logging
import math
import os
import re
import resource
import secrets
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from ouroboros.sandbox.base import Limits, SandboxUnavailable
from ouroboros.types import ExecResult

log = logging.getLogger(__name__)

MIB = 1 << 20
READ_CHUNK = 1 << 16
STDERR_TAIL = 8192  # bytes of stderr kept past the cap, to see how the program ended
EXIT_GRACE_S = 0.25  # after the main process exits, how long to wait for the pipes to close
KILL_DRAIN_S = 0.5  # after a timeout kill, how long to keep reading what was already written

# Host uids handed to sandboxed children when the harness is root: far above regular users,
# subordinate-id ranges and systemd's dynamic users, and below 2**31.
SANDBOX_UID_BASE = 0x70000000
SANDBOX_UID_SPAN = 1 << 24

CGROUP_ROOT = "/sys/fs/cgroup"
CGROUP_PREFIX = "ouroboros-"
CPU_PERIOD_US = 100_000

_MEMORY_ERROR = re.compile(
    rb"(^|\n)MemoryError\b|Cannot allocate memory|Fatal Python error: .*(memory|alloc)|out of memory",
    re.IGNORECASE,
)


# ----------------------------------------------------------------------------- ids


def sandbox_ids() -> tuple[int, int] | None:
    """A fresh unprivileged (uid, gid) for one child when we are root, else None (keep ours)."""
    if os.geteuid() != 0:
        return None
    uid = SANDBOX_UID_BASE + secrets.randbelow(SANDBOX_UID_SPAN)
    return uid, uid


def kill_uid(uid: int, rounds: int = 20) -> None:
    """SIGKILL every process owned by host `uid` (only used for uids made by `sandbox_ids`)."""
    for _ in range(rounds):
        found = False
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid != uid:
                    continue
                with open(f"/proc/{entry.name}/stat", "rb") as fh:
                    if fh.read().rpartition(b")")[2].split()[0] == b"Z":
                        continue  # dead already, waiting to be reaped
                found = True
                os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, IndexError):
                pass
        if not found:
            return
        time.sleep(0.005)


# ----------------------------------------------------------------------------- cgroups


def _own_cgroup(controller: str) -> str | None:
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controller in controllers.split(","):
                    return path
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=None)
def cgroup_bases() -> dict[str, str]:
    """{controller: directory to make per-exec cgroups in}, for the v1 controllers we can use.

    Per-exec cgroups are made inside this process's own cgroup (not at the hierarchy's root), so
    whatever limits and accounting enclose the harness also enclose its children, and nothing is
    left behind there once they are removed. Probed once per process.
    """
    bases: dict[str, str] = {}
    for controller in ("pids", "memory", "cpu"):
        own = _own_cgroup(controller)
        if own is None:
            continue
        base = os.path.join(CGROUP_ROOT, controller, own.lstrip("/"))
        probe = os.path.join(base, f"{CGROUP_PREFIX}probe-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.mkdir(probe)
            ok = os.path.exists(os.path.join(probe, "cgroup.procs"))
            os.rmdir(probe)
        except OSError as exc:
            log.info("cgroup controller %s unusable at %s (%s); relying on rlimits", controller, base, exc)
            continue
        if ok:
            bases[controller] = base
    if not bases:
        log.warning("no usable cgroup v1 controllers; sandbox limits fall back to rlimits only")
    return bases


_stale_cgroups: set[str] = set()  # removed from use, rmdir pending until their tasks are gone
_stale_lock = threading.Lock()


class ChildCgroup:
    """The per-exec cgroups (one per usable controller) that the child joins in preexec_fn."""

    def __init__(self, limits: Limits):
        self.paths: dict[str, str] = {}
        name = f"{CGROUP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
        try:
            for controller, base in cgroup_bases().items():
                path = os.path.join(base, name)
                os.mkdir(path)
                self.paths[controller] = path
                if controller == "pids":
                    _write(path, "pids.max", str(max(1, limits.pids)))
                elif controller == "cpu":
                    _write(path, "cpu.cfs_period_us", str(CPU_PERIOD_US))
                    _write(path, "cpu.cfs_quota_us", str(max(1000, int(limits.cpus * CPU_PERIOD_US))))
                elif controller == "memory":
                    limit = str(limits.memory_mb * MIB)
                    _write(path, "memory.limit_in_bytes", limit)
                    try:  # no swap beyond the limit, where swap accounting exists
                        _write(path, "memory.memsw.limit_in_bytes", limit)
                    except OSError:
                        pass
        except OSError as exc:
            log.warning("could not set up a cgroup for this exec (%s); relying on rlimits", exc)
            self.remove()
            self.paths = {}

    @property
    def enforces_pids(self) -> bool:
        return "pids" in self.paths

    def open_procs(self) -> list[int]:
        """Write-only fds of each cgroup's `tasks`; the child writes b"0" (itself) to join.

        `tasks`, not `cgroup.procs`: moving the current (single) thread skips the global
        threadgroup lock, whose write side waits out an RCU grace period (about 15 ms here,
        on every exec that is not right after another one).
        """
        fds: list[int] = []
        try:
            for path in self.paths.values():
                fds.append(os.open(os.path.join(path, "tasks"), os.O_WRONLY | os.O_CLOEXEC))
        except OSError as exc:
            log.warning("could not open sandbox cgroup (%s); relying on rlimits", exc)
            for fd in fds:
                os.close(fd)
            self.remove()
            return []
        return fds

    def oom_killed(self) -> bool:
        return oom_kills(self.paths.get("memory")) > 0

    def kill_all(self) -> None:
        """Stop forks, then SIGKILL everything in the cgroups.

        Does not wait for the killed to finish dying (tearing down a namespace takes the kernel a
        few ms); `remove` leaves a still-busy cgroup for a later sweep instead.
        """
        if "pids" in self.paths:
            try:
                _write(self.paths["pids"], "pids.max", "0")
            except OSError:
                pass
        killed: set[int] = set()
        for _ in range(100):  # repeat only while new pids show up (forks that raced pids.max)
            fresh = self._pids() - killed
            if not fresh:
                return
            for pid in fresh:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            killed |= fresh
        log.warning("processes still appearing in sandbox cgroups %s after kill", list(self.paths.values()))

    def _pids(self) -> set[int]:
        pids: set[int] = set()
        for path in self.paths.values():
            try:
                with open(os.path.join(path, "cgroup.procs")) as fh:
                    pids.update(int(line) for line in fh if line.strip())
            except (OSError, ValueError):
                pass
        return pids

    def remove(self) -> None:
        """rmdir the cgroups; one whose killed processes are still exiting is swept later."""
        with _stale_lock:
            _stale_cgroups.update(self.paths.values())
        self.paths = {}
        remove_stale_cgroups()


def oom_kills(memory_cgroup: str | None) -> int:
    """How many processes the kernel's OOM killer has killed in a v1 memory cgroup (0 if none)."""
    if memory_cgroup is None:
        return 0
    try:
        with open(os.path.join(memory_cgroup, "memory.oom_control")) as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _write(directory: str, name: str, value: str) -> None:
    with open(os.path.join(directory, name), "w") as fh:
        fh.write(value)


def remove_stale_cgroups(wait_s: float = 0.0) -> None:
    """rmdir every per-exec cgroup not yet removed; keep trying for up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        with _stale_lock:
            pending = list(_stale_cgroups)
        for path in pending:
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    log.warning("cannot remove sandbox cgroup %s (%s); leaving it", path, exc)
                else:
                    continue
            with _stale_lock:
                _stale_cgroups.discard(path)
        with _stale_lock:
            left = sorted(_stale_cgroups)
        if not left or time.monotonic() >= deadline:
            if left and wait_s > 0:
                log.warning("sandbox cgroups still busy after %.1f s: %s", wait_s, left)
            return
        time.sleep(0.005)


atexit.register(remove_stale_cgroups, 1.0)


def remove_orphan_cgroups(only_pid: int | None = None) -> int:
    """rmdir per-exec cgroups whose owner process is dead (or is `only_pid`): what a runner
    killed mid-exec leaves. Their processes are killed first. Returns how many were removed."""
    removed = 0
    pattern = re.compile(rf"^{re.escape(CGROUP_PREFIX)}(\d+)-[0-9a-f]+$")
    for base in cgroup_bases().values():
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            match = pattern.match(name)
            if not match:
                continue
            pid = int(match.group(1))
            if (only_pid is not None and pid != only_pid) or (only_pid is None and os.path.exists(f"/proc/{pid}")):
                continue
            path = os.path.join(base, name)
            for _ in range(50):
                try:
                    with open(os.path.join(path, "cgroup.procs")) as fh:
                        pids = [int(line) for line in fh if line.strip()]
                except (OSError, ValueError):
                    pids = []
                for victim in pids:
                    try:
                        os.kill(victim, signal.SIGKILL)
                    except OSError:
                        pass
                try:
                    os.rmdir(path)
                    removed += 1
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
    return removed


# ----------------------------------------------------------------------------- spawning


def cpu_seconds(limits: Limits) -> int:
    return limits.cpu_s if limits.cpu_s is not None else math.ceil(limits.timeout_s) + 1


def make_preexec(limits: Limits, procs_fds: Sequence[int], ids: tuple[int, int] | None) -> Callable[[], None]:
    """What the child does between fork and exec: join cgroups, set rlimits, drop to `ids`.

    The rlimits bind bwrap's own helper processes too: `pids` counts them (two or three).

    Only plain system calls: this runs in a forked child of a possibly multi-threaded parent.
    """
    cpu = cpu_seconds(limits)
    # RLIMIT_NPROC counts every process of the host uid. A fresh uid from `sandbox_ids` has none
    # but the sandbox's; otherwise the harness user's own processes count too.
    if ids is not None:
        nproc = limits.pids
    elif os.geteuid() == 0:
        nproc = limits.pids  # not enforced for root anyway
    else:
        nproc = limits.pids + _processes_of(os.getuid())
    wanted = [
        (resource.RLIMIT_AS, limits.memory_mb * MIB, limits.memory_mb * MIB),
        (resource.RLIMIT_FSIZE, limits.disk_mb * MIB, limits.disk_mb * MIB),
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL one second on
        (resource.RLIMIT_NPROC, nproc, nproc),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    rlimits = []
    for which, soft, hard in wanted:  # never above what this process may grant (non-root)
        _, ceiling = resource.getrlimit(which)
        if ceiling != resource.RLIM_INFINITY and os.geteuid() != 0:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        rlimits.append((which, (soft, hard)))
    fds = tuple(procs_fds)

    def preexec() -> None:
        for fd in fds:
            os.write(fd, b"0")
        try:  # if the host runs out of memory, the sandbox goes before the harness
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            os.write(fd, b"1000")
            os.close(fd)
        except OSError:
            pass
        for which, value in rlimits:
            resource.setrlimit(which, value)
        if ids is not None:
            uid, gid = ids
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)

    return preexec


def _processes_of(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                count += 1
        except OSError:
            pass
    return count


@dataclass
class Outcome:
    returncode: int  # shell convention: 128 + N for signal N
    stdout: bytes
    stderr: bytes
    stderr_tail: bytes
    truncated: bool
    timed_out: bool
    duration_s: float
    # The program used up its CPU-seconds rlimit. A program that is its sandbox's pid 1 ignores
    # SIGXCPU and is SIGKILLed at the hard limit, so its exit status alone does not say so.
    cpu_exhausted: bool = False


class _Capped:
    __slots__ = ("cap", "chunks", "size", "truncated", "tail")

    def __init__(self, cap: int):
        self.cap, self.chunks, self.size, self.truncated, self.tail = cap, [], 0, False, b""

    def add(self, data: bytes, keep_tail: bool) -> None:
        room = self.cap - self.size
        if len(data) <= room:
            self.chunks.append(data)
            self.size += len(data)
        else:
            if room > 0:
                self.chunks.append(data[:room])
                self.size = self.cap
            self.truncated = True
        if keep_tail:
            self.tail = (self.tail + data)[-STDERR_TAIL:]

    def value(self) -> bytes:
        return b"".join(self.chunks)


def run_limited(
    argv: Sequence[str],
    *,
    cwd: str,
    env: dict[str, str],
    limits: Limits,
    cgroup: ChildCgroup,
    ids: tuple[int, int] | None,
) -> Outcome:
    """Run `argv` under `limits`; never raises for what the program does."""
    procs_fds = cgroup.open_procs()
    preexec = make_preexec(limits, procs_fds, ids)
    start = time.monotonic()
    deadline = start + limits.timeout_s
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            preexec_fn=preexec,
            start_new_session=True,
            bufsize=0,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxUnavailable(f"could not start {argv[0]}: {exc}") from exc
    finally:
        for fd in procs_fds:
            os.close(fd)

    def kill_tree() -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the leader is unreaped, so the pgid is still ours
        except OSError:
            pass
        cgroup.kill_all()
        if ids is not None and not cgroup.enforces_pids:
            kill_uid(ids[0])

    out, err = _Capped(limits.output_bytes), _Capped(limits.output_bytes)
    streams = {proc.stdout.fileno(): (out, False), proc.stderr.fileno(): (err, True)}
    poller = select.poll()
    for fd in streams:
        poller.register(fd, select.POLLIN)
    try:
        pidfd = os.pidfd_open(proc.pid)
        poller.register(pidfd, select.POLLIN)
    except (AttributeError, OSError):
        pidfd = -1

    timed_out = exited = False
    end = None
    stop_at = deadline  # becomes a short grace once the main process has exited
    try:
        while True:
            if not exited and pidfd < 0 and _has_exited(proc.pid):  # kernels without pidfd
                exited, end = True, time.monotonic()
                kill_tree()
                stop_at = min(stop_at, end + EXIT_GRACE_S)
            if exited and not streams:
                break
            now = time.monotonic()
            if now >= stop_at:
                if not exited:
                    timed_out, end = True, now
                    kill_tree()
                    _drain(poller, streams, time.monotonic() + KILL_DRAIN_S)
                break
            wait_ms = max(1, math.ceil((stop_at - now) * 1000))
            for fd, _event in poller.poll(wait_ms if pidfd >= 0 else min(wait_ms, 10)):
                if fd == pidfd:
                    exited, end = True, time.monotonic()
                    poller.unregister(pidfd)
                    kill_tree()
                    stop_at = min(stop_at, end + EXIT_GRACE_S)
                    continue
                _read(fd, poller, streams)
    finally:
        if pidfd >= 0:
            os.close(pidfd)
        proc.stdout.close()
        proc.stderr.close()
        cpu_used = _reap(proc, 5.0)
    returncode = proc.returncode if proc.returncode is not None else 128 + signal.SIGKILL
    if returncode < 0:
        returncode = 128 - returncode
    return Outcome(
        returncode=returncode,
        stdout=out.value(),
        stderr=err.value(),
        stderr_tail=err.tail,
        truncated=out.truncated or err.truncated,
        timed_out=timed_out,
        duration_s=(end or time.monotonic()) - start,
        cpu_exhausted=cpu_used >= cpu_seconds(limits),
    )


def _reap(proc: subprocess.Popen, wait_s: float) -> float:
    """Reap the child (waiting up to `wait_s`) and return the CPU seconds it and the processes it
    reaped used (wait4's rusage), 0.0 if it could not be reaped."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere
            proc.wait(0)
            return 0.0
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        if time.monotonic() >= deadline:  # unkillable (D state); do not hang the harness
            log.error("sandbox child %d did not die after SIGKILL", proc.pid)
            return 0.0
        time.sleep(0.002)


def _has_exited(pid: int) -> bool:
    """Whether the child has exited, leaving it unreaped (so its pid and pgid stay ours)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _read(fd: int, poller: select.poll, streams: dict) -> None:
    try:
        data = os.read(fd, READ_CHUNK)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if data:
        sink, keep_tail = streams[fd]
        sink.add(data, keep_tail)
    else:
        poller.unregister(fd)
        del streams[fd]


def _drain(poller: select.poll, streams: dict, until: float) -> None:
    while streams:
        now = time.monotonic()
        if now >= until:
            return
        for fd, _event in poller.poll(max(1, math.ceil((until - now) * 1000))):
            if fd in streams:
                _read(fd, poller, streams)


def build_result(outcome: Outcome, cgroup_oom: bool) -> ExecResult:
    timed_out = outcome.timed_out or outcome.returncode == 128 + signal.SIGXCPU or (
        outcome.returncode == 128 + signal.SIGKILL and outcome.cpu_exhausted)
    oom = cgroup_oom or (outcome.returncode != 0 and bool(_MEMORY_ERROR.search(outcome.stderr_tail)))
    return ExecResult(
        exit_code=outcome.returncode,
        stdout=outcome.stdout.decode("utf-8", errors="replace"),
        stderr=outcome.stderr.decode("utf-8", errors="replace"),
        timed_out=timed_out,
        oom=oom,
        duration_s=outcome.duration_s,
        truncated=outcome.truncated,
    )


def base_env(home: str, extra: dict[str, str] | None) -> dict[str, str]:
    """The whole environment of a sandboxed program: these four plus the allowlisted `extra`."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not isinstance(value, str) or not key or "=" in key or "\0" in key + value:
            raise ValueError(f"sandbox env entries must be str -> str without '=' in names, got {key!r}")
        env[key] = value
    return env
