"""The test language of the `tasks` environment: what a hidden test may say, and how the host
decides it without running any of it in the sandbox.

A test is Python: one or more `assert EXPR` statements, optionally after `NAME = EXPR`
assignments. When a task set is loaded, each test is compiled on the host into two parts:

- **Calls into the solution.** A call whose function is a name the checker does not bind (the
  task's entry point, or another function the solution defines) is made in the sandbox, in the
  candidate's process. Its arguments are evaluated here, before the run, so they may not use
  what the solution returns; inside comprehensions the host enumerates every call the test can
  make. Each distinct call is made once, and its value is used wherever the test makes it.
- **The check.** The test itself, evaluated here by a small interpreter over the values those
  calls returned, which crossed back as literals (`literals.py`). The interpreter knows
  constants, operators, comparisons, subscripts, comprehensions, f-strings, a list of pure
  builtins (`SAFE_BUILTINS`), `math`, and the non-mutating methods of literal types. It never
  calls `eval` or `exec`, and it is guarded because it runs on values the candidate chose: sizes
  of what it builds, integer growth, a step budget and a deadline; any error fails the test.

So the expected values, the assertions and the count of tests never enter the sandbox, and an
object that claims to equal everything never leaves it. Truth tests keep Python's meaning
(`assert f(x)` passes on any truthy value); `Suite.trivial_pass` finds task sets where that
lets a function that does no work pass everything, so the loader can refuse them.

A test outside this language is refused when its task set is loaded (`TestRefused`, with the
reason), never half-run.
"""
from __future__ import annotations

import ast
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ouroboros.envs.tasks import literals

MAX_TEST_CHARS = 20_000
MAX_NODES = 5_000  # AST nodes in one test
MAX_CALLS_PER_TEST = 256
MAX_CALLS_PER_TASK = 512
MAX_ARG_CHARS = 65_536  # repr of one call's arguments
MAX_ITEMS = 1_000_000  # elements or characters of any one value the checker builds
MAX_INT_BITS = 1 << 17
MAX_FORMAT_WIDTH = 10_000
MAX_MODPOW_WORK = 10 ** 8  # exponent bits x (modulus digits) ** 2 in pow(a, e, m): about 0.15 s
STEPS = 1_000_000  # interpreter steps per test: nodes, loop items, elements built
DEADLINE_S = 2.0  # wall time per test


class TestRefused(ValueError):
    """A test the checker cannot decide outside the sandbox; str() says why."""

    __test__ = False  # not a pytest test class


class CheckError(Exception):
    """The check could not be completed (a limit, an unsupported operation)."""


class _AssertFailed(Exception):
    pass


# ----------------------------------------------------------------------------- calls and values


@dataclass(frozen=True)
class Call:
    """One call into the solution: the function's name and literal arguments."""

    function: str
    args: tuple
    kwargs: tuple  # ((name, value), ...) sorted by name

    @property
    def key(self) -> str:
        return repr((self.function, self.args, self.kwargs))

    def text(self, limit: int = 80) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs]
        text = f"{self.function}({', '.join(parts)})"
        return text if len(text) <= limit else text[: limit - 4] + "...)"

    def wire(self) -> list[str]:
        """What the sandbox gets: [function, repr(args), repr(kwargs)], literals it parses."""
        return [self.function, repr(self.args), repr(dict(self.kwargs))]


@dataclass(frozen=True)
class Returned:
    value: Any


@dataclass(frozen=True)
class Failed:
    why: str  # "raised ValueError: ...", "returned a value that does not cross as a literal"


# ----------------------------------------------------------------------------- the interpreter's world

_SIZED = (str, bytes, list, tuple, dict, set, frozenset)


def _size(value) -> int:
    return len(value) if isinstance(value, _SIZED) else 1


class _Budget:
    """Steps and a deadline for one test's evaluation."""

    __slots__ = ("left", "steps", "deadline", "ticks")

    def __init__(self, steps: int | None = None, seconds: float | None = None):
        # The limits are read at call time, so a test can lower them.
        self.steps = STEPS if steps is None else steps
        self.left = self.steps
        self.deadline = time.monotonic() + (DEADLINE_S if seconds is None else seconds)
        self.ticks = 0

    def spend(self, n: int = 1) -> None:
        self.left -= n
        self.ticks += 1
        if self.left < 0:
            raise CheckError(f"the check took more than {self.steps} steps")
        if self.ticks & 255 == 0 and time.monotonic() > self.deadline:
            raise CheckError(f"the check took longer than {DEADLINE_S} s")

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise CheckError(f"the check took longer than {DEADLINE_S} s")


def _int_ok(value):
    if type(value) is int and value.bit_length() > MAX_INT_BITS:
        raise CheckError(f"an integer over {MAX_INT_BITS} bits")
    return value


