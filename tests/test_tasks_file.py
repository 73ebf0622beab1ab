"""Bring your own tasks: `env.tasks_file` loads a user's task set, refuses one it cannot score
(every problem listed, by file and line; references run in the sandbox), and the harness decides
its tests, which may be any asserts within the test language, not only `==` literals."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import require_bwrap
from ouroboros.actors.agent import TasksAgent
from ouroboros.actors.judge import TasksJudge
from ouroboros.actors.sandbox_runner import SandboxRunner
from ouroboros.backends.scripted import ScriptedBackend
from ouroboros.config import ConfigError, JudgeConfig, SandboxConfig
from ouroboros.envs.tasks import load_tasks
from ouroboros.envs.tasks.dataset import TaskSetError
from ouroboros.envs.tasks.references import check_references

# A set whose tests go beyond `== literal`: truth, comprehensions, assignments, methods, math,
# keyword arguments, and a helper the solution must also define.
GOOD = [
    {"id": "primes", "split": "train", "prompt": "Write `primes_below(n)`.", "entry_point": "primes_below",
     "tests": ["assert primes_below(10) == [2, 3, 5, 7]",
               "ps = primes_below(30)\nassert len(ps) == 10 and all(p > 1 for p in ps) and ps == sorted(ps)",
               "assert all(is_prime(p) for p in [2, 3, 5, 7, 11, 13])",
               "assert not any(is_prime(n) for n in (0, 1, 4, 9, 100))",
               "assert primes_below(2) == [] and isinstance(primes_below(3), list)"],
     "reference": "def is_prime(n):\n    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))\n"
                  "def primes_below(n):\n    return [k for k in range(n) if is_prime(k)]\n"},
    {"id": "stats", "split": "heldout", "prompt": "Write `mean_sd(xs, ddof=0)`.", "entry_point": "mean_sd",
     "tests": ["m, s = mean_sd([1, 2, 3, 4])\nassert m == 2.5 and math.isclose(s, 1.118, rel_tol=1e-3)",
               "assert math.isclose(mean_sd([1, 2, 3, 4], ddof=1)[1], 1.291, rel_tol=1e-3)",
               "assert f'{mean_sd([2, 2])[0]:.1f}' == '2.0' and mean_sd([5])[1] == 0.0",
               "assert [round(mean_sd([x, x + 2])[0]) for x in range(3)] == [1, 2, 3]"],
     "reference": "def mean_sd(xs, ddof=0):\n    m = sum(xs) / len(xs)\n    n = len(xs) - ddof\n"
                  "    return m, (sum((x - m) ** 2 for x in xs) / n) ** 0.5 if n > 0 else 0.0\n"},
]


def write_set(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_a_task_set_with_problems_is_refused_with_every_problem_by_line(tmp_path):
    bad_test = dict(GOOD[0], id="bad-test", tests=["assert primes_below(primes_below(3))"])
    trivial = dict(GOOD[0], id="trivial", tests=["assert primes_below(3)", "assert primes_below(4) == 1"])
    rows = [GOOD[0], "{not json", "[1, 2]", {"id": "x", "split": "train"}, dict(GOOD[1], split="test"),
            dict(GOOD[0]), bad_test, trivial, dict(GOOD[0], id="extra", source="web")]
    path = write_set(tmp_path / "mine.jsonl", rows)
    with pytest.raises(TaskSetError) as err:
        load_tasks(path=path)
    message = str(err.value)
    assert isinstance(err.value, ConfigError) and "\n" not in message
    assert "8 problem(s)" in message, message
    for expected in ["mine.jsonl:2: not valid JSON", "mine.jsonl:3: expected a JSON object",
                     "mine.jsonl:4 (task 'x'): missing prompt, entry_point, tests, reference",
                     "mine.jsonl:5 (task 'stats'): split must be 'train' or 'heldout', not 'test'",
                     "mine.jsonl:6 (task 'primes'): id 'primes' is used again (first on line 1)",
                     "mine.jsonl:7 (task 'bad-test'): test 1 ('assert primes_below(primes_below(3))'): the arguments",
                     "mine.jsonl:8 (task 'trivial'): a function that always returns True passes all its tests",
                     "mine.jsonl:9 (task 'extra'): unknown field(s) source"]:
        assert expected in message, (expected, message)


def test_a_set_needs_both_splits(tmp_path):
    with pytest.raises(TaskSetError, match="it has no heldout tasks"):
        load_tasks(path=write_set(tmp_path / "train-only.jsonl", [GOOD[0]]))


@pytest.fixture(scope="module")
def runner():
    require_bwrap()
    box = SandboxRunner(SandboxConfig(backend="bwrap", timeout_s=5))
    yield box
    box.cleanup()


def test_a_users_tasks_load_and_their_tests_pay_only_working_solutions(tmp_path, runner):
    tasks = load_tasks(path=write_set(tmp_path / "good.jsonl", GOOD))
    check_references(tasks, [runner], runner.cfg, "good.jsonl")  # raises if any reference fails
    task = tasks[0]
    replies = [json.dumps({"action": "run", "data": code, "notes": ""}) for code in (
        task.reference,
        "def primes_below(n):\n    return [2, 3, 5, 7]\n",  # one value right, no is_prime
        "def is_prime(n):\n    return True\ndef primes_below(n):\n    return list(range(2, n))\n",
    )]
    generator = type("Gen", (), {"generate": lambda self, r: ScriptedBackend(script=replies).generate(r)})()
    agent = TasksAgent([generator], [runner], max_new_tokens=1 << 16, sandbox=runner.cfg)
    trajectories = agent.run_episodes([task], 3, 0, 0.0)
    scores = TasksJudge(JudgeConfig(), tasks).score(trajectories)
    assert [s.components["tests"] for s in scores] == [1.0, 0.2, 0.4]
    assert [s.passed for s in scores] == [True, False, False]
    failures = dict(trajectories[1].steps[0].outcome["failures"])
    assert "is_prime(2) raised NameError: the solution does not define is_prime" in failures.values()


def test_failing_references_are_listed_together(tmp_path, runner):
    wrong = dict(GOOD[0], id="wrong", reference=GOOD[0]["reference"].replace("k for k", "k + 1 for k"))
    opaque = dict(GOOD[1], id="opaque", reference="class R:\n    pass\ndef mean_sd(xs, ddof=0):\n    return R()\n")
    broken = dict(GOOD[1], id="broken", split="train", reference="def mean_sd(xs, ddof=0):\n    return 1 / 0\n")
    tasks = load_tasks(path=write_set(tmp_path / "refs.jsonl", [GOOD[0], wrong, GOOD[1], opaque, broken]))
    with pytest.raises(TaskSetError) as err:
        check_references(tasks, [runner], runner.cfg, "env.tasks_file 'refs.jsonl'")
    message = str(err.value)
    assert message.startswith("env.tasks_file 'refs.jsonl' is refused, 3 problem(s): "), message
    assert "task 'wrong': its reference fails 1 of 5 tests, first `assert primes_below(10) == [2, 3, 5, 7]`" in message
    assert "task 'opaque': its reference fails 4 of 4 tests" in message and "does not cross as a literal" in message
    assert "task 'broken': its reference fails 4 of 4 tests" in message and "ZeroDivisionError" in message
    assert "'primes'" not in message and "'stats'" not in message


def cli_run(tmp_path, tasks_file: str) -> subprocess.CompletedProcess:
    config = tmp_path / "mine.yaml"
    config.write_text(f"""
