"""Findings of a security review of the `tasks` scoring path, as tests.

Three holes. The tests of the first fail until tasks.jsonl gets the probes named here; the
second and third are fixed in literals.py and checks.py (their tests fail on the code before):

1. **Weak bundled tasks.** Every boolean task, held-out ones included, and a few value tasks are
   passed in full by a one-line program that does not solve them (`len(s) > 20` for
   is_pangram, `n % 3 == 1` for is_power_of_two, `max(items)` for last_element, ...): five or
   six probes do not tell a heuristic from a solution. A policy trained by RL finds such
   shortcuts, and each one is a held-out or train `passed` without solving the task. The fix
   is data: add the probe named in `WEAK` (its reference passes it, its heuristic fails it),
   and more like it, to `ouroboros/envs/tasks/data/tasks.jsonl`.
2. **Ints bypass the digit limit.** `literals.parse` takes `0x...`, `0o...` and `0b...` int
   literals of any size (100 kB of hex is a 400,000-bit int), though literals.py documents ints
   "up to Python's 4300-digit conversion limit" and `repr` never writes those forms: a candidate
   sends them by returning an object whose repr is such text. Fix: refuse larger int constants
   in `literals._value`.
3. **Modular pow is not guarded.** `pow(a, e, m)` in a check runs in one C call that neither the
   step budget nor the 2 s deadline can stop; with values that cross as plain decimal reprs
   (4300 digits) one such check takes about 7 s of host CPU, with hex values (hole 2) hours. Only
   task sets whose tests feed solution values into a modular pow are exposed (not the bundled
   one). Fix: bound the work of the three-argument form in `checks._pow_pre`.

And, passing, the adversarial programs the review tried beyond tests/test_forging_tasks.py, run
the real way (TasksAgent -> bwrap through SandboxRunner -> host verdict -> TasksJudge): each
earns no test credit and leaves only the runner's tagged lines on the channel the host reads.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import pytest

from ouroboros.actors.agent import TasksAgent
from ouroboros.actors.judge import TasksJudge
from ouroboros.config import JudgeConfig
from ouroboros.envs.tasks import literals, load_tasks
from ouroboros.envs.tasks.checks import DEADLINE_S
from test_forging_tasks import PRELUDE, ScriptedGenerator, reply, runner, verified_lines  # noqa: F401 (the sandbox fixture)


# task id -> (a program that does not solve the task, a test its reference passes and it fails)
WEAK = {
    # held-out
    "is_sorted": ("def is_sorted(nums):\n    return nums[:1] <= nums[-1:]\n",
                  "assert not is_sorted([1, 3, 2, 4])"),
    "is_pangram": ("def is_pangram(s):\n    return len(s) > 20\n",
                   "assert not is_pangram('abcdefghijklmnopqrstuvwxy' * 2)"),
    "has_pair_with_sum": ("def has_pair_with_sum(nums, target):\n    return len(nums) > 1 and sum(nums) >= target\n",
                          "assert not has_pair_with_sum([1, 2, 4], 4)"),
    "is_power_of_two": ("def is_power_of_two(n):\n    return n % 3 == 1\n",
                        "assert not is_power_of_two(7)"),
    # train
    "last_element": ("def last_element(items):\n    return max(items, default=None)\n",
                     "assert last_element([3, 1]) == 1"),
    "remove_duplicates": ("def remove_duplicates(items):\n    return sorted(set(items))\n",
                          "assert remove_duplicates([3, 1, 3]) == [3, 1]"),
    "balanced_brackets": ("def balanced_brackets(s):\n    return len(s) != 2\n",
                          "assert not balanced_brackets('([)]')"),
    "is_prime": ("def is_prime(n):\n    return n % 5 > 1\n",
                 "assert not is_prime(9)"),
}


def scores(runner, task, codes: list[str]):
    """(trajectory, score) per program, through TasksAgent and a judge that knows `task`."""
    agent = TasksAgent([ScriptedGenerator([reply(c) for c in codes])], [runner], max_new_tokens=1 << 20,
                       sandbox=runner.cfg)
    trajectories = agent.run_episodes([task], samples=len(codes), round_=0, temperature=0.0)
    return list(zip(trajectories, TasksJudge(JudgeConfig(), tasks=[task]).score(trajectories)))


def bundled(task_id: str):
    return next(t for t in load_tasks() if t.id == task_id)


@pytest.fixture(scope="module")
def weak_runs(runner):
    """{task id: ((traj, score) of the heuristic on the bundled task,
                  (traj, score) of the heuristic and of the reference with the extra probe)}."""
    out = {}
    for task_id, (wrong, probe) in WEAK.items():
        task = bundled(task_id)
        [as_is] = scores(runner, task, [wrong])
        probed = dataclasses.replace(task, tests=[*task.tests, probe])
        out[task_id] = (as_is, scores(runner, probed, [wrong, task.reference]))
    return out


@pytest.mark.parametrize("task_id", sorted(WEAK))
def test_a_one_line_heuristic_does_not_pass_a_bundled_task(weak_runs, task_id):
    (traj, score), _ = weak_runs[task_id]
    assert score.components["valid"] == 1.0 and traj.steps[0].outcome["ran"], traj.steps[0].outcome
    assert not score.passed, (f"{task_id} ({bundled(task_id).split}) is passed in full by a program that does not "
                              f"solve it:\n{WEAK[task_id][0]}add a probe such as `{WEAK[task_id][1]}`")


@pytest.mark.parametrize("task_id", sorted(WEAK))
def test_the_proposed_probe_tells_the_heuristic_from_the_reference(weak_runs, task_id):
    _, [(_, wrong), (_, reference)] = weak_runs[task_id]
    assert reference.passed and not wrong.passed


# ----------------------------------------------------------------------------- literals and checks

BIG_INTS = ["0x" + "f" * 4000, "0o" + "7" * 6000, "0b" + "1" * 20000, "-0x" + "f" * 4000, "[0x" + "f" * 90000 + "]",
            "0x_" + "f_" * 4000 + "f"]


@pytest.mark.parametrize("text", BIG_INTS, ids=[t[:6] for t in BIG_INTS])
def test_ints_beyond_the_digit_limit_do_not_cross_in_any_base(text):
    """repr writes ints in decimal, so a larger int in another base only comes from a forged repr."""
    with pytest.raises(literals.NotALiteral):
        literals.parse(text)


def test_ints_up_to_the_digit_limit_still_cross():
    for value in (10 ** 4299, -(10 ** 4300 - 1), 2 ** 14000):
        assert literals.parse(repr(value)) == value
    assert literals.parse("0x" + "f" * 1000) == int("f" * 1000, 16)


MODPOW = textwrap.dedent("""
    import sys, time
    sys.set_int_max_str_digits(0)
    from ouroboros.envs.tasks.checks import compile_suite, Returned
    suite = compile_suite(["assert pow(f(1), f(2), f(3)) == 5"], "f")
    big = 10 ** 4300 - 1  # the largest int whose decimal repr crosses
    started = time.monotonic()
    (ok, why), = suite.decide({0: Returned(3), 1: Returned(big), 2: Returned(big - 2)})
    print(ok, round(time.monotonic() - started, 2), why[:60])
