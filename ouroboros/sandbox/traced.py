"""A persistent sandboxed process, watched from outside by a syscall tracer, with a channel.

The survival environment keeps one Python process alive for a whole episode (its state and
redefined methods must persist from step to step), and decides from the host what that process
did. Three things leave the process, and only the first two are trusted:

- **strace, run on the host side of the sandbox.** bwrap runs under `strace -f --seccomp-bpf`
  (ptrace), so every process and thread of the sandbox is traced from before its first
  instruction; it cannot detach (PTRACE_TRACEME fails for a traced process), and it cannot see
  or signal the tracer, which lives outside its pid namespace. strace writes to a FIFO in a
  host directory that the sandbox cannot see, through an fd that is not inherited (strace
  opens its output close-on-exec), so no line of it can be forged. Strings are printed as hex
  (`-xx`), so a path cannot break the line's syntax. Each line is parsed here and handed to a
  `monitor` (a plain object of the caller's, e.g. the survival environment's harm monitor),
  which may order the process stopped at once.
- **Exit causes and counters:** the traced process's own exit line from strace, the memory
  cgroup's OOM counter, the output caps, the host's own clocks.
- **The channel** (an AF_UNIX SOCK_SEQPACKET socketpair, never a network) carries the caller's
  protocol. Everything on it was written by a process that runs untrusted code, so the caller
  validates it and never takes a decision from it.

The process runs under the same bwrap command line, rlimits, cgroup and fresh host uid as
a `bwrap` exec (sandbox/bwrap.py): strace too runs as that uid, inside the cgroup.
"""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

from ouroboros.sandbox import runner
from ouroboros.sandbox.base import Limits, SandboxUnavailable

STRACE_HINT = "run `apt-get install -y strace` (Debian package 'strace')"
MESSAGE_MAX = 1 << 16  # one channel message; a longer one arrives cut, and is refused by the caller
# Syscalls the tracer stops on. Everything else runs untouched (seccomp-bpf filters in the kernel).
TRACED = (
    "open,openat,openat2,creat,open_by_handle_at,name_to_handle_at,"
    "unlink,unlinkat,rmdir,rename,renameat,renameat2,truncate,mkdir,mkdirat,link,linkat,symlink,symlinkat,"
    "chmod,fchmodat,chown,lchown,fchownat,mknod,mknodat,chdir,fchdir,close,dup2,dup3,"
    "socket,connect,bind,listen,sendto,sendmsg,recvfrom,recvmsg,close_range,fchmod,fchown,ftruncate,fallocate,"
    "setxattr,lsetxattr,fsetxattr,removexattr,lremovexattr,fremovexattr,utimensat,"
    "clone,clone3,fork,vfork,execve,execveat,"
    "kill,tkill,tgkill,rt_sigqueueinfo,rt_tgsigqueueinfo,pidfd_open,pidfd_send_signal,pidfd_getfd,"
    "ptrace,process_vm_readv,process_vm_writev,seccomp,prctl,unshare,setns,mount,umount2,pivot_root,chroot,"
    "bpf,perf_event_open,io_uring_setup,userfaultfd,kcmp,keyctl,add_key,request_key,init_module,finit_module,"
    "delete_module,reboot,personality,setuid,setgid,setreuid,setregid,setresuid,setresgid,setgroups,capset,"
    "iopl,ioperm,mount_setattr,fsopen,fsmount,open_tree,move_mount"
)


@dataclass
class Syscall:
    """One traced system call, as the tracer saw it enter (and, where known, return)."""

    pid: int
    name: str
    args: str  # the argument text with strings decoded (for records and flag tests)
    strings: list[str] = field(default_factory=list)  # the string arguments, decoded
    result: str = ""  # "= 0", "= -1 ENOENT (...)", "" when not yet returned
    fds: list[tuple[str, str]] = field(default_factory=list)  # (fd, path) strace attached to fd arguments (-y)
    # The top-level arguments in order, each ("s", text) for a string, ("f", fd, path) for an fd
    # strace decorated with its path, ("o", text) for anything else (flags, numbers, structs).
    argv: list[tuple] = field(default_factory=list)
    ret_path: str | None = None  # the path of the fd the call returned (-y), e.g. what an open really opened

    def arg(self, i: int) -> tuple:
        return self.argv[i] if 0 <= i < len(self.argv) else ("o", "")


@dataclass
class ProcessEnd:
    """How the traced program ended, as the tracer and the host saw it."""

    exit_code: int | None = None  # the program's own exit status
    signal: str | None = None  # the signal that killed it
    oom: bool = False
    cause: str = ""  # the host's reason when the host stopped it ("timeout", "output", "monitor", "closed")


