"""The tasks environment's test language (envs/tasks/checks.py) and how values cross the
sandbox's boundary (envs/tasks/literals.py), on the host alone: what a test may say, what is
refused and why, and that a check over values the candidate chose stays within its limits."""
from __future__ import annotations

import math
import time

import pytest

from ouroboros.envs.tasks import checks, literals
from ouroboros.envs.tasks.checks import Failed, Returned, TestRefused, compile_suite, compile_test


def decide(tests: list[str], solution, entry_point: str = "f") -> list[tuple[bool, str]]:
    """Each test's verdict when the solution's calls return what `solution` computes here."""
    suite = compile_suite(tests, entry_point)
    results = {}
    for i, call in enumerate(suite.calls):
        try:
            results[i] = Returned(solution(call.function, *call.args, **dict(call.kwargs)))
        except Exception as exc:  # noqa: BLE001 - what the sandbox reports as "raised"
            results[i] = Failed(f"raised {type(exc).__name__}: {exc}")
    return suite.decide(results)


def test_asserts_beyond_equality_are_decided_like_python():
    def solution(name, *args, **kwargs):
        if name == "is_prime":
            n = args[0]
            return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))
        if name == "srt":
            return sorted(args[0], reverse=kwargs.get("reverse", False))
        if name == "root":
            return math.sqrt(args[0])
        raise NameError(name)

    tests = [
        "assert all(is_prime(p) for p in [2, 3, 5, 7])",
        "assert not any(is_prime(n) for n in range(8, 11) if n % 2 == 0)",
        "xs = [3, 1, 2]\nassert srt(xs) == sorted(xs)",
        "assert srt([2, 1], reverse=True) == [2, 1] and srt(*[[5, 4]]) == [4, 5]",
        "r = srt([5, 4, 9])\nlo, hi = r[0], r[-1]\nassert lo < hi and len(r) == 3",
        "assert math.isclose(root(2), 1.41421, rel_tol=1e-4)",
        "assert f'{root(4):.1f}' == '2.0'",
        "assert isinstance(srt([]), list) and srt([]) == []",
        "assert {k: is_prime(k) for k in (4, 5)} == {4: False, 5: True}",
        "assert is_prime(7) is True and is_prime(8) is not True",
        "assert is_prime(7) == 1",  # True == 1, as in Python
        "assert ' '.join(str(x) for x in srt([3, 1])) == '1 3'",
        "assert srt([1, 2]).index(2) == 1, 'the message is never evaluated: ' + undefined",
        "assert [srt([i, 0]) for i in range(3)] == [[0, 0], [0, 1], [0, 2]]",
        "assert is_prime(4)",  # fails
        "assert helper(1) == 2",  # a function the solution does not define
    ]
    verdicts = decide(tests, solution, "is_prime")
    assert [ok for ok, _ in verdicts] == [True] * 14 + [False, False], verdicts
    assert verdicts[14][1] == "assertion failed: is_prime(4) returned False"
    assert verdicts[15][1] == "helper(1) raised NameError: helper"


def test_each_distinct_call_is_made_once_and_comprehensions_are_enumerated():
    suite = compile_suite(["assert [f(i) for i in range(3) if i != 1] == [0, 4]", "assert f(0) == 0",
                           "n = 2\nassert f(n) + f(n) == 8", "assert f(x=2) == 4"], "f")
    assert [c.text() for c in suite.calls] == ["f(0)", "f(2)", "f(x=2)"]
    assert [c.wire() for c in suite.calls] == [["f", "(0,)", "{}"], ["f", "(2,)", "{}"], ["f", "()", "{'x': 2}"]]


def test_generators_stay_lazy_so_any_stops_at_the_first_true():
    suite = compile_suite(["assert any(f(i) == 1 for i in range(3))"], "f")
    results = {0: Returned(5), 1: Returned(1)}  # f(2) never came back (the program ran out of time)
    assert suite.decide(results) == [(True, "")]
    assert suite.decide({0: Returned(5)})[0][0] is False


REFUSED = [
    ("import os\nassert f(1)", "only `assert` statements and `name = expression` assignments are allowed, not Import"),
    ("for i in range(3): assert f(i)", "not For"),
    ("assert f(g(1))", "use what the solution returned"),
    ("x = f(1)\nassert f(x) == 2", "use what the solution returned"),
    ("assert f(object())", "object is not a builtin checks know"),
    ("assert [f(y) for y in f(1)]", "use what the solution returned"),
    ("r = f(1)\nassert [f(y) for y in r]", "use what the solution returned"),
    ("r = f(1)\nassert [f(2) for y in r]", "in a comprehension over what the solution returned"),
    ("assert f(1).__class__", "attribute .__class__ is not available"),
    ("assert (lambda: 1)() == f(1)", "calls something that is not a name or a method"),
    ("assert type(f(1))(2) == 2", "calls something that is not a name or a method"),
    ("g = sorted\nassert g(f(1))", "calls g, a value the test assigned"),
    ("assert len(f) == 1", "the solution's f can only be called"),
    ("assert f(1) == y", "name 'y' is neither assigned in the test nor a builtin"),
    ("assert f(1) @ 2", "MatMult operator is not supported"),
    ("assert f(x := 1)", "NamedExpr is not supported"),
    ("assert 1 == 1", "never calls the solution"),
    ("f(1) == 2", "not Expr"),
    ("a = b = f(1)\nassert a", "chained assignment"),
    ("assert f(1) ==", "not valid Python"),
    ("assert f([1] * 100000)", "longer than 65536 characters"),
    ("assert [f(i) for i in range(10 ** 6)]", "bind more than 10000 items"),
    ("assert f(1 / 0)", "fails before calling the solution: ZeroDivisionError"),
    ("assert f(range(3))", "are not literals"),
]


