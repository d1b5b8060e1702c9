"""Backends: how a model is turned into the callable that gets timed.

A backend is one function ``(model, config, example_kwargs) -> callable(**kwargs)``; adding one
(ONNX Runtime, TensorRT) is one :func:`register_backend` call. By default ``model`` arrives already
patched in eager mode with ``config`` (``None`` for unpatched baseline and ideal rows). A backend
registered with ``merges=True`` gets the unpatched model and merges by its own means (the graph
pass, an exported engine); its callable carries the row's handle (``reset``/``remove``/``state``)
as ``.handle``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from toma_export.config import ToMAConfig
from toma_export.errors import ToMAError, UnsupportedModelError
from toma_export.methods.route import Route, check_backend, route
from toma_export.models.spec import spec_for
from toma_export.schedule import StepSchedule, Variant
from toma_export.engines.shared_weights import WeightPool

Backend = Callable[[torch.nn.Module, "ToMAConfig | None", dict[str, Any]], Callable[..., Any]]

BACKENDS: dict[str, Backend] = {}
#: Backends that merge by their own means and want the unpatched model.
SELF_MERGING: set[str] = set()


def register_backend(name: str, backend: Backend, *, merges: bool = False) -> None:
    """Make ``--backends name`` available; ``merges``: it installs merging itself (see module doc)."""
    BACKENDS[name] = backend
    if merges:
        SELF_MERGING.add(name)


@dataclass
class ScheduleHandle:
    """The row handle of a self-merging backend: its generation's step schedule."""

    schedule: StepSchedule

    def reset(self) -> None:
        self.schedule.reset()

    def remove(self) -> None:
        pass  # nothing was installed on the model

    @property
    def state(self) -> StepSchedule:
        return self.schedule


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r} is unknown; available: {', '.join(BACKENDS)}.")
    return BACKENDS[name]


def eager(model: torch.nn.Module, config: ToMAConfig | None, example: dict[str, Any]) -> Callable[..., Any]:
    """The eager-patched model itself: the reference semantics."""
    return model


def _raise_recompile_limits() -> None:
    """Every case is its own module tree running the same code objects: raise dynamo's per-code
    recompile limits to cover them, and guard on module hooks. The cases share weights
    (``shared_clone``), so with dynamo's default (hooks unguarded) a case whose only difference is a
    forward hook (the UNet ideal row's ``IdealSites``) passes the guards of an already compiled
    case and runs its graph: measured, the compiled ideal row returned the unmerged output."""
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 256)
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4096)
    dynamo_config.skip_nnmodule_hook_guards = False


def _inductor(mode: str | None) -> Backend:
    def compiled(model: torch.nn.Module, config: ToMAConfig | None, example: dict[str, Any]) -> Callable[..., Any]:
        _raise_recompile_limits()
        return torch.compile(model, backend="inductor", mode=mode, dynamic=False)

    compiled.__doc__ = (
        f"``torch.compile`` (inductor, mode {mode or 'default'}) of the eager-patched model: the merge hooks "
        "are traced with it (graph-break free for ToMA, ToMeSD and ToDo). Compilation (with max-autotune: "
        "benchmarking GEMM kernel choices) happens on the first, untimed call; shapes are static "
        "(``dynamic=False``): a case with fewer tokens (the ideal) must not turn every other case's graph dynamic.")
    return compiled


inductor = _inductor(None)


def inductor_pass(model: torch.nn.Module, config: ToMAConfig | None, example: dict[str, Any]) -> Callable[..., Any]:
    """``torch.compile`` (inductor) of the graph pass's program (ToMA; ToDo on architectures without
    an eager adapter through the key/value pass; unmerged rows compile the model itself), select/reuse
    variants on the recompute schedule."""
    _raise_recompile_limits()
    if config is None or not config.active:
        return torch.compile(model, backend="inductor", dynamic=False)
    from toma_export import rewrite

    try:  # a plain module (a block workload) has no spec and no adapter: the graph pass takes it as it is
        spec: Any = spec_for(model)
    except ToMAError:
        spec = "module"
    try:
        path = route(spec, config, "inductor-pass")
    except UnsupportedModelError:
        path = Route.ADAPTER
    if path not in (Route.GRAPH_PASS, Route.KV_PASS):
        raise ValueError(f"{config.method} has no graph pass for this model; use --backends inductor for it")
    program = rewrite(model, example, config).compile(backend="inductor", dynamic=False)

    def step(**kwargs: Any) -> Any:
        return program(**kwargs)

    step.handle = ScheduleHandle(program.schedule)  # type: ignore[attr-defined]
    return step


register_backend("eager", eager)
register_backend("inductor", inductor)
register_backend("inductor-max-autotune", _inductor("max-autotune"))
register_backend("inductor-pass", inductor_pass, merges=True)


def cudagraph(model: torch.nn.Module, config: ToMAConfig | None, example: dict[str, Any]) -> Callable[..., Any]:
    """The eager-patched model as CUDA graphs: select and reuse bodies captured once per shape and
    replayed on the host schedule (:class:`~toma_export.runtime.cudagraph.GraphedModel`)."""
    from toma_export.runtime.cudagraph import GraphedModel

    return GraphedModel(model)


