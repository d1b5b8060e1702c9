"""Argparse value types shared by the commands: a bad value is an argparse error (exit 2) that names
the accepted range and an example."""

from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence

from toma_export.errors import ToMAError
from toma_export.input_rules import MAX_SEED, check_guidance, check_path, check_text

__all__ = ["MAX_SEED", "OneOf", "guidance", "int_in", "nonneg_float", "path_arg", "text_arg"]


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


def _rule(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a :mod:`toma_export.input_rules` check (its message, exit 2)."""

    def parse(text: str) -> Any:
        try:
            return check(text)
        except ToMAError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def guidance(flag: str) -> Callable[[str], float]:
    """A guidance scale: finite, 0..MAX_GUIDANCE (the server's rule)."""

    def check(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; use e.g. {flag} 5") from None
        return check_guidance(value, flag)

    return _rule(check)


def text_arg(flag: str) -> Callable[[str], str]:
    """Text such as a prompt: valid UTF-8, at most MAX_PROMPT_BYTES bytes."""
    return _rule(lambda text: check_text(text, flag))


def path_arg(flag: str, example: str) -> Callable[[str], str]:
    """A path or model name: not empty (``--out ''`` would mean the current folder), no NUL byte."""
    return _rule(lambda text: check_path(text, flag, example))


class OneOf(argparse.Action):
    """Several flags that set one value (``--dtype fp16``, ``--fp16``, ``--bf16``): giving two that
    disagree is refused (exit 2) instead of the last one silently winning."""

    def __init__(self, option_strings: Sequence[str], dest: str, const: Any = None, hint: str = "", **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0 if const is not None else None, const=const, **kwargs)
        self.hint = hint

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        value = self.const if self.const is not None else values
        seen: dict[str, tuple[str, Any]] = namespace.__dict__.setdefault("_one_of", {})
        earlier = seen.get(self.dest)
        if earlier is not None and earlier[1] != value:
            flag, old = earlier
            parser.error(f"argument {option_string}: conflicts with {flag} given before ({old} vs {value}); "
                         f"give only one: {self.hint or 'drop one of them'}")
        seen[self.dest] = (f"{option_string}" + ("" if self.const is not None else f" {values}"), value)
        setattr(namespace, self.dest, value)