_HEX = re.compile(r'"((?:\\x[0-9a-f]{2})*)"(\.\.\.)?')
_FD_PATH = re.compile(r"(AT_FDCWD|\d+)<((?:\\x[0-9a-f]{2})*)>")
_LINE = re.compile(r"^(\d+) +(.*)$")
_CALL = re.compile(r"^([a-z_0-9]+)\((.*)$", re.S)
_RESUMED = re.compile(r"^<\.\.\. ([a-z_0-9]+) resumed>(.*)$", re.S)
_EXITED = re.compile(r"^\+\+\+ exited with (\d+) \+\+\+$")
_KILLED = re.compile(r"^\+\+\+ killed by (SIG[A-Z0-9]+)")


def _unhex(text: str) -> str:
    return bytes.fromhex(text.replace("\\x", "")).decode("utf-8", errors="replace")


def parse_line(line: str) -> tuple[int, str, object] | None:
    """(pid, kind, value) of one strace line: kind "call" (a Syscall, entry or whole), "resumed"
    (the rest of a call), "exited" (code), "killed" (signal name); None for anything else."""
    m = _LINE.match(line.rstrip("\n"))
    if not m:
        return None
    pid, rest = int(m.group(1)), m.group(2)
    if rest.startswith("+++"):
        e = _EXITED.match(rest)
        if e:
            return pid, "exited", int(e.group(1))
        k = _KILLED.match(rest)
        return (pid, "killed", k.group(1)) if k else None
    if rest.startswith("---"):
        return None
    r = _RESUMED.match(rest)
    if r:
        return pid, "resumed", (r.group(1), r.group(2))
    c = _CALL.match(rest)
    if not c:
        return None
    name, tail = c.group(1), c.group(2)
    body, result = tail, ""
    if tail.endswith("<unfinished ...>"):
        body = tail[: -len("<unfinished ...>")]
    else:
        body, result = _split_result(tail)
    return pid, "call", make_call(pid, name, body, result)


_RESULT = re.compile(r"\) +(?== )")


def _split_result(tail: str) -> tuple[str, str]:
    """(arguments, "= result") of a call's text after its name: strace pads before the "=" to
    align results, and the arguments' strings are hex, so the last ") =" ends them."""
    found = list(_RESULT.finditer(tail))
    if not found:
        return tail, ""
    at = found[-1]
    return tail[:at.start()], tail[at.end():]


def make_call(pid: int, name: str, body: str, result: str) -> Syscall:
    fds = [(fd, _unhex(p)) for fd, p in _FD_PATH.findall(body)]
    strings = [_unhex(s) for s, _ in _HEX.findall(_FD_PATH.sub("FD", body))]
    args = _decode(body)
    returned = _FD_PATH.search(result)
    ret_path = _unhex(returned.group(2)) if returned else None
    return Syscall(pid, name, args, strings, _decode(result), fds, [_arg(a) for a in split_args(body)], ret_path)


def _decode(text: str) -> str:
    """Raw argument text with strings and fd paths decoded, for records (never for decisions)."""
    return _HEX.sub(lambda s: json.dumps(_unhex(s.group(1))),
                    _FD_PATH.sub(lambda f: f"{f.group(1)}<{_unhex(f.group(2))}>", text))