def _len_ok(n: int) -> None:
    if n > MAX_ITEMS:
        raise CheckError(f"a value of more than {MAX_ITEMS} items")


class _Guarded:
    """A builtin, math function or method as the checker exposes it: checks the deadline on
    every call (C loops such as map call back into it), refuses arguments that would build
    something too large, and charges the result's size to the budget."""

    __slots__ = ("fn", "name", "budget", "pre")

    def __init__(self, fn: Callable, name: str, budget: _Budget, pre: Callable | None = None):
        self.fn, self.name, self.budget, self.pre = fn, name, budget, pre

    def __call__(self, *args, **kwargs):
        self.budget.spend()
        self.budget.check_time()
        if self.pre is not None:
            replaced = self.pre(*args, **kwargs)
            if replaced is not None:
                args, kwargs = replaced
        result = self.fn(*args, **kwargs)
        self.budget.spend(_size(result))
        if isinstance(result, _SIZED):
            _len_ok(len(result))
        return _int_ok(result)

    def __repr__(self) -> str:
        return f"<{self.name}>"


def _range_pre(*args):
    if len(range(*args)) > MAX_ITEMS:
        raise CheckError(f"a range of more than {MAX_ITEMS} items")


def _pow_pre(base, exp, mod=None):
    if mod is None:
        _power_ok(base, exp)
    elif type(exp) in (int, bool) and type(mod) in (int, bool):
        # One C call that neither the step budget nor the deadline can stop: about one modular
        # squaring per bit of the exponent, each quadratic in the modulus's size.
        if exp.bit_length() * (abs(mod).bit_length() // 30 + 1) ** 2 > MAX_MODPOW_WORK:
            raise CheckError("a modular power too large to check (pow(base, exp, mod))")


def _power_ok(base, exp) -> None:
    if type(base) in (int, bool) and type(exp) in (int, bool) and exp > 0 and abs(base) > 1:
        if base.bit_length() * exp > MAX_INT_BITS:
            raise CheckError(f"a power of more than {MAX_INT_BITS} bits")


def _round_pre(number, ndigits=None):
    if ndigits is not None and type(ndigits) is int and abs(ndigits) > 10_000:
        raise CheckError("round() to more than 10000 digits")


def _sum_pre(iterable, start=0):
    if type(start) not in (int, float, complex, bool):
        raise CheckError("sum() with a start that is not a number (use a comprehension)")


def _type_pre(*args, **kwargs):
    if len(args) != 1 or kwargs:  # type(name, bases, namespace) would make a class
        raise CheckError("type() takes one argument in checks")


def _arg_at_most(limit: int, *positions):
    def pre(*args, **_kwargs):
        for i in positions:
            if i < len(args) and type(args[i]) is int and args[i] > limit:
                raise CheckError(f"an argument over {limit}")
    return pre


# Guards of methods that can build large values; each takes the method's owner first.
def _replace_pre(owner, old, new, count=-1):
    if isinstance(old, type(owner)) and isinstance(new, type(owner)):
        hits = owner.count(old) if old else len(owner) + 1
        if count >= 0:
            hits = min(hits, count)
        _len_ok(len(owner) + hits * max(0, len(new) - len(old)))


def _join_pre(owner, iterable):
    items = list(iterable)
    _len_ok(len(items))
    _len_ok(len(owner) * max(0, len(items) - 1) + sum(len(x) if isinstance(x, (str, bytes)) else 0 for x in items))
    return (items,), {}


def _width_pre(owner, width, *rest):
    if type(width) is int and width > MAX_ITEMS:
        raise CheckError(f"a width over {MAX_ITEMS}")


# Builtins a check may call. Mutators, I/O, introspection, eval and anything that reaches
# attributes by name are not here; `iter` and `next` are not either (iter(callable, sentinel)
# would make an endless C loop).
SAFE_BUILTINS: dict[str, tuple[Any, Callable | None]] = {
    "abs": (abs, None), "all": (all, None), "any": (any, None), "ascii": (ascii, None),
    "bin": (bin, None), "bool": (bool, None), "chr": (chr, None), "complex": (complex, None),
    "dict": (dict, None), "divmod": (divmod, None), "enumerate": (enumerate, None),
    "filter": (filter, None), "float": (float, None), "frozenset": (frozenset, None),
    "hex": (hex, None), "int": (int, None), "isinstance": (isinstance, None), "len": (len, None),
    "list": (list, None), "map": (map, None), "max": (max, None), "min": (min, None),
    "oct": (oct, None), "ord": (ord, None), "pow": (pow, _pow_pre), "range": (range, _range_pre),
    "repr": (repr, None), "reversed": (reversed, None), "round": (round, _round_pre),
    "set": (set, None), "sorted": (sorted, None), "str": (str, None), "sum": (sum, _sum_pre),
    "tuple": (tuple, None), "type": (type, _type_pre), "zip": (zip, None),
}
_TYPES = {"bool", "complex", "dict", "float", "frozenset", "int", "list", "set", "str", "tuple"}

_MATH_FUNCTIONS: dict[str, tuple[Callable, Callable | None]] = {
    name: (getattr(math, name), None)
    for name in ("acos", "asin", "atan", "atan2", "ceil", "copysign", "cos", "degrees", "dist", "erf",
                 "exp", "fabs", "floor", "fmod", "fsum", "gcd", "hypot", "isclose", "isfinite", "isinf",
                 "isnan", "isqrt", "lcm", "log", "log10", "log2", "radians", "remainder", "sin", "sqrt",
                 "tan", "trunc")
}
_MATH_FUNCTIONS.update({
    "factorial": (math.factorial, _arg_at_most(10_000, 0)),
    "comb": (math.comb, _arg_at_most(10_000, 0, 1)),
    "perm": (math.perm, _arg_at_most(10_000, 0, 1)),
    "pow": (math.pow, None),
})
_MATH_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau, "inf": math.inf, "nan": math.nan}

