"""The ToMA graph pass: capture with torch.export, find merge sites by pattern, insert custom ops.

``rewrite(model, example_kwargs, config)`` runs capture -> match (``patterns``) -> plan/replace
(``rewrite``, ``shapes``) -> verify, and returns a :class:`ToMAProgram`; ToDo takes its key/value pass
(``kv_downsample``) to a ``KVProgram``. Both passes share one shape (``program_base``: a ``PassBase``
with ``requires`` / ``call`` / ``ensures``, making a :class:`GraphProgram`).
"""

from __future__ import annotations

from typing import Any

import torch

from toma_export import ops as _ops  # noqa: F401  (registers the toma:: custom ops)
from toma_export.config import ToMAConfig
from toma_export.errors import ToMATypeError, UnsupportedModelError
from toma_export.input_rules import check_config_arg
from toma_export.graph.capture import Captured, batch_dynamic_shapes, capture
from toma_export.graph.decompositions import decompositions, lower
from toma_export.graph.grids import Grid, token_grids
from toma_export.graph.patterns import Site, find_sites
from toma_export.graph.program import ToMAPass, ToMAProgram
from toma_export.graph.program_base import GraphPass, GraphProgram, GroupInfo, PassCheckError, SiteInfo


def rewrite(
    model: torch.nn.Module,
    example_kwargs: dict[str, Any],
    config: ToMAConfig | None = None,
    *,
    dynamic_batch: bool = False,
    strict: bool = True,
) -> GraphProgram:
    """Capture ``model(**example_kwargs)`` and insert ToMA at every matched site ``config`` allows.

    Shapes are static by default: the program accepts inputs shaped like the example (rewrite again
    for another resolution or batch). With ``dynamic_batch=True`` (example batch >= 2) the batch is
    symbolic: one program, and its exported programs, serve any batch at the example's resolution.
    With ratio 0 it runs the original graph. ``strict`` (default), as ``toma_export.apply``: a method
    the graph pass does not implement, or an active config that merges no site of this model, is
    refused (:class:`UnsupportedModelError` naming each site's reason) instead of returning a program
    that merges nothing; ``strict=False`` returns that program (``program.skipped`` says why).
    """
    config = check_config_arg(config)
    if not isinstance(model, torch.nn.Module):
        raise ToMATypeError(f"rewrite takes the denoiser (a torch.nn.Module), got a {type(model).__name__}; "
                            "for a pipeline pass pipe.unet or pipe.transformer.")
    if not isinstance(example_kwargs, dict):
        raise ToMATypeError(f"example_kwargs must be the model's keyword arguments as a dict, got a "
                            f"{type(example_kwargs).__name__}.")
    from toma_export.methods import get as get_method

    method = get_method(config.method)
    if strict and config.active and not (method.graph_pass or method.graph_kv):
        raise UnsupportedModelError(
            f"method {config.method!r} has no graph pass: toma_export.rewrite implements ToMA (and ToDo's key/value "
            f"pass); run {config.method!r} eagerly with toma_export.apply(model, config), or use method='toma'."
        )
    captured = capture(model, example_kwargs, dynamic_batch=dynamic_batch)
    return rewrite_captured(captured, config, name=type(model).__name__, strict=strict)


def rewrite_captured(captured: Captured, config: ToMAConfig, *, name: str = "the model",
                     strict: bool = True) -> GraphProgram:
    """Match, plan and rewrite a captured model. A rewrite that fails for a reason no single site's
    region explains leaves every site unmerged, each reported with that reason (``program.skipped``).
    ToDo (``method="todo"``) goes to its key/value pass (``kv_downsample``). ``strict``: see :func:`rewrite`."""
    from toma_export.methods.route import Route, graph_route

    if graph_route(config) is Route.KV_PASS:
        from toma_export.graph import kv_downsample

        return kv_downsample.rewrite_captured(captured, config, name=name, strict=strict)
    program = ToMAPass(captured, config).run()
    if strict and config.active and not program.sites:
        reasons = "; ".join(f"{s.name} ({s.kind}): {s.reason}" for s in program.skipped[:6])
        raise UnsupportedModelError(
            f"{name}: ToMA merges no site of this model under this config ("
            + (f"{len(program.skipped)} found, none merged: {reasons}). Change the config (ratio, tile, merge_*, "
               "max_downsample) or the input size; `toma-export inspect` prints the full report." if program.skipped else
               "no attention or MLP over an image-token grid was found). rewrite takes a diffusers denoiser "
               "(UNet2DConditionModel, FluxTransformer2DModel, other diffusers transformers) called with its "
               "latents; `toma-export inspect` prints what the graph pass sees.")
        )
    return program


__all__ = [
    "Captured",
    "GraphPass",
    "GraphProgram",
    "Grid",
    "GroupInfo",
    "PassCheckError",
    "Site",
    "SiteInfo",
    "ToMAPass",
    "ToMAProgram",
    "batch_dynamic_shapes",
    "capture",
    "decompositions",
    "find_sites",
    "lower",
    "rewrite",
    "rewrite_captured",
    "token_grids",
]
