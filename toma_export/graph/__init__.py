"""The ToMA graph pass: capture with torch.export, find merge sites by pattern, insert custom ops.

``rewrite(model, example_kwargs, config)`` runs capture -> match (``patterns``) -> plan/replace
(``rewrite``, ``shapes``) -> verify, and returns a :class:`ToMAProgram`.
"""

from __future__ import annotations

from typing import Any

import torch

from toma_export import ops as _ops  # noqa: F401  (registers the toma:: custom ops)
from toma_export.config import ToMAConfig
from toma_export.graph.capture import Captured, batch_dynamic_shapes, capture
from toma_export.graph.decompositions import decompositions, lower
from toma_export.graph.grids import Grid, token_grids
from toma_export.graph.patterns import Site, captured_sites, find_sites
from toma_export.graph.program import GroupInfo, SiteInfo, ToMAProgram
from toma_export.graph.rewriter import Plan, add_selection, plan, rewrite_graph


def rewrite(
    model: torch.nn.Module,
    example_kwargs: dict[str, Any],
    config: ToMAConfig | None = None,
    *,
    dynamic_batch: bool = False,
) -> ToMAProgram:
    """Capture ``model(**example_kwargs)`` and insert ToMA at every matched site ``config`` allows.

    Shapes are static by default: the program accepts inputs shaped like the example (rewrite again
    for another resolution or batch). With ``dynamic_batch=True`` (example batch >= 2) the batch is
    symbolic: one program, and its exported programs, serve any batch at the example's resolution.
    With ratio 0, or when nothing matches, it runs the original graph.
    """
    config = config or ToMAConfig()
    captured = capture(model, example_kwargs, dynamic_batch=dynamic_batch)
    return rewrite_captured(captured, config, name=type(model).__name__)


def rewrite_captured(captured: Captured, config: ToMAConfig, *, name: str = "the model") -> ToMAProgram:
    """Match, plan and rewrite a captured model. A rewrite that fails for a reason no single site's
    region explains leaves every site unmerged, each reported with that reason (``program.skipped``).
    ToDo (``method="todo"``) goes to its key/value pass (``kv_downsample``)."""
    from toma_export.methods.route import Route, graph_route

    if graph_route(config) is Route.KV_PASS:
        from toma_export.graph import kv_downsample

        return kv_downsample.rewrite_captured(captured, config, name=name)
    found = captured_sites(
        captured,
        "the model is not supported by the graph pass. Run it unmerged, or ToMA eagerly where an adapter exists "
        "(toma_export.apply).",
    )
    p = plan(found, config)
    try:
        rewritten, p = rewrite_graph(captured.ep.graph_module, p, config) if p.sites else (None, p)
        select_gm = add_selection(rewritten, p) if rewritten is not None else None
    except Exception as e:  # noqa: BLE001 - not attributable to one site: leave all unmerged, say why
        reason = f"rewrite failed ({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''})"
        p = Plan([], [], [], p.skipped + [(s, reason) for s in p.sites], p.limit)
        rewritten, select_gm = None, None
    return ToMAProgram(captured, config, p, rewritten, select_gm)


__all__ = [
    "Captured",
    "Grid",
    "GroupInfo",
    "Site",
    "SiteInfo",
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