_STR_METHODS = {
    "capitalize", "casefold", "count", "endswith", "find", "index", "isalnum", "isalpha", "isascii",
    "isdecimal", "isdigit", "isidentifier", "islower", "isnumeric", "isprintable", "isspace", "istitle",
    "isupper", "lower", "lstrip", "partition", "removeprefix", "removesuffix", "rfind", "rindex",
    "rpartition", "rsplit", "rstrip", "split", "splitlines", "startswith", "strip", "swapcase", "title",
    "upper", "encode", "replace", "join", "center", "ljust", "rjust", "zfill",
}
_BYTES_METHODS = (_STR_METHODS - {"casefold", "isdecimal", "isidentifier", "isnumeric", "isprintable",
                                  "encode"}) | {"decode", "hex"}
_SET_METHODS = {"copy", "difference", "intersection", "isdisjoint", "issubset", "issuperset",
                "symmetric_difference", "union"}
# Only methods that build a new value or answer a question: a check cannot change a value.
METHODS: dict[type, set[str]] = {
    str: _STR_METHODS,
    bytes: _BYTES_METHODS,
    list: {"copy", "count", "index"},
    tuple: {"count", "index"},
    dict: {"copy", "get", "items", "keys", "values"},
    set: _SET_METHODS,
    frozenset: _SET_METHODS,
    int: {"bit_count", "bit_length", "conjugate"},
    bool: {"bit_count", "bit_length", "conjugate"},
    float: {"as_integer_ratio", "conjugate", "hex", "is_integer"},
    complex: {"conjugate"},
}
_METHOD_PRE = {"replace": _replace_pre, "join": _join_pre, "center": _width_pre, "ljust": _width_pre,
               "rjust": _width_pre, "zfill": _width_pre}
_VALUE_ATTRIBUTES = {"real", "imag"}  # numbers
_ATTRIBUTE_NAMES = set().union(*METHODS.values()) | _VALUE_ATTRIBUTES

