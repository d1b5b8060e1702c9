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
    if config is not None and config.method == "toma" and config.active:
        # ToMA compiles through the graph pass (the eager hooks' Python state would break graphs).
        import toma_export

        toma_export.remove(model)
        program = toma_export.rewrite(model, example, config).compile(backend="inductor", dynamic=False)
        toma_export.apply(model, config)  # keep the row's bookkeeping (state) working; the hooks are not run
        return lambda **kwargs: program(**kwargs)
    return torch.compile(model, backend="inductor", dynamic=False)


register_backend("eager", eager)
register_backend("inductor", inductor)


def onnxruntime(model: torch.nn.Module, config: ToMAConfig | None, example: dict[str, Any]) -> Callable[..., Any]:
    """ONNX Runtime engines built like ``toma-export build`` (graph pass for ToMA), held in a temp folder.

    ToMA runs its select/reuse variants on the recompute schedule, so timed calls include reuse
    steps exactly as a denoising loop would.
    """
    import tempfile
    from pathlib import Path

    import toma_export
    from toma_export.engines.build import BACKEND_LIMITS, NOT_COMPILABLE, _variants
    from toma_export.engines.load import ProgramRunner, _named
    from toma_export.engines.onnx_export import export_onnx
    from toma_export.engines.onnxruntime import OrtEngine
    from toma_export.engines.signature import dump_spec
    from toma_export.runtime.wrapper import DestinationSchedule

    cfg = config or ToMAConfig(ratio=0.0, method="none")
    if cfg.active and (cfg.method in NOT_COMPILABLE or (cfg.method, "onnxruntime") in BACKEND_LIMITS):
        reason = NOT_COMPILABLE.get(cfg.method) or BACKEND_LIMITS[(cfg.method, "onnxruntime")]
        raise ValueError(f"{cfg.method} on onnxruntime: {reason}")
    if config is not None:
        toma_export.remove(model)  # the export applies its own merging
    folder = tempfile.TemporaryDirectory(prefix="toma-bench-ort-")
    variants, n_groups, _ = _variants(model, example, cfg)
    if config is not None:
        toma_export.apply(model, config)  # keep the row's bookkeeping (state) working; the hooks are not run
    engines = {name: _named(OrtEngine(export_onnx(ep, Path(folder.name) / f"{name}.onnx"))) for name, ep in variants.items()}
    shapes = [list(t.shape) for t in torch.utils._pytree.tree_leaves(example) if isinstance(t, torch.Tensor)]
    runner = ProgramRunner(engines, dump_spec(example), shapes, n_groups, {"batch": "?", "height": "?", "width": "?"})
    schedule = DestinationSchedule(cfg.recompute_every)

    def step(**kwargs: Any) -> tuple[torch.Tensor]:
        out, schedule.destinations = runner(kwargs, schedule.destinations, schedule.recompute)
        schedule.step += 1
        return (out,)

    step.keep_alive = folder  # type: ignore[attr-defined]  # the engine files live as long as the callable
    return step


register_backend("onnxruntime", onnxruntime)
