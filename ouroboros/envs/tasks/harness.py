"""The program that makes a candidate's calls in the sandbox, and how the host reads what it says.

Nothing inside the sandbox is trusted. The sandbox only *makes calls*: the hidden tests, their
expected values, the assertions and the number of tests stay on the host (`checks.py` compiles
each test into the calls it makes and a check the host evaluates). What runs in the sandbox:

- **The runner** (`RUNNER`, the exec's main program, ours). It reads its job (the candidate's
  code, the calls as literal reprs, a per-exec key) from a file it deletes at once, drops the
  workdir from its import path, and makes itself non-dumpable, so a process of the same uid
  cannot read its memory or take its file descriptors (/proc/<pid>/mem, /proc/<pid>/fd, ptrace,
  pidfd_getfd). Under bwrap it is the sandbox's pid 1 (`sandbox/bwrap.py`): no other process in
  the sandbox holds the exec's stdout, and signals from inside the sandbox cannot kill it.
- **The candidate process** (`CHILD`): a fresh `python -I` the runner starts for each unit with
  its own stdin (the job), stdout, stderr and a *values* pipe, and no other descriptor. It parses
  the calls' arguments, runs the candidate's code, then makes each call and writes the value's
  `repr` (or the exception) on the values pipe.

The runner relays what arrives on the values pipe, and the candidate's captured stdout and
stderr, as JSON lines on its own stdout: a channel the candidate process never held. Each line
carries an HMAC under the per-exec key, which only the host and the non-dumpable runner know, so
a line the candidate somehow wrote there would be ignored. Values are relayed as they arrive, so
a unit that runs out of time keeps the calls it finished.

What the candidate process can still do is write anything on its values pipe: that is the same
as returning that value from the call, and the host checks it against expected values the
candidate never saw, parsing it as a literal (`literals.py`) so that only plain data crosses.

The host side: `prepare` builds an exec's job from units (code plus a compiled suite's calls),
`read` verifies and decodes the runner's lines into a `UnitReport` per unit, `outcome` turns a
report into the step outcome the judge and the recorder read, and `candidate_result` is the
ExecResult the store keeps: the candidate's own stdout and stderr, not the runner's protocol.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ouroboros.envs.tasks import literals
from ouroboros.envs.tasks.checks import Failed, Returned, Suite
from ouroboros.types import ExecResult

JOB_FILE = "job.json"
MARGIN_S = 0.75  # exec time beyond the units' own: the runner's start and its last report
MAX_VALUE_BYTES = 100_000  # one call's reported line at most
MAX_STREAM_BYTES = 32_768  # the candidate's stdout (and stderr) kept per unit at most
MIN_VALUE_BYTES = 1024

# The candidate process parses call arguments with the host's own literal parser, so a value
# arrives exactly as the host wrote it (eval would lose the sign of -0.0 in a complex).
_LITERALS = Path(literals.__file__).read_text()

CHILD = _LITERALS + r'''

def _main():
    import json, os, sys
    out = int(sys.argv[1])
    job = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    cap = job["cap"]

    def send(msg):
        data = json.dumps(msg).encode() + b"\n"
        if len(data) > cap:
            data = json.dumps({"i": msg.get("i"), "e": "its repr is longer than %d bytes" % cap}).encode() + b"\n"
        view = memoryview(data)
        while view:
            view = view[os.write(out, view):]

    def describe(exc):
        try:
            text = "%s: %s" % (type(exc).__name__, exc)
        except BaseException:
            text = type(exc).__name__
        return text[:300]

    def flush():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass

    calls = [(name, parse(args), parse(kwargs)) for name, args, kwargs in job["calls"]]
    namespace = {"__name__": "__candidate__", "__builtins__": __builtins__}
    try:
        exec(compile(job["code"], "solution.py", "exec"), namespace)
    except BaseException as exc:
        flush()
        send({"loaded": False, "e": describe(exc)})
        return
    flush()
    send({"loaded": True})
    for index, (name, args, kwargs) in enumerate(calls):
        try:
            if name not in namespace:
                raise NameError("the solution does not define %s" % name)
            text = repr(namespace[name](*args, **kwargs))
            if not isinstance(text, str):
                raise TypeError("repr() did not return text")
            send({"i": index, "r": text})
        except BaseException as exc:
            send({"i": index, "e": describe(exc)})
        flush()


_main()
'''

RUNNER = r'''
import os, sys
# Import nothing from the workdir (this script's directory), where the candidate writes files.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != _here]
import ctypes, errno, hashlib, hmac, json, os, select, signal, subprocess, time


def private():
    """Non-dumpable: no /proc/<pid>/mem, /proc/<pid>/fd, ptrace or pidfd_getfd for the same uid."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(4, 0, 0, 0, 0) == 0 and libc.prctl(3, 0, 0, 0, 0) == 0  # PR_SET/GET_DUMPABLE


