"""A warm Python per bwrap sandbox: each `run` forks from an interpreter that is already up.

A cold exec starts bwrap (namespaces, mounts) and a fresh Python (about 15 ms of CPU for the
interpreter alone) for every program. An experiment runs many programs in one sandbox, so its
session keeps one sandboxed interpreter (the *zygote*, `ZYGOTE`) alive and asks it to fork a
child per program. The fork costs about a millisecond; the namespaces and mounts are paid once.

What stays the same as a cold exec:
- the sandbox: the zygote is started by the same bwrap command line, as the workdir's uid,
  with the same environment, and its child runs `/work/main.py` as `__main__` with
  `sys.argv == ["main.py"]`, like `python3 main.py`;
- the limits: the session's cgroup (pids, memory, cpu) holds the zygote and every program; each
  child sets its own rlimits (CPU seconds, address space, file size, processes) before running
  the program; the wall timeout is the host's;
- the output: the host makes the stdout/stderr pipes of each exec and passes their write ends
  to the zygote over a unix socket (SCM_RIGHTS), so it reads and caps them itself;
- the end: when the program exits, everything else in the sandbox but bwrap's init and the
  zygote is killed, by the zygote (its pid namespace) and by the host (the cgroup, against the
  pids it knew at start-up).

What differs, and why it is acceptable:
- the child inherits the few modules the zygote imported (`os`, `sys`, `_socket`, `array`, `resource`);
- at exit, threads are joined, atexit handlers run, the program's globals are cleared and
  collected (so files it left open are flushed) and stdio is flushed, but the rest of the
  interpreter is not torn down (that costs 10 ms, more than a short program): an object held
  only by another module, or a file left open inside a reference cycle, may not be flushed;
- /tmp and /dev/shm live as long as the zygote, like the workdir, not one exec;
- a program could kill or confuse the zygote, which is its own sandbox's: the host then sees the channel close, reports the exec as killed, and starts
a new zygote for the next exec. The zygote is inside the sandbox's trust boundary, not the
host's: a program that takes it over (same uid) can only affect later execs of its own
session, whose results it could forge anyway, and whatever it starts is killed by the host's
cgroup sweep. The zygote imports only builtin modules (`_socket`, `array`, `resource`), so it
starts almost as fast as a bare interpreter.

A timeout, or any channel failure, kills the whole sandbox tree; the next exec starts a fresh
zygote over the same workdir.
"""
from __future__ import annotations

import logging
import math
import os
import select
import signal
import socket
import subprocess
import time

from ouroboros.sandbox import runner
from ouroboros.sandbox.base import Limits

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 10.0
ZYGOTE_CPU_S = 7 * 24 * 3600  # the zygote's own CPU rlimit; each child sets its own

