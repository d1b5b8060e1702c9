"""Argparse value types shared by the commands: a bad value is an argparse error (exit 2) that names
the accepted range and an example."""

from __future__ import annotations

import argparse
from typing import Callable

MAX_SEED = 2**63


def int_in(lo: int, hi: int, what: str, example: str) -> Callable[[str], int]:
    """An int in [lo, hi)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; use e.g. {example}") from None
        if not lo <= value < hi:
            top = "2**63" if hi == MAX_SEED else str(hi - 1)
            raise argparse.ArgumentTypeError(
                f"{what} {value} is outside [{lo}, {top}{')' if hi == MAX_SEED else ']'}; use e.g. {example}")
        return value

    return parse


def nonneg_float(what: str, example: str) -> Callable[[str], float]:
    """A finite float >= 0."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; use e.g. {example}") from None
        if not 0 <= value < float("inf"):
            raise argparse.ArgumentTypeError(f"{what} {text} must be a finite number >= 0, e.g. {example}")
        return value

    return parse