@pytest.mark.parametrize("source,why", REFUSED, ids=[s.split("\n")[-1][:40] for s, _ in REFUSED])
def test_tests_outside_the_language_are_refused_with_the_reason(source, why):
    with pytest.raises(TestRefused) as err:
        compile_test(source, "f")
    assert why in str(err.value)


def test_a_suite_names_the_refused_test():
    with pytest.raises(TestRefused, match=r"test 2 \('assert f\(g\(1\)\)'\): the arguments of f"):
        compile_suite(["assert f(1) == 1", "assert f(g(1))"], "f")


# What a hostile candidate returns meets a guarded evaluator: each of these fails the test,
# quickly, with a reason, and never takes the host's memory or time.
HOSTILE = [
    ("assert len(f(1) * f(2)) == 0", ["a" * 100_000, 10 ** 6], "more than 1000000 items"),
    ("assert f(2) ** f(2) == 0", [10 ** 6], "a power of more than"),
    ("assert pow(2, f(2)) == 0", [10 ** 9], "a power of more than"),
    ("assert 1 << f(2) == 0", [10 ** 9], "a shift to more than"),
    ("assert f(1).join([f(1)] * 100) == ''", ["a" * 100_000], "more than 1000000 items"),
    ("assert f(1).center(f(2)) == ''", ["a", 10 ** 9], "a width over"),
    ("assert f'{f(1):>{f(2)}}' == ''", ["a", 10 ** 6], "a format width or precision over"),
    ("assert '%s' % f(1) == ''", ["a"], "%-formatting is not supported"),
    ("assert math.factorial(f(2)) == 1", [10 ** 6], "an argument over 10000"),
    ("assert list(range(f(2))) == []", [10 ** 9], "a range of more than"),
    ("assert [x for x in range(10 ** 6) for y in range(10 ** 6)] == f(1)", [0], "more than 20000 steps"),
    ("assert sum(map(sum, [range(10 ** 6)] * 10 ** 6)) == f(1)", [0], "more than 20000 steps"),
    ("assert sum(f(1), []) == []", [[[1]] * 1000], "sum() with a start that is not a number"),
    ("assert round(f(2), -f(2)) == 0", [10 ** 6], "round() to more than"),
    ("assert f(1) > 0", [[1]], "the check raised TypeError"),
    ("assert isinstance(f(1), type('T', (str,), {}))", ["x"], "type() takes one argument"),
]


@pytest.mark.parametrize("test,values,why", HOSTILE, ids=[h[0][:40] for h in HOSTILE])
def test_checks_over_hostile_values_stay_within_limits(test, values, why, monkeypatch):
    # A smaller step budget, so the step limit (not the 2 s deadline) stops the endless loops
    # even on a loaded machine; the real budget is the same code with a larger number.
    monkeypatch.setattr(checks, "STEPS", 20_000)
    suite = compile_suite([test], "f")
    by_arg = {1: values[0], 2: values[-1]}
    results = {i: Returned(by_arg[c.args[0]]) for i, c in enumerate(suite.calls)}
    started = time.monotonic()
    (ok, reason), = suite.decide(results)
    assert not ok and why in reason, reason
    assert time.monotonic() - started < 3.0


def test_values_that_failed_to_cross_fail_their_tests():
    suite = compile_suite(["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"], "f")
    verdicts = suite.decide({0: Failed("returned Opaque(), which does not cross as a literal"),
                             1: Failed("raised ValueError: no")})
    assert verdicts == [(False, "f(1) returned Opaque(), which does not cross as a literal"),
                        (False, "f(2) raised ValueError: no"),
                        (False, "f(3) did not return: the program ended or ran out of time first")]


def test_trivial_solutions_are_found():
    assert compile_suite(["assert f(1)", "assert f(2) == 1"], "f").trivial_pass() == \
        "a function that always returns True"
    assert compile_suite(["assert f(1) is None", "assert not f(0)"], "f").trivial_pass() == \
        "a function that always returns None"
    assert compile_suite(["assert f([]) == []", "assert not f(0)"], "f").trivial_pass() == \
        "a function that always returns []"
    assert compile_suite(["assert f('a') == 'a'", "assert f('') == ''"], "f").trivial_pass() == \
        "a function that returns its first argument"
    assert compile_suite(["assert f(1)", "assert not f(2)", "assert f(3) == 'x'"], "f").trivial_pass() is None


ROUND_TRIP = [None, True, 1, -1, 2 ** 100, 1.5, -0.0, math.nan, math.inf, -math.inf, 1 + 2j, complex(-0.0, -0.0),
              complex(0, -1), complex(math.nan, math.inf), "a'b\"", "é😀\x00", b"\x00\xff", (), (1,), [1, [2]],
              {"a": {1, 2}}, set(), frozenset(), frozenset({frozenset({1})}), {1: (2, 3)}]


@pytest.mark.parametrize("value", ROUND_TRIP, ids=[repr(v)[:30] for v in ROUND_TRIP])
def test_literal_values_cross_exactly(value):
    assert literals.crosses(value)
    assert repr(literals.parse(repr(value))) == repr(value)


NOT_LITERALS = ["__import__('os').system('x')", "x", "[" * 300 + "]" * 300, "9" * 5000, "f(1)", "lambda: 1",
                "{[]: 1}", "'Fizz' + 'Buzz'", "[1] + [1]", "...", "-'a'", "(1+2j)+3", "set([1])", "True if 1 else 0",
                "'\ud800'", "Opaque()"]


@pytest.mark.parametrize("text", NOT_LITERALS, ids=[t[:20] for t in NOT_LITERALS])
def test_anything_but_a_literal_is_refused(text):
    with pytest.raises(literals.NotALiteral):
        literals.parse(text)