_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)
_BINOPS = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a ** b, ast.LShift: lambda a, b: a << b, ast.RShift: lambda a, b: a >> b,
    ast.BitOr: lambda a, b: a | b, ast.BitXor: lambda a, b: a ^ b, ast.BitAnd: lambda a, b: a & b,
}
_COMPARE = {
    ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
    ast.Is: lambda a, b: a is b, ast.IsNot: lambda a, b: a is not b, ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_FORMAT_NUMBER = re.compile(r"\d+")


def _into_solution(func, scope, entry_point: str) -> bool:
    """Whether a call goes into the solution: its function is a bare name that the test did not
    assign and that is the entry point or not a builtin checks know (a helper the solution defines)."""
    return isinstance(func, ast.Name) and func.id not in scope and (
        func.id == entry_point or func.id not in SAFE_BUILTINS)


class _Math:
    """`math` as a check sees it: the pure functions and constants, nothing else."""

    def __repr__(self) -> str:
        return "<math>"


_MATH = _Math()


# ----------------------------------------------------------------------------- the interpreter


class _Interpreter:
    """Evaluates a compiled test's statements. `call_value(call)` gives a call into the
    solution its value (or raises CheckError); everything else is computed here."""

    def __init__(self, entry_point: str, call_value: Callable[[Call], Any], budget: _Budget | None = None):
        self.entry_point = entry_point
        self.call_value = call_value
        self.budget = budget or _Budget()
        self.builtins = {name: _Guarded(fn, name, self.budget, pre) for name, (fn, pre) in SAFE_BUILTINS.items()
                         if name not in _TYPES}
        # Types stay themselves (isinstance needs them); `_Call` guards them when they are called.
        self.builtins.update({name: SAFE_BUILTINS[name][0] for name in _TYPES})

    # statements
    def run(self, body) -> None:
        env: dict[str, Any] = {}
        for stmt in body:
            if isinstance(stmt, ast.Assign):
                self.bind(stmt.targets[0], self.eval(stmt.value, env), env)
            elif not self.truth(self.eval(stmt.test, env)):
                raise _AssertFailed()

    def truth(self, value) -> bool:
        self.budget.spend()
        return bool(value)

    def bind(self, target, value, env) -> None:
        if isinstance(target, ast.Name):
            env[target.id] = value
            return
        items = self.materialize(value)
        if len(items) != len(target.elts):
            raise CheckError(f"cannot unpack {len(items)} values into {len(target.elts)} names")
        for sub, item in zip(target.elts, items):
            self.bind(sub, item, env)

    def materialize(self, iterable) -> list:
        out = []
        for item in iterable:
            self.budget.spend()
            out.append(item)
            if len(out) > MAX_ITEMS:
                raise CheckError(f"more than {MAX_ITEMS} items")
        return out

    # expressions
    def eval(self, node, env):
        self.budget.spend()
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:  # the compiler refuses these; a guard in case a test object was built by hand
            raise CheckError(f"{type(node).__name__} is not supported")
        return method(node, env)

    def _Constant(self, node, env):
        return node.value

    def _Name(self, node, env):
        if node.id in env:
            return env[node.id]
        if node.id == "math":
            return _MATH
        if node.id in self.builtins:
            return self.builtins[node.id]
        raise CheckError(f"name {node.id!r} is not defined")

    def _sequence(self, elts, env) -> list:
        out = []
        for elt in elts:
            if isinstance(elt, ast.Starred):
                out.extend(self.materialize(self.eval(elt.value, env)))
            else:
                out.append(self.eval(elt, env))
            _len_ok(len(out))
        self.budget.spend(len(out))
        return out

    def _Tuple(self, node, env):
        return tuple(self._sequence(node.elts, env))

    def _List(self, node, env):
        return self._sequence(node.elts, env)

    def _Set(self, node, env):
        return set(self._sequence(node.elts, env))

    def _Dict(self, node, env):
        out = {}
        for key, value in zip(node.keys, node.values):
            if key is None:
                out.update(self.eval(value, env))
            else:
                out[self.eval(key, env)] = self.eval(value, env)
            _len_ok(len(out))
        self.budget.spend(len(out))
        return out

    def _BoolOp(self, node, env):
        value = None
        for operand in node.values:
            value = self.eval(operand, env)
            if self.truth(value) == isinstance(node.op, ast.Or):
                return value
        return value

    def _UnaryOp(self, node, env):
        value = self.eval(node.operand, env)
        if isinstance(node.op, ast.Not):
            return not self.truth(value)
        if isinstance(node.op, ast.USub):
            return -value
        if isinstance(node.op, ast.UAdd):
            return +value
        return _int_ok(~value)

    def _BinOp(self, node, env):
        left, right = self.eval(node.left, env), self.eval(node.right, env)
        return self.binop(type(node.op), left, right)

    def binop(self, op, left, right):
        if op is ast.Mult:
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, bytes, list, tuple)) and type(n) in (int, bool):
                    _len_ok(len(seq) * max(n, 0))
            if type(left) is int and type(right) is int:
                if left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
                    raise CheckError(f"a product of more than {MAX_INT_BITS} bits")
        elif op is ast.Add and isinstance(left, (str, bytes, list, tuple)) and isinstance(right, (str, bytes, list, tuple)):
            _len_ok(len(left) + len(right))
        elif op is ast.Pow:
            _power_ok(left, right)
        elif op is ast.LShift and type(left) is int and type(right) is int and left and right > 0:
            if left.bit_length() + right > MAX_INT_BITS:
                raise CheckError(f"a shift to more than {MAX_INT_BITS} bits")
        elif op is ast.Mod and isinstance(left, (str, bytes)):
            raise CheckError("%-formatting is not supported in checks; use an f-string")
        result = _BINOPS[op](left, right)
        self.budget.spend(_size(result))
        return _int_ok(result)

    def _Compare(self, node, env):
        left = self.eval(node.left, env)
        for op, comparator in zip(node.ops, node.comparators):
            right = self.eval(comparator, env)
            if not self.truth(_COMPARE[type(op)](left, right)):
                return False
            left = right
        return True

    def _IfExp(self, node, env):
        return self.eval(node.body if self.truth(self.eval(node.test, env)) else node.orelse, env)

    def _Subscript(self, node, env):
        value, index = self.eval(node.value, env), self.eval(node.slice, env)
        result = value[index]
        self.budget.spend(_size(result))
        return result

    def _Slice(self, node, env):
        part = lambda n: None if n is None else self.eval(n, env)  # noqa: E731
        return slice(part(node.lower), part(node.upper), part(node.step))

    def _Attribute(self, node, env):
        owner = self.eval(node.value, env)
        return self.attribute(owner, node.attr)

    def attribute(self, owner, name: str):
        if owner is _MATH:
            if name in _MATH_CONSTANTS:
                return _MATH_CONSTANTS[name]
            if name in _MATH_FUNCTIONS:
                fn, pre = _MATH_FUNCTIONS[name]
                return _Guarded(fn, "math." + name, self.budget, pre)
            raise CheckError(f"math.{name} is not available to checks")
        kind = type(owner)
        if name in _VALUE_ATTRIBUTES and kind in (int, float, complex, bool):
            return getattr(owner, name)
        if name in METHODS.get(kind, ()):
            guard = _METHOD_PRE.get(name)
            pre = (lambda *a, **k: guard(owner, *a, **k)) if guard else None
            return _Guarded(getattr(owner, name), f"{kind.__name__}.{name}", self.budget, pre)
        raise CheckError(f"{kind.__name__}.{name} is not available to checks")

    def _Call(self, node, env):
        func = node.func
        if _into_solution(func, env, self.entry_point):
            args, kwargs = self.arguments(node, env)
            return self.call_value(Call(func.id, tuple(args), tuple(sorted(kwargs.items()))))
        target = self.eval(func, env)
        args, kwargs = self.arguments(node, env)
        if isinstance(target, type):  # a literal type as constructor: guard its result the same way
            return _Guarded(target, target.__name__, self.budget)(*args, **kwargs)
        if not isinstance(target, _Guarded):
            raise CheckError(f"{target!r} cannot be called in a check")
        return target(*args, **kwargs)

    def arguments(self, node, env) -> tuple[list, dict]:
        args = self._sequence(node.args, env)
        kwargs: dict[str, Any] = {}
        for kw in node.keywords:
            value = self.eval(kw.value, env)
            if kw.arg is None:
                kwargs.update({str(k): v for k, v in dict(value).items()})
            else:
                kwargs[kw.arg] = value
        return args, kwargs

    def _JoinedStr(self, node, env):
        parts = [self.eval(v, env) if isinstance(v, ast.FormattedValue) else v.value for v in node.values]
        _len_ok(sum(len(p) for p in parts))
        return "".join(parts)

    def _FormattedValue(self, node, env):
        value = self.eval(node.value, env)
        if node.conversion == ord("r"):
            value = repr(value)
        elif node.conversion == ord("s"):
            value = str(value)
        elif node.conversion == ord("a"):
            value = ascii(value)
        spec = self.eval(node.format_spec, env) if node.format_spec is not None else ""
        if any(int(n) > MAX_FORMAT_WIDTH for n in _FORMAT_NUMBER.findall(spec)):
            raise CheckError(f"a format width or precision over {MAX_FORMAT_WIDTH}")
        text = format(value, spec)
        _len_ok(len(text))
        return text

    # comprehensions: the bindings one item at a time, so generators stay lazy (any/all stop early)
    def bindings(self, generators, env, at: int = 0):
        if at == len(generators):
            yield env
            return
        gen = generators[at]
        for item in self.eval(gen.iter, env):
            self.budget.spend()
            inner = dict(env)
            self.bind(gen.target, item, inner)
            if all(self.truth(self.eval(cond, inner)) for cond in gen.ifs):
                yield from self.bindings(generators, inner, at + 1)

    def _ListComp(self, node, env):
        return self.materialize(self.eval(node.elt, b) for b in self.bindings(node.generators, env))

    def _SetComp(self, node, env):
        return set(self._ListComp(node, env))

    def _GeneratorExp(self, node, env):
        return (self.eval(node.elt, b) for b in self.bindings(node.generators, env))

    def _DictComp(self, node, env):
        out = {}
        for b in self.bindings(node.generators, env):
            out[self.eval(node.key, b)] = self.eval(node.value, b)
            _len_ok(len(out))
        return out


