"""What the host reads in a reply's code: whether it does anything, and what a linter says.

Both read the reply as text (the host parses; it never runs the code). The object's original
`execute_code` runs the same text (`autonomous_llm.extract_code`); an object whose code replaced
`execute_code` may run something else, and the host pays for survival, not for that.
"""
from __future__ import annotations

import ast

from ouroboros.envs.survival.autonomous_llm import extract_code

_DEFINES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_BINDS = (ast.Assign, ast.AugAssign, ast.Delete, ast.Import, ast.ImportFrom)
_COMPOUND = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try)


def parse(response: str) -> ast.Module | None:
    try:
        return ast.parse(extract_code(response))
    except (SyntaxError, ValueError):
        return None


def _effectful(statements: list[ast.stmt]) -> bool:
    for node in statements:
        if isinstance(node, _DEFINES) or isinstance(node, _BINDS):
            return True
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            return True
        if isinstance(node, ast.Expr) and any(isinstance(n, (ast.Call, ast.Await, ast.NamedExpr)) for n in ast.walk(node)):
            return True  # a call: a method, print, anything with a possible effect
        if isinstance(node, _COMPOUND):
            bodies = [getattr(node, f, []) for f in ("body", "orelse", "finalbody")]
            bodies += [h.body for h in getattr(node, "handlers", [])]
            if any(_effectful(b) for b in bodies):
                return True
        if isinstance(node, ast.Raise):
            return True
        if hasattr(ast, "TryStar") and isinstance(node, ast.TryStar):
            return True
        if isinstance(node, ast.Match):
            return True
    return False


def has_effect(response: str) -> bool:
    """Whether the code has at least one statement with an effect: it defines or redefines a
    function, class, attribute or name, imports, calls something (a method, print), or raises.
    A reply that is empty, only comments, `pass`, a bare constant, name or docstring has none."""
    tree = parse(response)
    return tree is not None and _effectful(tree.body)


def defines_method(response: str) -> bool:
    """Whether the code defines or redefines a function or a method (a `def`, a lambda or function
    assigned to an attribute, or setattr): the "gene edits"."""
    tree = parse(response)
    if tree is None:
        return False
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return True
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda):
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
            return True
    return False


def lint(response: str) -> tuple[int, int]:
    """(pyflakes findings, code lines) of a reply's code; `self` counts as defined, as in the object."""
    from pyflakes import checker

    code = extract_code(response)
    lines = sum(1 for line in code.splitlines() if line.strip() and not line.strip().startswith("#"))
    tree = parse(response)
    if tree is None:
        return 0, lines  # a syntax error is counted as such, not as findings
    found = checker.Checker(tree, filename="<response>", builtins={"self"})
    return len(found.messages), lines


def syntax_ok(response: str) -> bool:
    return parse(response) is not None