ZYGOTE = r'''
import _socket, array, atexit, gc, os, sys
chan = _socket.socket(fileno=int(sys.argv[1]))
me = os.getpid()
def sweep():
    for _ in range(50):
        alive = False
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in (1, me):
                continue
            try:
                with open("/proc/" + name + "/stat", "rb") as fh:
                    if fh.read().rpartition(b")")[2].split()[0] == b"Z":
                        continue
                os.kill(int(name), 9)
                alive = True
            except (OSError, IndexError):
                pass
        if not alive:
            return
def receive():
    msg, ancillary, _, _ = chan.recvmsg(1 << 16, _socket.CMSG_LEN(8))
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return msg, list(fds)
def serve():
    gc.freeze()  # the zygote's own objects: a child's collections skip them
    chan.send(b"ready")
    while True:
        try:
            msg, fds = receive()
        except OSError:
            os._exit(0)
        if not msg or len(fds) != 2:
            os._exit(0)
        pid = os.fork()
        if pid == 0:
            chan.close()
            return msg, fds
        chan.send(b"started")
        for fd in fds:
            os.close(fd)
        _, status = os.waitpid(pid, 0)
        sweep()
        chan.send(str(status).encode())
request, fds = serve()
os.setsid()
null = os.open("/dev/null", os.O_RDONLY)
os.dup2(null, 0)
os.dup2(fds[0], 1)
os.dup2(fds[1], 2)
for fd in (null, *fds):
    os.close(fd)
import resource
for line in request.decode().splitlines():
    name, soft, hard = line.split()
    resource.setrlimit(getattr(resource, name), (int(soft), int(hard)))
try:
    with open("/proc/self/oom_score_adj", "w") as fh:
        fh.write("1000")
except OSError:
    pass
import builtins, types
path = os.path.join(os.getcwd(), "main.py")
sys.argv = ["main.py"]
sys.path[0] = os.getcwd()
main = types.ModuleType("__main__")
main.__file__, main.__builtins__, main.__cached__ = path, builtins, None
sys.modules["__main__"] = main
code = 0
try:
    with open(path, "rb") as fh:
        source = fh.read()
    exec(compile(source, path, "exec"), main.__dict__)
except SystemExit as exc:
    if exc.code is None:
        code = 0
    elif isinstance(exc.code, int):
        code = exc.code & 0xFF
    else:
        print(exc.code, file=sys.stderr)
        code = 1
except BaseException as exc:
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != path:
        tb = tb.tb_next  # our own frames are not the program's
    sys.excepthook(type(exc), exc.with_traceback(tb), tb)
    code = 1
# What the interpreter's exit does that a program can see (threads joined, atexit handlers,
# its globals finalized so open files flush), without tearing down every module, which costs
# more than the rest of a short program.
threading = sys.modules.get("threading")  # imported by the program, or no threads to join
try:
    threading and threading._shutdown()
except BaseException:
    pass
atexit._run_exitfuncs()
main.__dict__.clear()
gc.collect()
for stream in (sys.stdout, sys.stderr):
    try:
        stream.flush()
    except BaseException:
        code = code or 120
os._exit(code)
'''


class InterpreterGone(RuntimeError):
    """The warm interpreter was dead before the program was handed to it: nothing ran."""


