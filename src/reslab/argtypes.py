"""argparse ``type=`` functions: a bad value becomes argparse's usage error (exit status 2).

Each bounded type also answers ``accepts(value)`` for a value given in Python, so that a
dataclass can check its fields against the same ranges its command-line flags enforce.
"""

from __future__ import annotations

import argparse
import ast
import math
from collections.abc import Callable
from typing import Any


def _parse(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _finite_float(value: float) -> bool:
    """Whether ``value`` is a finite float (an int too large for a float is not, as its text is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _bounded(kind: type, accept: Callable[[float], bool], requirement: str, name: str) -> Callable[[str], float]:
    """An argparse type: ``kind(text)`` that satisfies ``accept``, else 'must be <requirement>'.
    ``.accepts(value)`` and ``.requirement`` check a value that did not come from text."""

    def accepts(value: Any) -> bool:
        number = isinstance(value, int) if kind is int else isinstance(value, (int, float))
        return number and not isinstance(value, bool) and (kind is int or _finite_float(value)) and accept(value)

    def parse(text: str) -> float:
        value = _parse(text, kind)
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    parse.__name__ = name  # argparse names the type in its messages
    parse.accepts, parse.requirement = accepts, requirement
    return parse


MAX_SEED = 2**32 - 1  # NumPy's seeds are 32-bit
MAX_THREADS = 1024

positive_int = _bounded(int, lambda v: v >= 1, "a positive integer", "positive_int")
nonnegative_int = _bounded(int, lambda v: v >= 0, "0 or more", "nonnegative_int")
positive_float = _bounded(float, lambda v: v > 0, "greater than 0", "positive_float")
nonnegative_float = _bounded(float, lambda v: v >= 0, "0 or more", "nonnegative_float")
fraction = _bounded(float, lambda v: 0 <= v <= 1, "in [0, 1]", "fraction")
probability = _bounded(float, lambda v: 0 <= v < 1, "in [0, 1)", "probability")
survival_probability = _bounded(float, lambda v: 0 < v <= 1, "a survival probability in (0, 1]", "survival_probability")
random_seed = _bounded(int, lambda v: 0 <= v <= MAX_SEED, "an integer from 0 to 2**32 - 1", "random_seed")
thread_count = _bounded(int, lambda v: 0 <= v <= MAX_THREADS, f"from 0 to {MAX_THREADS}", "thread_count")


def int_range(low: int, high: int, name: str) -> Callable[[str], float]:
    """An argparse type for integers from ``low`` to ``high``."""
    return _bounded(int, lambda v: low <= v <= high, f"an integer from {low} to {high}", name)


def int_list(text: str) -> list[int]:
    """Comma-separated non-negative integers, e.g. '0,1,2'."""
    try:
        values = [int(tok) for tok in text.split(",") if tok.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from None
    if not values or min(values) < 0 or max(values) > MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers from 0 to 2**32 - 1, got {text!r}")
    return values


def increasing_fractions(text: str) -> tuple[float, ...]:
    """Comma-separated increasing fractions in (0, 1), e.g. '0.5,0.75' ('' for none)."""
    try:
        values = tuple(float(tok) for tok in text.split(",") if tok.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.5,0.75, got {text!r}") from None
    if not are_increasing_fractions(values):
        raise argparse.ArgumentTypeError(f"expected increasing fractions in (0, 1) such as 0.5,0.75, got {text!r}")
    return values


def are_increasing_fractions(values: tuple[float, ...]) -> bool:
    return all(0 < v < 1 for v in values) and list(values) == sorted(values)


def key_value(text: str) -> tuple[str, Any]:
    """'key=value' with value a Python literal (number, True, None, 'text') or plain text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. shortcut=B, got {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return key.strip(), parsed


_count_or_fraction = _bounded(float, lambda v: v >= 0 and (v < 1 or float(v).is_integer()),
                              "a count (0, 1, 2, ...) or a fraction in (0, 1)", "count_or_fraction")


def count_or_fraction(text: str) -> float:
    """A number of items, '5000' (an int), or a fraction of them, '0.1' (a float in (0, 1))."""
    value = _count_or_fraction(text)
    return int(value) if float(value).is_integer() else value


count_or_fraction.accepts, count_or_fraction.requirement = _count_or_fraction.accepts, _count_or_fraction.requirement
