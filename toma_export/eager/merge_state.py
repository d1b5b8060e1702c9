"""Per-model merge state: step counting, the recompute schedule, shared destinations.

One ``ToMAState`` hangs off a patched model. A forward pass is one denoising step. Sites of the
same token layout form a group; the first site of a group in a step selects destinations (on
scheduled steps) or reuses the cached ones, and every later site of the group reuses them. Merge
weights are rebuilt per site from that site's own features unless ``share_weights`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable

import torch

from toma_export.config import ToMAConfig
from toma_export.core.merge import MergeMap
from toma_export.core.selection import facility_location, tokens_kept
from toma_export.core.tiles import TileLayout


@dataclass
class _Group:
    idx: torch.Tensor  # (B, T, k) tile-local destination indices
    selected_at: int
    weights: MergeMap | None = None


@dataclass
class ToMAState:
    config: ToMAConfig
    step: int = 0
    latent_hw: tuple[int, int] | None = None
    selections: int = 0  # how many times selection ran; tests count reuse with it
    groups: dict[Hashable, _Group] = field(default_factory=dict)
    blocks: dict[Hashable, Any] = field(default_factory=dict)  # per-block caches (CA-ToMe pairs)
    _seen: set[Hashable] = field(default_factory=set)

    # -- the denoising loop -------------------------------------------------------------
    def reset(self) -> None:
        """Start a new generation: step 0, nothing cached."""
        self.step = 0
        self.groups.clear()
        self.blocks.clear()
        self._seen.clear()

    def begin_step(self, latent_hw: tuple[int, int] | None = None) -> None:
        self._seen.clear()
        if latent_hw is not None:
            self.latent_hw = latent_hw

    def end_step(self) -> None:
        self.step += 1

    @property
    def recompute_due(self) -> bool:
        return self.step % self.config.recompute_every == 0

    # -- ToMA ---------------------------------------------------------------------------
    def layout_for(self, h: int, w: int) -> TileLayout:
        return TileLayout.create(h, w, self.config.tile, self.config.remainder)

    def destinations(self, layout: TileLayout, features: torch.Tensor) -> torch.Tensor:
        """Shared destinations ``(B, T, k)`` for this layout's group at the current step."""
        key = (layout, features.shape[0])
        group = self.groups.get(key)
        first_in_step = key not in self._seen
        if group is None or (first_in_step and self.recompute_due and group.selected_at != self.step):
            tiles, _ = layout.split(features)
            idx = facility_location(tiles, tokens_kept(layout.tile_size, self.config.ratio))
            self.selections += 1
            group = _Group(idx, self.step)
            self.groups[key] = group
        if first_in_step:
            group.weights = None
            self._seen.add(key)
        return group.idx

    def merge_map(self, layout: TileLayout, features: torch.Tensor) -> MergeMap:
        """The merge map of one site: shared destinations, weights from ``features``."""
        idx = self.destinations(layout, features)
        group = self.groups[(layout, features.shape[0])]
        if self.config.share_weights and group.weights is not None:
            return group.weights
        mm = MergeMap.build(layout, features, idx, self.config.temperature)
        if self.config.share_weights:
            group.weights = mm
        return mm

    def merges(self, layout: TileLayout) -> bool:
        """Whether a site of this layout merges anything (k < tile size and at least one tile)."""
        return layout.num_tiles > 0 and tokens_kept(layout.tile_size, self.config.ratio) < layout.tile_size
