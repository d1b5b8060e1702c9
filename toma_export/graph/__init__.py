"""The ToMA graph pass: capture with torch.export, find merge sites by pattern, insert custom ops.

``rewrite(model, example_kwargs, config)`` runs capture -> match (``patterns``) -> plan/replace
(``rewrite``, ``shapes``) -> verify, and returns a :class:`ToMAProgram`.
"""

from __future__ import annotations

from typing import Any

import torch

from toma_export import ops as _ops  # noqa: F401  (registers the toma:: custom ops)
from toma_export.config import ToMAConfig
from toma_export.errors import UnsupportedModelError
from toma_export.graph.capture import Captured, batch_dynamic_shapes, capture
from toma_export.graph.decompositions import decompositions, lower
from toma_export.graph.grids import Grid, token_grids
from toma_export.graph.patterns import Site, find_sites
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
    return rewrite_captured(captured, config)


def _refuse_text_as_long_as_an_image(example_kwargs: dict[str, Any], grids: list[Grid]) -> None:
    """Sites hold an image grid by their token count (``patterns.image_span``), so a text sequence
    exactly as long as a grid (Flux at 64x64 px with 16 text tokens; FLUX.1-schnell's 256 text tokens
    at 256x256 px) would be merged as if it were image tokens: measured, flux-tiny at 64x64 merged its
    text MLPs (``ff_context``) and its engine was 0.15 off eager ToMA. Refused, naming the way out.
    Text inputs are diffusers' ``encoder_hidden_states*`` arguments."""
    counts = {g.tokens for g in grids}
    for name, value in example_kwargs.items():
        if name.startswith("encoder_hidden_states") and isinstance(value, torch.Tensor) and value.ndim == 3:
            if int(value.shape[1]) in counts:
                raise UnsupportedModelError(
                    f"{name} has {int(value.shape[1])} text tokens, as many as an image token grid: the graph pass "
                    "finds image tokens by their count and cannot tell the streams apart. Use another resolution, "
                    "or another text length (e.g. pad the prompt embeddings by one token)."
                )


def rewrite_captured(captured: Captured, config: ToMAConfig) -> ToMAProgram:
    """Match, plan and rewrite a captured model. A rewrite that fails for a reason no single site's
    region explains leaves every site unmerged, each reported with that reason (``program.skipped``)."""
    grids = token_grids(captured.example_kwargs, captured.model_config)
    if config.active:
        _refuse_text_as_long_as_an_image(captured.example_kwargs, grids)
    try:
        found = find_sites(captured.ep.graph, grids)
    except Exception as e:  # noqa: BLE001 - a matcher failure is reported as unsupported, never raw
        raise UnsupportedModelError(
            f"matching merge sites failed on this graph ({type(e).__name__}: {e}); the model is not supported by "
            "the graph pass. Run it unmerged, or ToMA eagerly where an adapter exists (toma_export.apply)."
        ) from e
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