def _descendants(root: int) -> set[int]:
    """`root` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as fh:
                    ppid = int(fh.read().rpartition(b")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


class WarmPython:
    """One zygote for one sandbox workdir. Not thread-safe: a sandbox runs one exec at a time."""

    def __init__(self, command: list[str], cwd: str, env: dict[str, str], limits: Limits,
                 ids: tuple[int, int] | None):
        self.limits = limits
        self.ids = ids
        # The zygote and its helper processes count against the session's pids.
        session = limits.override(pids=limits.pids + 1, cpu_s=ZYGOTE_CPU_S)
        self.cgroup = runner.ChildCgroup(session)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.chan = ours
        procs_fds = self.cgroup.open_procs()
        try:
            self.proc = subprocess.Popen(
                [*command, "-c", ZYGOTE, str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                cwd=cwd, env=env, pass_fds=(theirs.fileno(),), start_new_session=True,
                preexec_fn=runner.make_preexec(session, procs_fds, ids),
            )
        except (OSError, subprocess.SubprocessError):
            ours.close()
            self.cgroup.remove()
            raise
        finally:
            theirs.close()
            for fd in procs_fds:
                os.close(fd)
        self.alive = False
        ready = self._recv(time.monotonic() + READY_TIMEOUT_S)
        if ready != b"ready":
            self.stop()
            raise RuntimeError("the sandbox's warm interpreter did not start")
        self.alive = True
        # bwrap, its init and the zygote: whatever else is in the cgroup after an exec is the program's.
        self.baseline = self.cgroup._pids() or _descendants(self.proc.pid)

    def fits(self, limits: Limits) -> bool:
        """Whether an exec under `limits` can run here (the session's cgroup and rlimits bound it)."""
        s = self.limits
        return (limits.memory_mb <= s.memory_mb and limits.disk_mb <= s.disk_mb and limits.pids <= s.pids
                and limits.cpus == s.cpus)

    def _recv(self, deadline: float) -> bytes | None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([self.chan], [], [], remaining)
        if not ready:
            return None
        try:
            return self.chan.recv(1 << 16)
        except OSError:
            return b""

    def exec(self, limits: Limits) -> tuple[runner.Outcome, bool]:
        """Run the workdir's main.py; (outcome, oom). Never raises for what the program does."""
        cpu = runner.cpu_seconds(limits)
        nproc = limits.pids if self.ids is not None or os.geteuid() == 0 else None
        rlimits = [("RLIMIT_CPU", cpu, cpu + 1),
                   ("RLIMIT_AS", limits.memory_mb * runner.MIB, limits.memory_mb * runner.MIB),
                   ("RLIMIT_FSIZE", limits.disk_mb * runner.MIB, limits.disk_mb * runner.MIB),
                   ("RLIMIT_CORE", 0, 0)]
        if nproc is not None:
            rlimits.append(("RLIMIT_NPROC", nproc + 1, nproc + 1))
        request = "".join(f"{name} {soft} {hard}\n" for name, soft, hard in rlimits).encode()
        oom_before = self._oom_kills()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        start = time.monotonic()
        try:
            socket.send_fds(self.chan, [request], [out_w, err_w])
        except OSError as exc:  # died between execs (a straggler of the last program got to it)
            for fd in (out_r, err_r):
                os.close(fd)
            self.stop()
            raise InterpreterGone(str(exc)) from None
        finally:
            os.close(out_w)
            os.close(err_w)
        out, err = runner._Capped(limits.output_bytes), runner._Capped(limits.output_bytes)
        streams = {out_r: (out, False), err_r: (err, True)}
        poller = select.poll()
        for fd in streams:
            os.set_blocking(fd, False)
            poller.register(fd, select.POLLIN)
        poller.register(self.chan.fileno(), select.POLLIN)
        stop_at = start + limits.timeout_s
        status = None
        timed_out = exited = started = False
        end = None
        try:
            while True:
                if exited and not streams:
                    break
                now = time.monotonic()
                if now >= stop_at:
                    if not exited:
                        timed_out, end = True, now
                        self.stop()  # the whole tree: the zygote too, a fresh one next time
                        runner._drain(poller, streams, time.monotonic() + runner.KILL_DRAIN_S)
                    break
                for fd, _event in poller.poll(max(1, math.ceil((stop_at - now) * 1000))):
                    if fd == self.chan.fileno() and not started:
                        started = self._message() == b"started"
                        if not started:  # gone before it forked: nothing of the program ran
                            self.stop()
                            raise InterpreterGone("the warm interpreter closed its channel")
                    elif fd == self.chan.fileno():
                        exited, end = True, time.monotonic()
                        poller.unregister(fd)
                        status = self._status()
                        if status is None:  # the zygote is gone: the program took it down
                            self.stop()
                        else:
                            self._sweep()
                        stop_at = min(stop_at, end + runner.EXIT_GRACE_S)
                    elif fd in streams:
                        runner._read(fd, poller, streams)
        finally:
            for fd in (out_r, err_r):
                os.close(fd)
        if status is None:
            code = 128 + signal.SIGKILL
        else:
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
        outcome = runner.Outcome(returncode=code, stdout=out.value(), stderr=err.value(), stderr_tail=err.tail,
                                 truncated=out.truncated or err.truncated, timed_out=timed_out,
                                 duration_s=(end or time.monotonic()) - start)
        return outcome, self._oom_kills() > oom_before

    def _message(self) -> bytes:
        try:
            return self.chan.recv(64)
        except OSError:
            return b""

    def _status(self) -> int | None:
        try:
            msg = self._message()
            return int(msg) if msg else None
        except ValueError:
            return None

    def _sweep(self) -> None:
        """Kill what the program left in the session's cgroup (the zygote's sweep is advisory)."""
        for pid in self.cgroup._pids() - self.baseline:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def _oom_kills(self) -> int:
        return runner.oom_kills(self.cgroup.paths.get("memory"))

    def stop(self) -> None:
        """Kill the zygote and everything under it; remove the session's cgroup."""
        self.alive = False
        try:
            self.chan.close()
        except OSError:
            pass
        if getattr(self, "proc", None) is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.cgroup.kill_all()
            if self.ids is not None and not self.cgroup.enforces_pids:
                runner.kill_uid(self.ids[0])
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                log.error("warm sandbox interpreter %d did not die after SIGKILL", self.proc.pid)
        self.cgroup.remove()