with open("job.json", "rb") as fh:
    job = json.loads(fh.read())
os.unlink("job.json")
key = bytes.fromhex(job.pop("key"))
child_source = job.pop("child")
sys.path[:] = []  # every module this program uses is loaded; nothing more may be
seq = 0


def emit(kind, **fields):
    global seq
    fields["kind"], fields["seq"] = kind, seq
    seq += 1
    body = json.dumps(fields, ensure_ascii=True, separators=(",", ":"))
    tag = hmac.new(key, body.encode("ascii"), hashlib.sha256).hexdigest()
    view = memoryview(("%s %s\n" % (body, tag)).encode("ascii"))
    while view:
        view = view[os.write(1, view):]


def fit(text, limit):
    """`text` cut so that its JSON form takes at most `limit` bytes."""
    while len(json.dumps(text)) > limit:
        text = text[: max(0, len(text) * limit // len(json.dumps(text)) - 16)]
    return text


def sweep():
    """As the sandbox's pid 1, end whatever the candidate left running (kill(-1) spares pid 1)."""
    if os.getpid() != 1:
        return
    try:
        os.kill(-1, signal.SIGKILL)
    except OSError:
        pass
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.002)
        except ChildProcessError:
            return


def run_unit(u, unit):
    cap, stream_cap, calls = unit["value_cap"], unit["stream_cap"], len(unit["calls"])
    read_values, write_values = os.pipe()
    try:
        child = subprocess.Popen([sys.executable, "-I", "-c", child_source, str(write_values)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 pass_fds=(write_values,), close_fds=True)
    except OSError as exc:
        os.close(read_values)
        os.close(write_values)
        emit("end", unit=u, exit=None, timed_out=False, stdout="", stderr="", truncated=False,
             error="could not start the candidate process: %s" % exc)
        return
    os.close(write_values)
    deadline = time.monotonic() + unit["timeout_s"]
    try:
        child.stdin.write(json.dumps({"code": unit["code"], "calls": unit["calls"], "cap": cap}).encode())
        child.stdin.close()
    except OSError:
        pass
    streams = {child.stdout.fileno(): bytearray(), child.stderr.fileno(): bytearray()}
    truncated = False
    pending, skipping = bytearray(), False
    loaded, seen = False, set()
    poller = select.poll()
    for fd in (*streams, read_values):
        poller.register(fd, select.POLLIN)
    try:
        pidfd = os.pidfd_open(child.pid)
        poller.register(pidfd, select.POLLIN)
    except (AttributeError, OSError):
        pidfd = -1
    open_fds, exited_at, timed_out = len(streams) + 1, None, False

    def handle(line):
        nonlocal loaded
        try:
            msg = json.loads(line)
        except Exception:
            return
        if not isinstance(msg, dict):
            return
        if "loaded" in msg:
            if not loaded:
                loaded = True
                emit("loaded", unit=u, ok=msg["loaded"] is True, error=fit(str(msg.get("e", "")), 600))
            return
        index = msg.get("i")
        if type(index) is not int or not 0 <= index < calls or index in seen:
            return
        if isinstance(msg.get("r"), str):
            seen.add(index)
            if len(json.dumps(msg["r"])) > cap:  # written straight on the pipe, not by the child's send
                emit("value", unit=u, i=index, e="its repr is longer than %d bytes" % cap)
            else:
                emit("value", unit=u, i=index, r=msg["r"])
        elif "e" in msg:
            seen.add(index)
            emit("value", unit=u, i=index, e=fit(str(msg["e"]), 600))

    while True:
        now = time.monotonic()
        if exited_at is None and now >= deadline:
            timed_out = True
            try:
                child.kill()
            except OSError:
                pass
            exited_at = now
        if exited_at is not None and (open_fds == 0 or now >= exited_at + 0.2):
            break  # a process the candidate left may hold the pipes open: stop shortly after
        wait_s = (exited_at + 0.2 if exited_at is not None else deadline) - now
        for fd, _ in poller.poll(max(1, int(min(wait_s, 0.05 if pidfd < 0 else wait_s) * 1000))):
            if fd == pidfd:
                poller.unregister(pidfd)
                exited_at = time.monotonic()
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data:
                poller.unregister(fd)
                open_fds -= 1
                continue
            if fd == read_values:
                pending += data
                while True:
                    at = pending.find(b"\n")
                    if at < 0:
                        if len(pending) > cap:  # a line over the cap: drop it up to its newline
                            pending.clear()
                            skipping = True
                        break
                    line = bytes(pending[:at])
                    del pending[: at + 1]
                    if not skipping:
                        handle(line)
                    skipping = False
            else:
                kept = streams[fd]
                room = stream_cap - len(kept)
                if len(data) > room:
                    truncated = True
                kept += data[: max(0, room)]
        if pidfd < 0 and exited_at is None and child.poll() is not None:
            exited_at = time.monotonic()
    if pidfd >= 0:
        os.close(pidfd)
    code = child.wait()
    if code < 0:  # killed by signal N: 128 + N, as the sandbox reports it
        code = 128 - code
    for fd in (*streams, read_values):
        os.close(fd)
    out, err = (bytes(streams[f.fileno()]).decode("utf-8", "replace") for f in (child.stdout, child.stderr))
    emit("end", unit=u, exit=code, timed_out=timed_out, stdout=fit(out, stream_cap),
         stderr=fit(err, stream_cap), truncated=truncated, error="")
    sweep()


if not private():
    emit("failed", error="the harness could not make itself non-dumpable, so it ran nothing")
    raise SystemExit(3)
# Python handles SIGINT, and a handled signal reaches even pid 1: back to the default, which pid 1
# does not get from inside the sandbox (elsewhere the candidate could SIGKILL us anyway).
signal.signal(signal.SIGINT, signal.SIG_DFL)
for u, unit in enumerate(job["units"]):
    run_unit(u, unit)
emit("done")
'''


@dataclass(frozen=True)
class Unit:
    """One candidate run: code, and the calls (as `Suite.wire()` gives them) to make in it."""

    code: str
    calls: list
    timeout_s: float


@dataclass
class Job:
    """One exec of the runner: what to pass to `SandboxRunner.exec`, and the key to read it with."""

    program: str
    files: dict
    limits: dict
    key: bytes
    units: int


def prepare(units: list[Unit], output_bytes: int) -> Job:
    """The exec that runs `units` one after another. The runner's whole output stays within
    `output_bytes`: each unit gets an equal share, split between its calls' values and the
    candidate's stdout and stderr."""
    key = secrets.token_bytes(32)
    share = int(output_bytes * 0.9) // max(1, len(units)) - 2048
    stream_cap = max(256, min(MAX_STREAM_BYTES, share // 8))
    wire = []
    for unit in units:
        room = share - 2 * stream_cap
        value_cap = max(MIN_VALUE_BYTES, min(MAX_VALUE_BYTES, room // max(1, len(unit.calls))))
        wire.append({"code": unit.code, "calls": unit.calls, "timeout_s": unit.timeout_s,
                     "value_cap": value_cap, "stream_cap": stream_cap})
    job = {"key": key.hex(), "child": CHILD, "units": wire}
    timeout_s = sum(unit.timeout_s for unit in units) + MARGIN_S
    return Job(program=RUNNER, files={JOB_FILE: json.dumps(job)},
               limits={"timeout_s": timeout_s, "output_bytes": output_bytes}, key=key, units=len(units))


def unit_timeout(exec_timeout_s: float) -> float:
    """A single unit's time in an exec limited to `exec_timeout_s` (the runner's margin off)."""
    return max(0.1, exec_timeout_s - MARGIN_S)


@dataclass
class UnitReport:
    """What the runner said about one unit."""

    loaded: bool | None = None  # the candidate's code ran to its end (None: never reported)
    error: str = ""  # why the code did not load, or why the unit could not start
    values: dict = field(default_factory=dict)  # call index -> Returned | Failed
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    timed_out: bool = False
    truncated: bool = False
    finished: bool = False  # the runner reported the unit's end


def read(result: ExecResult, job: Job) -> tuple[list[UnitReport], str]:
    """The units' reports from the runner's authenticated lines, and the runner's own failure
    ("" if none). Lines without a valid tag, repeats and malformed data are ignored."""
    reports = [UnitReport() for _ in range(job.units)]
    failure, seen = "", set()
    for line in result.stdout.splitlines():
        msg = _verified(line, job.key)
        if msg is None or msg.get("seq") in seen:
            continue
        seen.add(msg.get("seq"))
        kind, unit = msg.get("kind"), msg.get("unit")
        if kind == "failed":
            failure = str(msg.get("error", ""))[:300]
            continue
        if type(unit) is not int or not 0 <= unit < job.units:
            continue
        report = reports[unit]
        if kind == "loaded":
            report.loaded = msg.get("ok") is True
            report.error = str(msg.get("error", ""))[:600]
        elif kind == "value" and type(msg.get("i")) is int:
            report.values[msg["i"]] = _value(msg)
        elif kind == "end":
            report.finished = True
            report.stdout, report.stderr = str(msg.get("stdout", "")), str(msg.get("stderr", ""))
            report.exit_code = msg.get("exit") if type(msg.get("exit")) is int else None
            report.timed_out = msg.get("timed_out") is True
            report.truncated = msg.get("truncated") is True
            if msg.get("error"):
                report.error = str(msg["error"])[:600]
    return reports, failure


def _verified(line: str, key: bytes) -> dict | None:
    body, sep, tag = line.rpartition(" ")
    if not sep or len(tag) != 64 or not tag.isascii():  # compare_digest refuses non-ASCII text
        return None
    try:
        expected = hmac.new(key, body.encode("ascii"), hashlib.sha256).hexdigest()
    except UnicodeEncodeError:
        return None
    if not hmac.compare_digest(tag, expected):
        return None
    try:
        msg = json.loads(body)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) else None


def _value(msg: dict) -> Returned | Failed:
    if "r" in msg:
        text = str(msg["r"])
        try:
            return Returned(literals.parse(text))
        except literals.NotALiteral:
            shown = text if len(text) <= 60 else text[:57] + "..."
            return Failed(f"returned {shown}, which does not cross as a literal")
    return Failed(f"raised {str(msg.get('e', ''))[:300]}")


def outcome(suite: Suite, report: UnitReport, result: ExecResult, runner_failure: str = "") -> dict:
    """The step outcome (ran, passed, total, error, failures), decided on the host. The total is
    the suite's; tests count only once the candidate's code has loaded."""
    total = len(suite.tests)
    out = {"ran": report.loaded is True, "passed": 0, "total": total, "error": "", "failures": []}
    if report.loaded is True:
        for test, (ok, why) in zip(suite.tests, suite.decide(report.values)):
            if ok:
                out["passed"] += 1
            else:
                out["failures"].append((test.source[:120], why))
    if report.loaded is False:
        out["error"] = report.error or "the solution's code raised an error"
    elif report.loaded is None:
        out["error"] = _why_silent(report, result, runner_failure)
    elif report.timed_out or (result.timed_out and not report.finished):
        out["error"] = "timed out"
    elif not report.finished:
        out["error"] = "ran out of memory" if result.oom else (
            runner_failure or result.error or "the harness in the sandbox stopped before the calls finished")
    return out


def _why_silent(report: UnitReport, result: ExecResult, runner_failure: str) -> str:
    if runner_failure or result.error:
        return runner_failure or result.error
    if report.timed_out or result.timed_out:
        return "timed out before the solution's code finished loading"
    if result.oom:
        return "ran out of memory"
    if report.finished:
        return report.error or f"the solution's process ended before its code finished loading (exit code {report.exit_code})"
    tail = (result.stderr.strip().splitlines() or ["no report from the harness"])[-1]
    return f"the harness in the sandbox stopped early: {tail[:300]}"


def candidate_result(result: ExecResult, report: UnitReport) -> ExecResult:
    """The exec as the store keeps it: the candidate process's own stdout, stderr and exit code."""
    return ExecResult(
        exit_code=report.exit_code if report.exit_code is not None else result.exit_code,
        stdout=report.stdout, stderr=report.stderr,
        timed_out=result.timed_out or report.timed_out, oom=result.oom, duration_s=result.duration_s,
        truncated=report.truncated or result.truncated, error=result.error, image=result.image,
    )
