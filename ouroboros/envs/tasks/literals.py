"""How values cross the sandbox's boundary: as Python literals, read back without `eval`.

A value the candidate's code computed reaches the host as its `repr`. The host parses that text
itself: only the literal forms below become values, so whatever the candidate returns (an object
equal to everything, a subclass of str with its own `__eq__`, a repr that runs code) arrives as
plain data or not at all. What crosses: None, bool, int (up to Python's 4300-digit conversion
limit, in whatever base its literal is written), float (nan and inf included), complex, str, bytes, and tuple, list, dict, set and
frozenset of those, nested up to the parser's limit of 200 brackets.

The same rule sends a test's arguments into the sandbox, so a test whose arguments or values
do not survive `parse(repr(x))` is refused when its task set is loaded.
"""
from __future__ import annotations

import ast
import math

MAX_CHARS = 1 << 20  # a repr longer than this is not parsed (the harness caps values well below)
MAX_INT_DIGITS = 4300  # Python's default int-str conversion limit, in any base
_INT_LIMIT = 10 ** MAX_INT_DIGITS

_FLOATS = {"nan": math.nan, "inf": math.inf}
_IMAGINARY = {"nanj": complex(0.0, math.nan), "infj": complex(0.0, math.inf)}
_PLAIN = (int, float, complex, str, bytes, bool, type(None))


class NotALiteral(ValueError):
    """The text is not one of the literal forms that cross the boundary."""


def parse(text: str):
    """The value `text` writes as a literal; NotALiteral for anything else, however it fails."""
    if not isinstance(text, str):
        raise NotALiteral(f"expected text, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise NotALiteral(f"longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
        return _value(tree.body)
    except NotALiteral:
        raise
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError, OverflowError) as exc:
        # SyntaxError also covers nesting past the parser's limit and ints past the digit limit;
        # TypeError an unhashable set member or dict key.
        raise NotALiteral(f"{type(exc).__name__}: {str(exc)[:120]}") from None


def crosses(value) -> bool:
    """Whether `value` survives the trip: parsed from its repr, it has the same repr."""
    try:
        text = repr(value)
        return repr(parse(text)) == text
    except (NotALiteral, ValueError, RecursionError, MemoryError):
        return False


def _value(node: ast.AST):
    if isinstance(node, ast.Constant):
        if type(node.value) is int and abs(node.value) >= _INT_LIMIT:
            # repr writes ints in decimal, where Python refuses more digits than this; in hex,
            # octal or binary a forged repr could send an int of any size.
            raise NotALiteral(f"an int of more than {MAX_INT_DIGITS} digits")
        if type(node.value) in _PLAIN:
            return node.value
        raise NotALiteral(f"{type(node.value).__name__} constant")
    if isinstance(node, ast.Name):
        if node.id in _FLOATS:
            return _FLOATS[node.id]
        if node.id in _IMAGINARY:
            return _IMAGINARY[node.id]
        raise NotALiteral(f"name {node.id!r}")
    if isinstance(node, (ast.UnaryOp, ast.BinOp)):
        return _number(node)
    if isinstance(node, ast.Tuple):
        return tuple(_value(e) for e in node.elts)
    if isinstance(node, ast.List):
        return [_value(e) for e in node.elts]
    if isinstance(node, ast.Set):
        return {_value(e) for e in node.elts}
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise NotALiteral("** in a dict")
        return {_value(k): _value(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        # repr writes empty sets as set() and frozensets as frozenset({...}).
        if node.func.id == "set" and not node.args:
            return set()
        if node.func.id == "frozenset" and len(node.args) <= 1:
            inner = _value(node.args[0]) if node.args else set()
            if isinstance(inner, set):
                return frozenset(inner)
    raise NotALiteral(f"{type(node).__name__} node")


def _number(node: ast.AST):
    """-1, -2.5, -inf, 1+2j, -1j, (nan+infj), (-0-0j): signs and complex sums of number literals.

    repr writes complex(a, b) as `bj` when a is +0.0 and as `(a+bj)` otherwise; building the
    value with complex(a, b), not by arithmetic, keeps the signs of zeros and nan parts."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _unsigned(node.operand)
        negative = isinstance(node.op, ast.USub)
        if type(value) is complex:  # `-1j` is complex(0.0, -1.0): the sign is the imaginary part's
            return complex(value.real, -value.imag if negative else value.imag)
        return -value if negative else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        real, imag = _real(node.left), _unsigned(node.right)
        if type(imag) is complex and imag.real == 0:
            return complex(real, -imag.imag if isinstance(node.op, ast.Sub) else imag.imag)
    raise NotALiteral("arithmetic that is not a number literal")


def _unsigned(node: ast.AST):
    if isinstance(node, (ast.Constant, ast.Name)):
        value = _value(node)
        if type(value) in (int, float, complex):
            return value
    raise NotALiteral("a sign or sum on something that is not a number")


def _real(node: ast.AST) -> float:
    """The real part of `(a+bj)` as a float, its sign applied after conversion (-0 is -0.0)."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _unsigned(node.operand)
        if type(value) in (int, float):
            return -float(value) if isinstance(node.op, ast.USub) else float(value)
    else:
        value = _unsigned(node)
        if type(value) in (int, float):
            return float(value)
    raise NotALiteral("the real part of a complex literal is not a number")