run: {{name: mine}}
generator: {{backend: scripted, script: ["{{}}"]}}
sandbox: {{backend: bwrap, runners: 1}}
env: {{agents: 1, tasks_file: {tasks_file}}}
""")
    return subprocess.run([sys.executable, "-m", "ouroboros", "run", str(config), "--rounds", "0",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)


def test_cli_refuses_a_malformed_task_set_before_starting(tmp_path):
    path = write_set(tmp_path / "mine.jsonl", [GOOD[0], "{oops", GOOD[1]])
    proc = cli_run(tmp_path, path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().startswith("error: task set ") and "mine.jsonl:2: not valid JSON" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_refuses_failing_references_with_exit_2_and_records_no_run(tmp_path):
    require_bwrap()
    wrong = dict(GOOD[1], reference="def mean_sd(xs, ddof=0):\n    return 0, 0\n")
    proc = cli_run(tmp_path, write_set(tmp_path / "mine.jsonl", [GOOD[0], wrong]))
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: env.tasks_file ") and "1 problem(s): task 'stats': its reference fails" in last
    assert not (tmp_path / "run" / "ouroboros.db").exists()


def test_tasks_file_is_a_setting_of_the_tasks_environment():
    from ouroboros.config import load_config

    assert load_config("configs/smoke.yaml", ["env.tasks_file=mine.jsonl"]).env.tasks_file == "mine.jsonl"
    with pytest.raises(ConfigError, match="tasks_file applies to env.name 'tasks', not 'experiment'"):
        load_config("configs/smoke.yaml", ["env.name=experiment", "env.tasks_file=mine.jsonl"])