# ----------------------------------------------------------------------------- compiling a test


@dataclass(frozen=True)
class Test:
    """One compiled test: its source, its statements, and the calls into the solution it makes."""

    source: str
    body: tuple
    calls: tuple  # of Call, in order of first appearance


_ALLOWED = (
    ast.Constant, ast.Name, ast.Load, ast.Store, ast.Tuple, ast.List, ast.Set, ast.Dict,
    ast.BoolOp, ast.And, ast.Or, ast.BinOp, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.Invert,
    ast.Compare, ast.IfExp, ast.Call, ast.keyword, ast.Attribute, ast.Subscript, ast.Slice, ast.Starred,
    ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp, ast.comprehension, ast.JoinedStr,
    ast.FormattedValue, *_BINOPS, *_COMPARE,
)


class _Analyzer:
    """The static pass: only the language above; which calls go into the solution; and taint
    (which values depend on what the solution returns), so that every call into the solution has
    arguments known before the run."""

    def __init__(self, entry_point: str):
        self.entry_point = entry_point
        self.calls: set[int] = set()  # ids of the Call nodes that go into the solution
        self.tainted: set[int] = set()  # ids of expression nodes whose value depends on the solution

    def refuse(self, why: str):
        raise TestRefused(why)

    def statement(self, stmt, scope: dict[str, bool]) -> None:
        if isinstance(stmt, ast.Assert):
            self.expr(stmt.test, scope, False)  # the message is never evaluated
        elif isinstance(stmt, ast.Assign):
            if len(stmt.targets) != 1:
                self.refuse("chained assignment (a = b = ...) is not supported")
            self.target(stmt.targets[0], scope, self.expr(stmt.value, scope, False))
        else:
            self.refuse(f"only `assert` statements and `name = expression` assignments are allowed, "
                        f"not {type(stmt).__name__}")

    def target(self, node, scope, tainted: bool) -> None:
        if isinstance(node, ast.Name):
            scope[node.id] = tainted
        elif isinstance(node, (ast.Tuple, ast.List)):
            for elt in node.elts:
                self.target(elt, scope, tainted)
        else:
            self.refuse(f"only names and tuples of names can be assigned, not {type(node).__name__}")

    def expr(self, node, scope: dict[str, bool], in_tainted_loop: bool) -> bool:
        """Whether `node`'s value depends on the solution; refuses what is outside the language."""
        if not isinstance(node, _ALLOWED) or isinstance(node, (ast.comprehension, ast.keyword)):
            self.refuse(f"{type(node).__name__} is not supported in tests")
        if isinstance(node, ast.Name):
            tainted = self.name(node, scope)
        elif isinstance(node, ast.Call):
            tainted = self.call(node, scope, in_tainted_loop)
        elif isinstance(node, ast.Attribute):
            self.attribute(node, scope)
            tainted = self.expr(node.value, scope, in_tainted_loop)
        elif isinstance(node, _COMPREHENSIONS):
            tainted = self.comprehension(node, scope, in_tainted_loop)
        else:
            if isinstance(node, ast.BinOp) and type(node.op) not in _BINOPS:
                self.refuse(f"the {type(node.op).__name__} operator is not supported in tests")
            tainted = False
            for child in ast.iter_child_nodes(node):
                if not isinstance(child, (ast.expr_context, ast.boolop, ast.operator, ast.unaryop, ast.cmpop)):
                    tainted |= self.expr(child, scope, in_tainted_loop)
        if tainted:
            self.tainted.add(id(node))
        return tainted

    def name(self, node: ast.Name, scope) -> bool:
        if node.id in scope:
            return scope[node.id]
        if node.id == "math" or (node.id in SAFE_BUILTINS and node.id != self.entry_point):
            return False
        if node.id == self.entry_point:
            self.refuse(f"the solution's {node.id} can only be called, not used as a value")
        self.refuse(f"name {node.id!r} is neither assigned in the test nor a builtin checks know "
                    f"(the solution's functions can only be called)")

    def attribute(self, node: ast.Attribute, scope) -> None:
        on_math = isinstance(node.value, ast.Name) and node.value.id == "math" and "math" not in scope
        allowed = (node.attr in _MATH_FUNCTIONS or node.attr in _MATH_CONSTANTS) if on_math \
            else node.attr in _ATTRIBUTE_NAMES
        if node.attr.startswith("_") or not allowed:
            self.refuse(f"attribute .{node.attr} is not available to checks")

    def call(self, node: ast.Call, scope, in_tainted_loop: bool) -> bool:
        func = node.func
        into = _into_solution(func, scope, self.entry_point)
        if isinstance(func, ast.Name) and func.id in scope:
            self.refuse(f"calls {func.id}, a value the test assigned; checks call builtins, math "
                        f"functions, methods of values and the solution's functions")
        if not into and not isinstance(func, (ast.Name, ast.Attribute)):
            self.refuse("calls something that is not a name or a method")
        tainted = False if into else self.expr(func, scope, in_tainted_loop)
        for arg in [*node.args, *(kw.value for kw in node.keywords)]:
            arg_tainted = self.expr(arg, scope, in_tainted_loop)
            if into and arg_tainted:
                inner = sorted({n.func.id for n in ast.walk(arg) if id(n) in self.calls} - {self.entry_point})
                hint = (f" ({', '.join(inner)} is not a builtin checks know, so it is taken for a function of "
                        f"the solution)") if inner else ""
                self.refuse(f"the arguments of {func.id}(...) use what the solution returned{hint}; every call "
                            f"into the solution must have arguments known before the run")
            tainted |= arg_tainted
        if into:
            if in_tainted_loop:
                self.refuse(f"calls {func.id}(...) in a comprehension over what the solution returned; "
                            f"its arguments are not known before the run")
            self.calls.add(id(node))
            return True
        return tainted

    def comprehension(self, node, scope, in_tainted_loop: bool) -> bool:
        inner = dict(scope)
        tainted = False
        for gen in node.generators:
            if gen.is_async:
                self.refuse("async comprehensions are not supported")
            iter_tainted = self.expr(gen.iter, inner, in_tainted_loop)
            tainted |= iter_tainted
            in_tainted_loop = in_tainted_loop or iter_tainted
            self.target(gen.target, inner, iter_tainted)
            for cond in gen.ifs:
                tainted |= self.expr(cond, inner, in_tainted_loop)
        for part in ([node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]):
            tainted |= self.expr(part, inner, in_tainted_loop)
        return tainted


