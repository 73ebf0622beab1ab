"""Numbers in text, as the experiment judge reads them: in a conclusion, in a run's output, in a
goal's own text, and in what a reference program printed.

The text is hostile (the policy wrote it, or a program it wrote printed it), so reading it must
neither crash nor stall, and must not let a number hide from the count of candidates:

- `9,592`, `9592`, `9592.0` and `9.592e3` are one value; `.5` and `-3` are numbers; a minus
  sign or a Unicode minus makes one negative (but `3-5` is 3 and 5, a range, not 3 and -5);
- digits of any script count (`٩٥٩٢` is 9592): a candidate written in other digits is still a
  candidate;
- a number too long or too large to compare (`1e999999`, ten thousand digits) still counts
  as a number, as infinity, which never matches an answer: it adds a candidate, never a hit;
- the scan is one regular expression without nested repetition, linear in the text.

Values are `Decimal`s, so an exact answer of any size compares exactly (a float would make
2**53 + 1 equal to 2**53).
"""
from __future__ import annotations

import re
import unicodedata
from decimal import Context, Decimal, localcontext

MAX_DIGITS = 1000  # significant digits a comparable number may have
MAX_EXPONENT = 10_000  # and how far from 1 its magnitude may be (10**±MAX_EXPONENT)

_NUMBER = re.compile(
    r"(?<![\w.])"  # not the tail of a word, a version or another number
    r"([-+\u2212]?)"  # a sign (ASCII or the Unicode minus)
    r"(?:(\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.(\d+))?|\.(\d+))"  # 9,592 | 9592 | 9592.5 | .5
    r"(?:[eE]([-+]?\d+))?"  # an exponent
)
_INF = Decimal("Infinity")
# Comparisons run in a context wide enough for any comparable number, so they never round
# two different values together or overflow.
_CONTEXT = Context(prec=MAX_DIGITS + 20, Emax=4 * MAX_EXPONENT, Emin=-4 * MAX_EXPONENT)


def _ascii_digits(text: str) -> str:
    return "".join(str(unicodedata.digit(ch)) if not ch.isascii() else ch for ch in text)


def _value(sign: str, whole: str | None, frac: str | None, exp: str | None) -> Decimal:
    negative = sign in ("-", "\u2212")
    whole = _ascii_digits((whole or "0").replace(",", ""))
    frac = _ascii_digits(frac or "")
    exponent = int(_ascii_digits(exp)) if exp and len(exp) <= 8 else (0 if not exp else MAX_EXPONENT + 1)
    if len(whole) + len(frac) > MAX_DIGITS or abs(exponent) > MAX_EXPONENT:
        return -_INF if negative else _INF
    # Written as it was (no ".0" added), so the value keeps the precision it was stated to.
    return Decimal(f"{'-' if negative else ''}{whole}{'.' + frac if frac else ''}e{exponent}")


def numbers(text: str) -> list[Decimal]:
    """Every number written in `text`, in order, as Decimals (±Infinity: too large to compare)."""
    out = []
    for m in _NUMBER.finditer(text or ""):
        sign, whole, frac, lone_frac, exp = m.groups()
        out.append(_value(sign, whole, frac if whole is not None else lone_frac, exp))
    return out


def distinct(values: list[Decimal]) -> list[Decimal]:
    """`values` without repeats, by value (9592 and 9592.0 are one), in first-seen order."""
    return list(dict.fromkeys(values))  # a Decimal's hash follows its value, not its digits


def close(value: Decimal, target: Decimal, rel_tol: float) -> bool:
    """`value` is `target`: exactly when rel_tol is 0, else within rel_tol of it."""
    if not (value.is_finite() and target.is_finite()):
        return False
    if rel_tol == 0:
        return value == target
    with localcontext(_CONTEXT):
        return abs(value - target) <= Decimal(repr(float(rel_tol))) * abs(target)


def rounds_to(printed: Decimal, stated: Decimal) -> bool:
    """`stated` is `printed` written to fewer digits: within half a unit of stated's last digit
    (a run printed 0.52143, the conclusion says 0.5214)."""
    if not (printed.is_finite() and stated.is_finite()):
        return False
    with localcontext(_CONTEXT):
        return abs(printed - stated) <= Decimal(5).scaleb(stated.as_tuple().exponent - 1)