""")


def test_a_modular_pow_over_candidate_values_stays_within_the_deadline():
    """The check runs in a child process (host-side code only, no candidate program): unfixed, its
    pow holds the GIL for about 7 s, which no thread could interrupt."""
    limit = DEADLINE_S + 2.0
    try:
        proc = subprocess.run([sys.executable, "-c", MODPOW], capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"one check of `pow(f(1), f(2), f(3))` over 4300-digit values took more than {limit} s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("False "), proc.stdout


# ----------------------------------------------------------------------------- adversarial programs that earn 0

OPAQUE = 'class Opaque:\n    def __repr__(self):\n        return "Opaque()"\n'

REVIEW_FORGERS = {
    # prlimit(2) needs only the same uid, not a dumpable target: cripple the runner (pid 1).
    "prlimit_runner": r'''
import resource
for res, val in ((resource.RLIMIT_NOFILE, (4, 4)), (resource.RLIMIT_AS, (1 << 20, 1 << 20)),
                 (resource.RLIMIT_CPU, (1, 1))):
    try:
        resource.prlimit(1, res, val)
    except (OSError, ValueError):
        pass
spray()
def ENTRY(*args, **kwargs):
    spray()
    return Opaque()
''',
    # Signals to its own process group, the runner's, pid 1 through a pidfd, with handlers ignored.
    "group_signals": r'''
import signal, time
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTOU,
            signal.SIGXCPU, signal.SIGSTOP):
    if sig != signal.SIGSTOP:
        signal.signal(sig, signal.SIG_IGN)
    for send, target in ((os.killpg, os.getpgid(1)), (os.killpg, 1), (os.kill, -1)):
        try:
            send(target, sig)
        except OSError:
            pass
try:
    signal.pidfd_send_signal(os.pidfd_open(1), signal.SIGSTOP)
except OSError:
    pass
time.sleep(0.1)
print("FORGER group_signals", flush=True)
spray()
def ENTRY(*args, **kwargs):
    spray()
    return Opaque()
''',
    # The harness's own frames in the candidate process: its job (no key, no tests), its `send`,
    # used for out-of-range, negative, float, bool and huge indices.
    "frame_steal": r'''
import re
def ENTRY(*args, **kwargs):
    frame, seen = sys._getframe(1), {}
    while frame is not None:
        for k, v in frame.f_locals.items():
            seen.setdefault(k, v)
        frame = frame.f_back
    job = seen.get("job") or {}
    if set(job) - {"code", "calls", "cap"} or [m for m in re.findall(r"[0-9a-f]{64}", json.dumps(job, default=str))
                                               if len(set(m)) > 8]:
        breach("the candidate process holds more than its code and calls: %r" % sorted(job))
    send, calls = seen.get("send"), seen.get("calls") or []
    if send:
        for i in [*range(len(calls) + 4), -1, 10 ** 30, 1.0, True, "0"]:
            send({"i": i, "r": FAKE})
        send({"loaded": False, "e": "x"})
    print("FORGER frame_steal", flush=True)
    return Opaque()
''',
    # Reprs at the literal parser's corners; an exception whose type has no name and no str.
    "weird_reprs": r'''
class Meta(type):
    def __getattribute__(cls, name):
        if name == "__name__":
            raise RuntimeError("no name")
        return type.__getattribute__(cls, name)
class Boom(Exception, metaclass=Meta):
    def __str__(self):
        raise RuntimeError("no str")
class StrSub(str):
    def __len__(self): return 0
def make(text):
    return type("Trick", (), {"__repr__": lambda self: text})()
loop = []
loop.append(loop)
texts = ["0x" + "f" * 90000, "[" * 199 + "]" * 199, "-" * 90000 + "1", "not True", "...", "{**{}}", "[*[]]",
         "(1)(2)", "1 if 1 else 2", "True + True", "nanj + 1", "'x\u2028y'", "'a' 'b'", "{1: 2, **x}",
         "set([1])", "frozenset([1])", "frozenset({frozenset()})", "b'\\xff'"]
tricks = [lambda: loop, lambda: make(StrSub("Forged()"))] + [lambda t=t: make(t) for t in texts]
made = [-1]
print("FORGER weird_reprs", flush=True)
def ENTRY(*args, **kwargs):
    made[0] += 1
    if made[0] % 7 == 6:
        raise Boom()
    return tricks[made[0] % len(tricks)]()
''',
    # Threads and a python -I grandchild that keep writing (whole and partial lines) on every
    # inherited descriptor after the calls return; a self-SIGSTOP mid-line.
    "late_writers": r'''
import subprocess, threading, time
def pump():
    for _ in range(100):
        spray(range(3, 16))
        for fd in range(3, 16):
            try:
                os.write(fd, b'{"i": 0, "r": "[1')
            except OSError:
                pass
        time.sleep(0.005)
for _ in range(3):
    threading.Thread(target=pump, daemon=True).start()
fds = []
for fd in range(3, 64):
    try:
        os.fstat(fd)
        fds.append(fd)
    except OSError:
        pass
child = "import os, time\ntime.sleep(0.2)\nfor fd in range(3, 16):\n    try:\n        os.write(fd, %r)\n    except OSError:\n        pass\n" % FORGED
subprocess.Popen([sys.executable, "-I", "-c", child], pass_fds=fds, start_new_session=True)
print("FORGER late_writers", flush=True)
made = [0]
def ENTRY(*args, **kwargs):
    made[0] += 1
    if made[0] == 3:
        os.kill(os.getpid(), 19)
    return Opaque()
''',
}


@pytest.fixture(scope="module")
def review_forged(runner):
    task = bundled("pascal_row")
    codes = {n: (PRELUDE + OPAQUE + body).replace("ENTRY", task.entry_point) for n, body in REVIEW_FORGERS.items()}

    start = len(runner.execs)
    rows = scores(runner, task, list(codes.values()))
    execs = runner.execs[start:]
    assert len(execs) == len(codes)
    return {n: (*row, *kept) for n, row, kept in zip(codes, rows, execs)}


@pytest.mark.parametrize("name", sorted(REVIEW_FORGERS))
def test_review_forgers_earn_nothing(review_forged, name):
    traj, score, files, raw = review_forged[name]
    step = traj.steps[0]
    assert step.action.valid, step.action.error
    assert score.components["tests"] == 0.0 and not score.passed, step.outcome
    assert step.outcome["passed"] == 0 and step.outcome["total"] == len(bundled("pascal_row").tests)
    good, bad = verified_lines(files, raw.stdout)
    assert not bad, f"{name}: lines without the runner's tag reached the host: {bad[:3]}"
    shown = (step.result.stdout + step.result.stderr) if step.result else ""
    assert "BREACH" not in shown, shown[:2000]
