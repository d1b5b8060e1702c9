"""What a merge site asks for: the merger for its features under the configured method.

A *merger* has ``merge(x) -> (B, M, C)``, ``unmerge(y) -> (B, N, C)`` and ``positions() -> (B, M)``
(grid index of each merged token, for RoPE). ToMA gives a ``MergeMap`` (shared destinations,
per-site weights); ToMeSD and CA-ToMe give a ``BipartiteMerge`` per block.
"""

from __future__ import annotations

from typing import Hashable, Protocol

import torch

from toma_export.baselines.bipartite import bipartite_match
from toma_export.eager.merge_state import ToMAState


class Merger(Protocol):
    def merge(self, x: torch.Tensor) -> torch.Tensor: ...

    def unmerge(self, y: torch.Tensor) -> torch.Tensor: ...

    def positions(self) -> torch.Tensor: ...


def merger_for(
    state: ToMAState, block: Hashable, features: torch.Tensor, h: int, w: int, first_in_block: bool
) -> Merger | None:
    """The merger a site of ``block`` uses for ``features`` ``(B, h*w, C)``; None = leave unmerged.

    ``first_in_block``: this is the block's first merged site this step, where block-level
    matchings (ToMeSD, CA-ToMe) are computed; later sites of the block reuse them.
    """
    cfg = state.config
    if cfg.method == "toma":
        layout = state.layout_for(h, w)
        return state.merge_map(layout, features) if state.merges(layout) else None
    if cfg.method in ("tomesd", "catome"):
        cached = state.blocks.get(block)
        reuse = cfg.method == "catome" and not state.recompute_due
        if first_in_block and not (reuse and cached is not None and cached[1] == features.shape[0]):
            generator = None
            if cfg.seed is not None:
                generator = torch.Generator(device=features.device).manual_seed(cfg.seed + state.step)
            threshold = cfg.threshold if cfg.method == "catome" else None
            match = bipartite_match(
                features, h, w, int(h * w * cfg.ratio), generator=generator, threshold=threshold
            )
            state.blocks[block] = (match, features.shape[0])
            if cfg.method == "catome":
                state.selections += 1
        entry = state.blocks.get(block)
        return None if entry is None or entry[0].r == 0 else entry[0]
    return None
