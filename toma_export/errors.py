"""Errors the toolchain raises for bad input: each names the problem and the fix."""


class ToMAError(Exception):
    """Base class of toma-export's own errors."""


class ToMAConfigError(ToMAError, ValueError):
    """A configuration value is out of range or does not fit the model/input."""


class UnsupportedModelError(ToMAError, TypeError):
    """The model is not one this toolchain knows how to patch."""
