"""The eager mergers: how each token-merging method builds a site's merge/unmerge, keyed by method name.

The capabilities (what a method supports, which backends refuse it) are the torch-free table in
:mod:`toma_export.methods`; this module is the eager half. ToMA: destinations by greedy facility
location per tile (``MergeContext.merge_map``). ToMeSD and CA-ToMe: bipartite soft matching per block
(``baselines.bipartite``): ToMeSD matches anew at every block and step; CA-ToMe keeps only links above
a similarity threshold (a data-dependent count) and reuses a block's matching between scheduled steps.
On UNets ToMeSD runs as the ``tomesd`` package's own patch (see ``eager.unet``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Hashable, Mapping, Protocol

import torch

from toma_export import methods
from toma_export.baselines.bipartite import bipartite_match
from toma_export.methods import MergeMethod

if TYPE_CHECKING:
    from toma_export.eager.state import MergeContext


class Merger(Protocol):
    """``merge(x) -> (B, M, C)``, ``unmerge(y) -> (B, N, C)``, ``positions() -> (B, M)`` grid index
    of each merged token (RoPE rows follow it)."""

    def merge(self, x: torch.Tensor) -> torch.Tensor: ...

    def unmerge(self, y: torch.Tensor) -> torch.Tensor: ...

    def positions(self) -> torch.Tensor: ...


#: ``(context, block key, features (B, h*w, C), h, w, first site of the block this step) -> merger``.
MergerFactory = Callable[["MergeContext", Hashable, torch.Tensor, int, int, bool], "Merger | None"]


def toma_merger(ctx: MergeContext, block: Hashable, x: torch.Tensor, h: int, w: int, first: bool) -> Merger | None:
    layout = ctx.layout_for(h, w)
    return ctx.merge_map(layout, x) if ctx.merges(layout) else None


def _bipartite(ctx: MergeContext, block: Hashable, x: torch.Tensor, h: int, w: int, first: bool, cached: bool) -> Merger | None:
    cfg = ctx.config
    held = ctx.blocks.get(block)
    reuse = cached and not ctx.schedule.recompute_due and held is not None and held[1] == x.shape[0]
    if first and not reuse:
        generator = None
        if cfg.seed is not None:
            generator = torch.Generator(device=x.device).manual_seed(cfg.seed + ctx.step)
        threshold = cfg.threshold if cached else None
        match = bipartite_match(x, h, w, int(h * w * cfg.ratio), generator=generator, threshold=threshold)
        ctx.blocks[block] = (match, x.shape[0])
        if cached:
            ctx.schedule.selections += 1
    held = ctx.blocks.get(block)
    return None if held is None or held[0].r == 0 else held[0]


def tomesd_merger(ctx: MergeContext, block: Hashable, x: torch.Tensor, h: int, w: int, first: bool) -> Merger | None:
    return _bipartite(ctx, block, x, h, w, first, cached=False)


def catome_merger(ctx: MergeContext, block: Hashable, x: torch.Tensor, h: int, w: int, first: bool) -> Merger | None:
    return _bipartite(ctx, block, x, h, w, first, cached=True)


#: Method name -> its eager merger (methods whose capabilities say ``merges_tokens``).
MERGERS: Mapping[str, MergerFactory] = {"toma": toma_merger, "tomesd": tomesd_merger, "catome": catome_merger}


@dataclass(frozen=True)
class EagerMethod:
    """A method as the eager hooks use it: its capabilities and its merger (None: it merges no tokens)."""

    capabilities: MergeMethod
    merger: MergerFactory | None

    @property
    def keys_only(self) -> bool:
        return self.capabilities.keys_only

    @property
    def tile_order(self) -> bool:
        return self.capabilities.tile_order

    @property
    def tile_destinations(self) -> bool:
        return self.capabilities.tile_destinations


def eager_method(name: str) -> EagerMethod:
    """The eager side of method ``name`` (unknown names are refused by :func:`toma_export.methods.get`)."""
    capabilities = methods.get(name)
    return EagerMethod(capabilities, MERGERS[name] if capabilities.merges_tokens else None)
