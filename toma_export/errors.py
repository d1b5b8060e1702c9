"""Errors the toolchain raises for bad input: each names the problem and the fix."""


class ToMAError(Exception):
    """Base class of toma-export's own errors."""


class ToMAConfigError(ToMAError, ValueError):
    """A configuration value is out of range or does not fit the model/input."""


class UnsupportedModelError(ToMAError, TypeError):
    """The model is not one this toolchain knows how to patch."""


class ToMATypeError(ToMAConfigError, TypeError):
    """A value of the wrong type (a string where a number belongs, a dict where a ToMAConfig belongs).

    A ``TypeError`` for callers that tell types from ranges, and a ``ToMAConfigError`` (exit 2 on the
    command line) for those that catch bad configuration as one kind.
    """
