"""Eager integration: the reference semantics every compiled path is tested against."""

from toma_export.eager.api import apply, remove, reset, state

__all__ = ["apply", "remove", "reset", "state"]
