"""argparse ``type=`` functions: a bad value becomes argparse's usage error (exit status 2)."""

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


def _bounded(kind: type, accept: Callable[[float], bool], requirement: str, name: str) -> Callable[[str], float]:
    """An argparse type: ``kind(text)`` that satisfies ``accept``, else 'must be <requirement>'."""

    def parse(text: str) -> float:
        value = _parse(text, kind)
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    parse.__name__ = name  # argparse names the type in its messages
    return parse


positive_int = _bounded(int, lambda v: v >= 1, "a positive integer", "positive_int")
nonnegative_int = _bounded(int, lambda v: v >= 0, "0 or more", "nonnegative_int")
positive_float = _bounded(float, lambda v: v > 0, "greater than 0", "positive_float")
nonnegative_float = _bounded(float, lambda v: v >= 0, "0 or more", "nonnegative_float")
probability = _bounded(float, lambda v: 0 <= v < 1, "in [0, 1)", "probability")
survival_probability = _bounded(float, lambda v: 0 < v <= 1, "in (0, 1]", "survival_probability")


def int_list(text: str) -> list[int]:
    """Comma-separated non-negative integers, e.g. '0,1,2'."""
    try:
        values = [int(tok) for tok in text.split(",") if tok.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers, got {text!r}")
    return values


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