def split_args(body: str) -> list[str]:
    """The top-level arguments of a call's raw text. Strings and fd paths are hex there (-xx),
    so no comma or bracket inside them can move a boundary."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(body[start:i].strip())
            start = i + 1
    tail = body[start:].strip()
    if tail or out:
        out.append(tail)
    return out


def _arg(raw: str) -> tuple:
    m = _HEX.fullmatch(raw)
    if m:
        return ("s", _unhex(m.group(1)))
    f = _FD_PATH.fullmatch(raw)
    if f:
        return ("f", f.group(1), _unhex(f.group(2)))
    return ("o", _decode(raw))


class TracedProcess:
    """One program in a bwrap sandbox for as long as the caller wants, traced from outside.

    `monitor.observe(Syscall) -> str | None` runs on the tracer's reader thread for every traced
    call; a non-empty answer stops the process at once, with that answer as the cause."""

    def __init__(self, sandbox, argv: list[str], files: dict[str, str | bytes], limits: Limits, monitor,
                 output_bytes: int) -> None:
        if shutil.which("strace") is None:
            raise SandboxUnavailable(f"strace is not installed, and it watches the sandbox's system calls: {STRACE_HINT}")
        self.monitor = monitor
        self.output_bytes = output_bytes
        self.end = ProcessEnd()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._written = 0
        self._program_pid: int | None = None
        self._pending: dict[int, Syscall] = {}
        workdir = sandbox.workdir()
        for name, data in files.items():
            workdir.write(name, data)
        self.workdir = workdir
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.chan = ours
        self._fifo_dir = tempfile.mkdtemp(prefix="ouroboros-trace-")
        fifo = os.path.join(self._fifo_dir, "trace")
        os.mkfifo(fifo, 0o600)
        if workdir.ids is not None:  # strace runs as the workdir's uid and opens the FIFO itself
            os.chown(self._fifo_dir, *workdir.ids)
            os.chown(fifo, *workdir.ids)
        self._trace = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        bwrap_argv, cwd, env = sandbox._cold_command(workdir.path, [*argv, str(theirs.fileno())], limits)
        command = ["strace", "-f", "-q", "--seccomp-bpf", "-xx", "-y", "-s", "4096", "-e", f"trace={TRACED}",
                   "-e", "signal=none", "-o", fifo, *bwrap_argv]
        self.cgroup = runner.ChildCgroup(limits.override(pids=limits.pids + 2))  # strace and bwrap count too
        procs_fds = self.cgroup.open_procs()
        try:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env,
                pass_fds=(theirs.fileno(),), start_new_session=True,
                preexec_fn=runner.make_preexec(limits.override(pids=limits.pids + 2), procs_fds, workdir.ids))
        except (OSError, subprocess.SubprocessError) as exc:
            self._close_fds()
            self.cgroup.remove()
            raise SandboxUnavailable(f"could not start the traced sandbox: {exc}") from exc
        finally:
            theirs.close()
            for fd in procs_fds:
                os.close(fd)
        self.started = time.monotonic()
        self._threads = [threading.Thread(target=self._read_trace, daemon=True, name="trace-reader"),
                         threading.Thread(target=self._read_stream, args=(self.proc.stdout, self._out), daemon=True),
                         threading.Thread(target=self._read_stream, args=(self.proc.stderr, self._err), daemon=True)]
        for t in self._threads:
            t.start()

    # -- what the tracer sees ------------------------------------------------------
    def _read_trace(self) -> None:
        poller = select.poll()
        poller.register(self._trace, select.POLLIN)
        buffered = b""
        opened = False
        while True:
            if not poller.poll(200):
                if self.proc.poll() is not None and opened:
                    break
                continue
            try:
                data = os.read(self._trace, 1 << 16)
            except BlockingIOError:
                continue
            except OSError:
                break
            if not data:
                if opened or self.proc.poll() is not None:
                    break
                time.sleep(0.005)  # the writer has not opened the FIFO yet
                continue
            opened = True
            buffered += data
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                self._observe(line.decode("utf-8", errors="replace"))

    def _observe(self, line: str) -> None:
        parsed = parse_line(line)
        if parsed is None:
            return
        pid, kind, value = parsed
        if kind == "call":
            call = value
            if self._program_pid is None and call.name == "execve" and call.strings[:1] and not call.strings[0].endswith("/bwrap"):
                self._program_pid = pid  # the sandboxed program: bwrap's one exec
            if call.result == "":  # entered and not yet returned: the rest comes as "resumed"
                self._pending[pid] = call
            self._judge(call)
        elif kind == "resumed":
            call = self._pending.pop(pid, None)
            if call is not None:
                raw = _split_result(value[1])[1]
                call.result = _decode(raw)
                returned = _FD_PATH.search(raw)
                call.ret_path = _unhex(returned.group(2)) if returned else None
                returned_hook = getattr(self.monitor, "returned", None)
                if returned_hook is not None:  # what only the return says (a chdir done, the path really opened)
                    self._judge(call, returned_hook)
        elif pid == self._program_pid:
            with self._lock:
                if kind == "exited" and self.end.exit_code is None and self.end.signal is None:
                    self.end.exit_code = value
                elif kind == "killed" and self.end.exit_code is None and self.end.signal is None:
                    self.end.signal = value

    def _judge(self, call: Syscall, judge=None) -> None:
        try:
            stop = (judge or self.monitor.observe)(call)
        except Exception as exc:  # a monitor bug must not let the program run on unwatched
            stop = f"monitor error: {exc}"
        if stop:
            self.kill(f"monitor: {stop}")

    def _read_stream(self, stream, sink: list[bytes]) -> None:
        # Every read of the pipe happens under the lock, as does `take_output`'s last drain: what
        # the program wrote before its `done` is in the pipe when `done` arrives, so the step it
        # belongs to gets it however late this thread is scheduled (under load it was cut off
        # and went to the next step).
        fd = stream.fileno()
        os.set_blocking(fd, False)
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP)
        while True:
            try:
                poller.poll(200)
            except (OSError, ValueError):
                return
            with self._lock:
                ended, over = self._drain_locked(fd, sink)
            if over:
                self.kill("output")  # keeps reading, so the pipe never blocks the kill
            if ended:
                return

    def _drain_locked(self, fd: int, sink: list[bytes]) -> tuple[bool, bool]:
        """Read what the pipe holds now (the caller holds the lock): (at its end, over the cap)."""
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return False, self._written > self.output_bytes
            except (OSError, ValueError):
                return True, self._written > self.output_bytes
            if not data:
                return True, self._written > self.output_bytes
            room = self.output_bytes - self._written
            self._written += len(data)
            if room > 0:
                sink.append(data[:room])

    # -- the caller's side ---------------------------------------------------------
    def send(self, message: dict) -> bool:
        """Send one JSON message; False if the channel is gone (the process ended or closed it)."""
        data = json.dumps(message).encode()
        try:
            self.chan.send(data)
            return True
        except OSError:
            return False

    def receive(self, timeout_s: float) -> bytes | None:
        """The next raw message (cut at MESSAGE_MAX); b"" when the channel closed; None on timeout
        or when the process was stopped."""
        deadline = time.monotonic() + timeout_s
        while not self._stopped.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self.chan], [], [], min(remaining, 0.1))
            if ready:
                try:
                    return self.chan.recv(MESSAGE_MAX)
                except OSError:
                    return b""
        return None

    def take_output(self) -> tuple[str, str, int]:
        """(stdout, stderr) written since the last call, and the bytes written in all."""
        with self._lock:
            for stream, sink in ((self.proc.stdout, self._out), (self.proc.stderr, self._err)):
                try:
                    self._drain_locked(stream.fileno(), sink)
                except ValueError:  # closed already: its reader took everything
                    pass
            out, err = b"".join(self._out), b"".join(self._err)
            self._out.clear()
            self._err.clear()
            written = self._written
        return out.decode("utf-8", errors="replace"), err.decode("utf-8", errors="replace"), written

    def alive(self) -> bool:
        return not self._stopped.is_set() and self.proc.poll() is None

    def kill(self, cause: str) -> None:
        """Stop everything in the sandbox now; the first cause given is the one kept."""
        with self._lock:
            if not self.end.cause:
                self.end.cause = cause
        self._stopped.set()
        # The traced processes first, the tracer after: strace then prints the calls they were
        # blocked in (`<unfinished ...>`) before it exits, so a harmful call that never returned
        # is judged too. Without a cgroup to list them, the tracer goes at once (bwrap dies with it).
        tracees = self.cgroup._pids() - {self.proc.pid} if self.cgroup.paths else set()
        if tracees:
            if "pids" in self.cgroup.paths:
                try:
                    runner._write(self.cgroup.paths["pids"], "pids.max", "0")  # no more forks
                except OSError:
                    pass
            for _ in range(20):
                for pid in tracees:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                tracees = self.cgroup._pids() - {self.proc.pid}
                if not tracees:
                    break
            return
        self._kill_all()

    def _kill_all(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.cgroup.kill_all()

    def wait_exit(self, timeout_s: float) -> ProcessEnd:
        """Wait for the process (and the tracer's last lines); how it ended."""
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill("timeout")
            self._kill_all()
            self.proc.wait(5)
        # The tracer's last lines, and what the program wrote before it ended: its pipes reach
        # their end once the sandbox's processes are gone. Without the wait, a caller taking the
        # output right after an exit could miss a traceback still in the pipe.
        for t in self._threads:
            t.join(2)
        self._stopped.set()
        with self._lock:
            self.end.oom = self.cgroup.oom_killed()
        return self.end

    def close(self) -> ProcessEnd:
        if self.proc.poll() is None:
            self.kill("closed")
        end = self.wait_exit(5)
        self._kill_all()  # anything left of the tracer's
        for t in self._threads[1:]:
            t.join(2)
        self.cgroup.remove()
        self._close_fds()
        self.workdir.remove()
        return end

    def _close_fds(self) -> None:
        for close in (self.chan.close, lambda: os.close(self._trace)):
            try:
                close()
            except OSError:
                pass
        shutil.rmtree(self._fifo_dir, ignore_errors=True)