def _nodes_with_calls(tree, calls: set[int]) -> set[int]:
    """Ids of the nodes that have a call into the solution in their subtree (themselves included)."""
    found: set[int] = set()

    def visit(node) -> bool:
        has = id(node) in calls
        for child in ast.iter_child_nodes(node):
            has |= visit(child)
        if has:
            found.add(id(node))
        return has

    visit(tree)
    return found


class _Enumerator:
    """The compile-time pass: evaluates, here, the arguments of every call into the solution that
    the test can make, under every binding of the comprehensions around it. Conditions known
    before the run filter the bindings; one that depends on the solution keeps them all (a call
    made and not used costs nothing), and so do IfExp and and/or branches."""

    MAX_BINDINGS = 10_000

    def __init__(self, analyzer: _Analyzer, with_calls: set[int], interpreter: _Interpreter):
        self.analyzer = analyzer
        self.with_calls = with_calls
        self.interp = interpreter
        self.calls: dict[str, Call] = {}

    def run(self, body) -> list[Call]:
        env: dict[str, Any] = {}
        for stmt in body:
            if isinstance(stmt, ast.Assign):
                self.collect(stmt.value, [env])
                if id(stmt.value) in self.analyzer.tainted:  # known only after the run
                    for name in ast.walk(stmt.targets[0]):
                        if isinstance(name, ast.Name):
                            env.pop(name.id, None)
                else:  # known now: its names may feed the arguments of later calls
                    self.interp.bind(stmt.targets[0], self.interp.eval(stmt.value, env), env)
            else:
                self.collect(stmt.test, [env])
        return list(self.calls.values())

    def collect(self, node, envs: list[dict]) -> None:
        if id(node) not in self.with_calls or not envs:
            return
        if id(node) in self.analyzer.calls:
            for env in envs:
                args, kwargs = self.interp.arguments(node, env)
                call = Call(node.func.id, tuple(args), tuple(sorted(kwargs.items())))
                self.calls.setdefault(call.key, call)
                if len(self.calls) > MAX_CALLS_PER_TEST:
                    raise TestRefused(f"makes more than {MAX_CALLS_PER_TEST} distinct calls into the solution")
            return
        if isinstance(node, _COMPREHENSIONS):
            level = envs
            for gen in node.generators:
                self.collect(gen.iter, level)
                if id(gen.iter) in self.analyzer.tainted:
                    return  # a loop over the solution's values: the analyzer let no call in it
                deeper = []
                for env in level:
                    for item in self.interp.eval(gen.iter, env):
                        inner = dict(env)
                        self.interp.bind(gen.target, item, inner)
                        deeper.append(inner)
                        if len(deeper) > self.MAX_BINDINGS:
                            raise TestRefused(f"its comprehensions bind more than {self.MAX_BINDINGS} items")
                for cond in gen.ifs:
                    self.collect(cond, deeper)
                known = [c for c in gen.ifs if id(c) not in self.analyzer.tainted]
                level = [e for e in deeper if all(self.interp.truth(self.interp.eval(c, e)) for c in known)]
            for part in ([node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]):
                self.collect(part, level)
            return
        for child in ast.iter_child_nodes(node):
            self.collect(child, envs)