def inductor_regional(model: torch.nn.Module, config: ToMAConfig | None, example: dict[str, Any]) -> Callable[..., Any]:
    """Regional compilation: ``torch.compile`` (inductor) of the model's repeated blocks only, in place
    (diffusers' ``compile_repeated_blocks`` where the model declares ``_repeated_blocks``; a UNet's
    transformer blocks otherwise); the step hook and everything between the blocks run eagerly.
    Compilation happens on the first, untimed call (its time is the row's first-call time)."""
    _raise_recompile_limits()
    names = set(getattr(model, "_repeated_blocks", None) or ())
    if names:
        blocks = [m for m in model.modules() if type(m).__name__ in names]
    else:
        from toma_export.eager.unet import transformer_blocks

        blocks = [m for _, m in transformer_blocks(model)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} declares no repeated blocks to compile regionally")
    for block in blocks:
        block.compile(backend="inductor", dynamic=False)
    return model


register_backend("cudagraph", cudagraph)
register_backend("inductor-cudagraph", _inductor("reduce-overhead"))
register_backend("inductor-regional", inductor_regional)


def _engine_backend(
    name: str, build_variant: Callable[[Any, Any], Variant],
) -> Backend:
    """A backend that builds engines like ``toma-export build`` (graph pass for ToMA, key/value graph
    pass for ToDo on architectures without an eager adapter; one engine per variant, files in a temp folder living as long as the callable) and runs them through the
    artifact runtime's :class:`~toma_export.engines.load.ProgramRunner`. ToMA runs its select/reuse
    variants on the recompute schedule, so timed calls include reuse steps as a denoising loop would.
    ``build_variant(exported_program, path_stem)`` returns the variant's callable on flat inputs."""

    def backend(model: torch.nn.Module, config: ToMAConfig | None, example: dict[str, Any]) -> Callable[..., Any]:
        import tempfile
        from pathlib import Path

        from toma_export.engines.build import _variants
        from toma_export.engines.load import make_runner
        from toma_export.engines.manifest import Shapes
        from toma_export.engines.signature import dump_spec

        cfg = config or ToMAConfig(ratio=0.0, method="none")
        check_backend(cfg, name)  # a ToMAConfigError (a ValueError) naming why this backend cannot build it
        folder = tempfile.TemporaryDirectory(prefix=f"toma-bench-{name}-")
        variants, n_groups, _ = _variants(model, example, cfg, backend=name)
        engines = {v: build_variant(ep, Path(folder.name) / v) for v, ep in variants.items()}
        leaves = [t for t in torch.utils._pytree.tree_leaves(example) if isinstance(t, torch.Tensor)]
        runner = make_runner(
            engines, input_spec=dump_spec(example), num_groups=n_groups,
            input_dtypes=[str(t.dtype).removeprefix("torch.") for t in leaves],
            shapes=Shapes(batch=int(leaves[0].shape[0]), height=0, width=0, inputs=[list(t.shape) for t in leaves]),
        )
        schedule = StepSchedule(cfg.recompute_every)

        def step(**kwargs: Any) -> tuple[torch.Tensor]:
            out = runner(kwargs, schedule)
            schedule.advance()
            return (out,)

        step.keep_alive = folder  # type: ignore[attr-defined]  # the engine files live as long as the callable
        step.handle = ScheduleHandle(schedule)  # type: ignore[attr-defined]
        return step

    backend.__doc__ = f"{name} engines built like ``toma-export build``: " + (_engine_backend.__doc__ or "")
    return backend


def _ort_variant(ep: Any, stem: Any, weights: Any = None) -> Variant:
    """One ONNX Runtime session per variant; with a ``WeightPool`` (``onnxruntime-shared``), every row's
    sessions share one copy of equal weights (prepacking off), so a model of several GB fits with its
    unmerged, select, reuse and ideal sessions at once."""
    from toma_export.engines.load import _named
    from toma_export.engines.onnx_export import export_onnx
    from toma_export.engines.onnxruntime import OrtEngine

    onnx_path = export_onnx(ep, stem.with_suffix(".onnx"), external_data=True if weights is not None else None)
    # Every row holds its sessions for the whole run: without the arena, each frees its activations.
    return _named(OrtEngine(onnx_path, memory_arena=False, weights=weights))


_SHARED_WEIGHTS = WeightPool()  # the onnxruntime-shared rows' pool; its entries die with the rows


def _aoti_variant(ep: Any, stem: Any) -> Variant:
    """AOTInductor: the variant compiled ahead of time to a ``.pt2`` package (as ``build --backend
    inductor`` writes it) and loaded back; compile time lands in the row's first-call time."""
    from torch._inductor import aoti_compile_and_package

    from toma_export.engines.load import open_aoti_package
    from toma_export.graph.decompositions import lower

    path = stem.with_suffix(".pt2")
    aoti_compile_and_package(lower(ep), package_path=str(path))
    return open_aoti_package(path)


onnxruntime = _engine_backend("onnxruntime", _ort_variant)
aotinductor = _engine_backend("aotinductor", _aoti_variant)
register_backend("onnxruntime", onnxruntime, merges=True)
register_backend("onnxruntime-shared", _engine_backend(
    "onnxruntime-shared", lambda ep, stem: _ort_variant(ep, stem, _SHARED_WEIGHTS)), merges=True)
register_backend("aotinductor", aotinductor, merges=True)
