"""The program that runs model-written code against a task's hidden tests, in a sandbox.

Two processes, so the candidate code never shares an interpreter with what decides its score:

- The *harness* (the sandbox's main program) reads the nonce, the tests and the candidate from
  files and deletes the first two before anything else runs. It marks itself non-dumpable, so
  the candidate, which runs as the same uid, cannot read its memory through /proc or ptrace.
  It turns each test into a *probe*: for `assert <expr> == <literal>` the probe is `<expr>`
  and the expected value stays in the harness; any other test is probed whole, for truth.
- The *candidate process* is a fresh Python (not a fork, so none of the harness's memory comes
  along) that runs the candidate code, then evaluates each probe and writes the value's
  `repr` (or the exception) on a pipe. Its stdout and stderr are the exec's.
- The harness compares: an `==` probe passes only if the reported repr parses as a literal equal
  to the expected value, which the candidate never saw; a truth probe passes if it reported
  true. It prints its result after every probe on a line starting with the per-exec nonce, so
  a timeout keeps the partial count and the candidate cannot print a result line (it never
  saw the nonce).

What a hostile candidate can still do: report any value for a probe, which only helps if it
knows the expected value (the hidden test), and report "true" for truth probes, a minority of
tests (64 of 294 in the bundled set). An object whose `__eq__` always answers True no longer
passes, since only the repr crosses the pipe.
"""
from __future__ import annotations

import json
import secrets

from ouroboros.types import ExecResult, Task

CANDIDATE = r'''
import json, os, sys
out = os.fdopen(int(sys.argv[1]), "w", buffering=1)
job = json.loads(sys.stdin.read())
os.close(0)
os.open("/dev/null", os.O_RDONLY)
namespace = {"__name__": "__candidate__"}
try:
    exec(compile(job["candidate"], "candidate.py", "exec"), namespace)
except BaseException as exc:
    out.write(json.dumps({"loaded": False, "error": (type(exc).__name__ + ": " + str(exc))[:300]}) + "\n")
    raise SystemExit(1)
out.write(json.dumps({"loaded": True}) + "\n")
for index, (mode, probe) in enumerate(job["probes"]):
    try:
        if mode == "exec":  # a test that is not a single assert: it passes if it raises nothing
            exec(compile(probe, "test", "exec"), namespace)
            value = True
        else:
            value = eval(compile(probe, "test", "eval"), namespace)
        out.write(json.dumps({"index": index, "repr": repr(value)[:100000], "truth": bool(value)}) + "\n")
    except BaseException as exc:
        out.write(json.dumps({"index": index, "error": (type(exc).__name__ + ": " + str(exc))[:120]}) + "\n")
'''

HARNESS = r'''
import ast, json, os, subprocess, sys
def private():
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE: no /proc/<pid>/mem
    except Exception:
        pass
private()
nonce = open("nonce.txt").read().strip()
tests = json.load(open("tests.json"))
candidate = open("candidate.py").read()
child_src = open("candidate_runner.py").read()
for name in ("nonce.txt", "tests.json", "candidate_runner.py"):
    os.unlink(name)
probes, expected = [], []
for test in tests:
    probe, want = ("exec", test), None
    try:
        node = ast.parse(test).body
        if len(node) == 1 and isinstance(node[0], ast.Assert):
            check = node[0].test
            probe = ("eval", ast.unparse(check))
            if isinstance(check, ast.Compare) and len(check.ops) == 1 and isinstance(check.ops[0], ast.Eq):
                want = ("eq", ast.literal_eval(check.comparators[0]))
                probe = ("eval", ast.unparse(check.left))
    except (SyntaxError, ValueError, TypeError):
        pass
    probes.append(probe)
    expected.append(want)
result = {"ran": False, "error": "", "passed": 0, "total": len(tests), "failures": []}
def report():
    sys.stdout.write("\n" + nonce + json.dumps(result) + "\n")
    sys.stdout.flush()
read_end, write_end = os.pipe()
child = subprocess.Popen([sys.executable, "-c", child_src, str(write_end)], stdin=subprocess.PIPE,
                         pass_fds=(write_end,))
os.close(write_end)
child.stdin.write(json.dumps({"candidate": candidate, "probes": probes}).encode())
child.stdin.close()
done = set()
for line in os.fdopen(read_end):
    try:
        msg = json.loads(line)
        index = msg.get("index")
    except (ValueError, AttributeError):
        continue
    if "loaded" in msg:
        if msg["loaded"] is True and not result["ran"] and not done:
            result["ran"] = True
        elif msg["loaded"] is False:
            result["error"] = str(msg.get("error", ""))[:300]
        report()
        continue
    if not result["ran"] or not isinstance(index, int) or not 0 <= index < len(tests) or index in done:
        continue
    done.add(index)
    want, ok = expected[index], False
    if "error" in msg:
        why = str(msg["error"])[:120]
    elif want is None:
        ok, why = msg.get("truth") is True, "assertion failed"
    else:
        try:
            ok = ast.literal_eval(str(msg.get("repr"))) == want[1]
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
        why = "AssertionError: wrong value"
    if ok:
        result["passed"] += 1
    else:
        result["failures"].append((tests[index][:120], why))
    report()
child.wait()
if not result["ran"] and not result["error"]:
    result["error"] = "the candidate process ended before it reported (exit code %d)" % child.returncode
report()
'''


def harness_files(task: Task, code: str) -> tuple[str, dict[str, str], str]:
    """(program, files, nonce) for one exec of `code` against `task`'s tests."""
    nonce = "@@OUROBOROS-RESULT-" + secrets.token_hex(8) + "@@"
    files = {"candidate.py": code, "tests.json": json.dumps(task.tests), "nonce.txt": nonce,
             "candidate_runner.py": CANDIDATE}
    return HARNESS, files, nonce


def read_outcome(result: ExecResult, nonce: str, total: int) -> dict:
    """The harness's last report, or a zero outcome that says why there is none."""
    outcome = {"ran": False, "passed": 0, "total": total, "error": "", "failures": []}
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(nonce):
            try:
                outcome.update(json.loads(line[len(nonce):]))
            except json.JSONDecodeError:
                continue
            break
    else:
        if result.timed_out:
            outcome["error"] = "timed out before the harness reported"
        elif result.oom:
            outcome["error"] = "ran out of memory"
        else:
            outcome["error"] = result.error or (result.stderr.strip().splitlines() or ["no result"])[-1][:300]
    if result.timed_out and not outcome["error"]:
        outcome["error"] = "timed out"
    return outcome
