"""ToMA: destinations by greedy facility location per tile, shared by the sites of one token
layout and carried across steps; merge/unmerge as attention-like linear maps (``core.merge``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Hashable

import torch

from toma_export.methods.base import MergeMethod, Merger

if TYPE_CHECKING:
    from toma_export.eager.state import MergeContext


def merger(ctx: MergeContext, block: Hashable, x: torch.Tensor, h: int, w: int, first: bool) -> Merger | None:
    layout = ctx.layout_for(h, w)
    return ctx.merge_map(layout, x) if ctx.merges(layout) else None


METHOD = MergeMethod(
    name="toma",
    summary="token merge with attention (this project)",
    merger=merger,
    graph_pass=True,
    tile_order=True,
)
