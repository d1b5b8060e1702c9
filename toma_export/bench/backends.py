"""Backends: how a (patched) model is turned into the callable that gets timed.

A backend is one function ``(model, config, example_kwargs) -> callable(**kwargs)``; adding one
(ONNX Runtime, TensorRT) is one :func:`register_backend` call. ``model`` arrives already patched
in eager mode with ``config`` (``None`` for unpatched baseline and ideal rows); a backend with its
own way of merging (e.g. the graph pass before an ONNX export) can read ``config`` and undo the
eager patch with ``toma_export.remove(model)`` first.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from toma_export.config import ToMAConfig

Backend = Callable[[torch.nn.Module, "ToMAConfig | None", dict[str, Any]], Callable[..., Any]]

BACKENDS: dict[str, Backend] = {}


def register_backend(name: str, backend: Backend) -> None:
    """Make ``--backends name`` available."""
    BACKENDS[name] = backend


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r} is unknown; available: {', '.join(BACKENDS)}.")
    return BACKENDS[name]


def eager(model: torch.nn.Module, config: ToMAConfig | None, example: dict[str, Any]) -> Callable[..., Any]:
    """The eager-patched model itself: the reference semantics."""
    return model


def inductor(model: torch.nn.Module, config: ToMAConfig | None, example: dict[str, Any]) -> Callable[..., Any]:
    """``torch.compile`` (inductor) of the eager-patched model; hooks are traced by dynamo.

    Compilation happens lazily on the first (warm-up) call. Methods with data-dependent shapes
    (CA-ToMe's ``.item()``) graph-break; ``sort``/``scatter`` (ToMeSD) compile but stay sort/scatter.
    Every case is its own module tree running the same code objects, so dynamo's per-code
    recompile limit is raised to cover them, and shapes are static (``dynamic=False``): a case
    with fewer tokens (the ideal) must not turn every other case's graph dynamic.
    """
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 256)
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4096)
    return torch.compile(model, backend="inductor", dynamic=False)


register_backend("eager", eager)
register_backend("inductor", inductor)