def compile_test(source: str, entry_point: str) -> Test:
    """Compile one test, or raise TestRefused with the reason."""
    if not isinstance(source, str) or not source.strip():
        raise TestRefused("a test must be non-empty Python source text")
    if len(source) > MAX_TEST_CHARS:
        raise TestRefused(f"longer than {MAX_TEST_CHARS} characters")
    try:
        tree = ast.parse(source, mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise TestRefused(f"not valid Python: {type(exc).__name__}: {exc}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise TestRefused(f"more than {MAX_NODES} syntax nodes")
    analyzer = _Analyzer(entry_point)
    scope: dict[str, bool] = {}
    for stmt in tree.body:
        analyzer.statement(stmt, scope)
    if not any(isinstance(s, ast.Assert) for s in tree.body):
        raise TestRefused("has no assert statement")
    if not analyzer.calls:
        raise TestRefused("never calls the solution")

    def not_yet(call: Call):  # the enumerator evaluates only what is known before the run
        raise CheckError(f"{call.function}(...) called while compiling")

    enumerator = _Enumerator(analyzer, _nodes_with_calls(tree, analyzer.calls), _Interpreter(entry_point, not_yet))
    try:
        calls = enumerator.run(tree.body)
    except TestRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - an error here is the test's own, before any call
        raise TestRefused(f"fails before calling the solution: {type(exc).__name__}: {str(exc)[:200]}") from None
    for call in calls:
        wire = call.wire()
        if len(wire[1]) + len(wire[2]) > MAX_ARG_CHARS:
            raise TestRefused(f"the arguments of {call.text()} are longer than {MAX_ARG_CHARS} characters")
        if not literals.crosses(call.args) or not literals.crosses(dict(call.kwargs)):
            raise TestRefused(f"the arguments of {call.text()} are not literals, so they cannot be sent "
                              f"to the solution's process")
    return Test(source=source, body=tuple(tree.body), calls=tuple(calls))


# ----------------------------------------------------------------------------- a task's suite

# What a function that does no work could return: a task all of whose tests pass for one of these
# pays for nothing (truth tests keep Python's meaning, so `return True` passes `assert f(x)`).
TRIVIAL_VALUES = (None, True, False, 0, 1, -1, 0.0, "", [], {}, ())


@dataclass
class Suite:
    """A task's compiled tests and the distinct calls into the solution they make."""

    entry_point: str
    tests: tuple
    calls: tuple
    _index: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._index = {call.key: i for i, call in enumerate(self.calls)}

    def wire(self) -> list[list[str]]:
        return [call.wire() for call in self.calls]

    def decide(self, results: Mapping[int, Returned | Failed]) -> list[tuple[bool, str]]:
        """(passed, why) per test, from what each call returned; `results` lacks the calls that
        were never reported (the program ended or timed out first)."""
        return [self._decide_one(test, results) for test in self.tests]

    def _decide_one(self, test: Test, results) -> tuple[bool, str]:
        used: list[str] = []

        def call_value(call: Call):
            at = self._index.get(call.key)
            result = results.get(at) if at is not None else None
            if result is None:
                raise CheckError(f"{call.text()} did not return: the program ended or ran out of time first"
                                 if at is not None else f"{call.text()} was not prepared")
            if isinstance(result, Failed):
                raise CheckError(f"{call.text()} {result.why}")
            used.append(f"{call.text(60)} returned {_short(result.value)}")
            return result.value

        try:
            _Interpreter(self.entry_point, call_value).run(test.body)
        except _AssertFailed:
            return False, ("assertion failed: " + "; ".join(used))[:300]
        except CheckError as exc:
            return False, str(exc)[:300]
        except Exception as exc:  # noqa: BLE001 - every error fails the test
            return False, f"the check raised {type(exc).__name__}: {str(exc)[:200]}"
        return True, ""

    def trivial_pass(self) -> str | None:
        """What kind of do-nothing function passes every test, or None if none does."""
        for value in TRIVIAL_VALUES:
            if all(ok for ok, _ in self.decide({i: Returned(value) for i in range(len(self.calls))})):
                return f"a function that always returns {value!r}"
        for name, fn in GENERIC_FUNCTIONS:
            values = {}
            for i, call in enumerate(self.calls):
                try:
                    values[i] = Returned(fn(call.args))
                except Exception:  # noqa: BLE001 - a generic function that does not apply here
                    values[i] = Returned(None)
            if all(ok for ok, _ in self.decide(values)):
                return f"a function that returns {name}"
        return None


# Functions that do no work but pass a weak task's tests: the solution's own arguments handed
# back. (A builtin applied to them, max or sorted, is no such test: for some tasks it is the
# solution.) They run on the host, on the tests' own arguments, never on a candidate's values.
GENERIC_FUNCTIONS = (
    ("its first argument", lambda args: args[0]),
    ("its last argument", lambda args: args[-1]),
)


def compile_suite(tests: list[str], entry_point: str) -> Suite:
    """Compile a task's tests; TestRefused names the first test that cannot be decided and why."""
    compiled, calls = [], {}
    for n, source in enumerate(tests, 1):
        try:
            test = compile_test(source, entry_point)
        except TestRefused as exc:
            raise TestRefused(f"test {n} ({_short_source(source)}): {exc}") from None
        compiled.append(test)
        for call in test.calls:
            calls.setdefault(call.key, call)
    if len(calls) > MAX_CALLS_PER_TASK:
        raise TestRefused(f"its tests make more than {MAX_CALLS_PER_TASK} distinct calls into the solution")
    return Suite(entry_point=entry_point, tests=tuple(compiled), calls=tuple(calls.values()))


def _short(value, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - only for a message
        text = "?"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short_source(source, limit: int = 80) -> str:
    text = " ".join(str(source).split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
