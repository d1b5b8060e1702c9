"""``MergeContext``: what the eager hooks of one model share during a generation.

It holds the config, the generation's :class:`~toma_export.schedule.StepSchedule` (step count,
recompute decision, destinations carried between steps), the token grid of the current call and
per-step scratch: which destination groups already ran this step, block-level matchings of the
baselines. A forward pass is one denoising step. Sites of the same token layout form a group:
the group's first site in a step selects (scheduled steps) or takes the carried destinations,
later sites reuse them; merge weights are rebuilt per site unless ``share_weights`` is set.
"""

from __future__ import annotations

from typing import Any, Hashable

import torch
from diffusers.hooks.hooks import BaseState

from toma_export.config import ToMAConfig
from toma_export.errors import ToMAConfigError
from toma_export.core.merge import MergeMap, uses_kernels
from toma_export.core.selection import tokens_kept
from toma_export.core.tiles import TileLayout, unet_level
from toma_export.ops import facility_location as select_op  # the op: CUDA selects with the Triton kernel
from toma_export.schedule import StepSchedule


class MergeContext(BaseState):
    """Per-generation state of one applied model (one per diffusers cache context)."""

    def __init__(self, config: ToMAConfig):
        self.config = config
        self.schedule = StepSchedule(config.recompute_every)
        #: Latent grid of the current call (UNets: the sample's; transformers: the image grid).
        self.latent_hw: tuple[int, int] | None = None
        #: Transformers: the image-token grid of the current call, None when unknown (no merging).
        self.grid: tuple[int, int] | None = None
        self.blocks: dict[Hashable, Any] = {}  # block-level matchings (ToMeSD, CA-ToMe), carried across steps
        self._step_idx: dict[Hashable, torch.Tensor] = {}
        self._step_weights: dict[Hashable, MergeMap] = {}
        #: The running block's tokens are in tile-major order (``TileOrderHook``, during its forward).
        self.tile_major = False

    # -- the denoising loop (diffusers' stateful-hook reset calls ``reset``) ------------------------
    def reset(self, *args: Any, **kwargs: Any) -> None:
        self.schedule.reset()
        self.blocks.clear()

    def begin_step(self) -> None:
        self.tile_major = False  # a block that raised mid-forward leaves no order behind
        self._step_idx.clear()
        self._step_weights.clear()

    def prepare(self, grids: list[tuple[int, int]], batch: int, device: torch.device) -> None:
        """Host, before the step's computation: reserve the destination buffer of every layout the
        call may merge (``grids``) and decide select or reuse, so traced sites only read the bool
        and write in place (:class:`~toma_export.schedule.StepSchedule`)."""
        keys = []
        for h, w in grids:
            try:
                layout = self.layout_for(h, w)
            except ToMAConfigError:
                continue  # the site that meets this grid raises it
            if self.merges(layout):
                key = _key(layout, batch)
                self.schedule.reserve(key, (batch, layout.num_tiles, tokens_kept(layout.tile_size, self.config.ratio)), device)
                keys.append(key)
        if not self.schedule.begin(keys):
            # A reuse step's sites all read the carried buffers from the step's table, as a select
            # step's later sites do: one traced variant for both (regional compilation).
            self._step_idx.update(zip(keys, self.schedule.read(keys)))

    def end_step(self) -> None:
        # Nothing built inside a (possibly traced) step may outlive it but tensors and plain keys.
        self._step_idx.clear()
        self._step_weights.clear()
        self.schedule.advance()

    @property
    def step(self) -> int:
        return self.schedule.step

    @property
    def selections(self) -> int:
        """Selection runs of this model's groups, eager and inside ``torch.compile`` alike (the host
        schedule counts a compiled select step's reserved groups)."""
        return self.schedule.selections

    # -- grids ----------------------------------------------------------------------------------------
    def unet_grids(self, max_downsample: int, factors: frozenset[int] | None = None) -> list[tuple[int, int]]:
        """Every UNet level grid of the current call up to ``max_downsample`` (what may merge),
        only the levels in ``factors`` (downsampling factors with attention) where given."""
        if self.latent_hw is None:
            return []
        (h, w), factor, out = self.latent_hw, 1, []
        while factor <= max_downsample:
            if factors is None or factor in factors:
                out.append((h, w))
            h, w, factor = -(-h // 2), -(-w // 2), factor * 2
        return out

    def unet_grid(self, n: int, max_downsample: int) -> tuple[int, int] | None:
        """Grid of a UNet level with ``n`` tokens when that level is merged, else None."""
        if self.latent_hw is None:
            return None
        level = unet_level(n, *self.latent_hw)
        return None if level is None or level[2] > max_downsample else level[:2]

    def image_grid(self, n: int) -> tuple[int, int] | None:
        """The transformer's image grid when a site sees exactly its ``n`` tokens, else None."""
        g = self.grid
        return g if g is not None and g[0] * g[1] == n else None

    # -- ToMA -----------------------------------------------------------------------------------------
    def layout_for(self, h: int, w: int) -> TileLayout:
        """The site layout of an ``h x w`` grid, in the token order the current block runs in."""
        return TileLayout.create(h, w, self.config.tile, self.config.remainder, tile_major=self.tile_major)

    def merges(self, layout: TileLayout) -> bool:
        """Whether a site of this layout merges anything (k < tile size and at least one tile)."""
        return layout.num_tiles > 0 and tokens_kept(layout.tile_size, self.config.ratio) < layout.tile_size

    def merge_map(self, layout: TileLayout, features: torch.Tensor) -> MergeMap:
        """One site's merge map: the group's destinations this step, weights from ``features``."""
        key = _key(layout, features.shape[0])
        if self.config.share_weights and key in self._step_weights:
            return self._step_weights[key].on(layout)
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []

        def split() -> tuple[torch.Tensor, torch.Tensor]:
            """The tiles, split once for selection and the torch path's weights (CUDA's kernels read the grid)."""
            if not parts:
                parts.append(layout.split(features))
            return parts[0]

        idx = self._step_idx.get(key)
        if idx is None:
            k = tokens_kept(layout.tile_size, self.config.ratio)
            idx = self.schedule.carry(key, lambda: select_op(split()[0], k))
            self._step_idx[key] = idx
        mm = MergeMap.build(layout, features, idx, self.config.temperature, None if uses_kernels(features) else split())
        if self.config.share_weights:
            self._step_weights[key] = mm
        return mm


def _key(layout: TileLayout, batch: int) -> tuple[int, ...]:
    """A destination group's key: plain ints (traceable) and no token order, so row- and
    tile-major sites share destinations."""
    return (layout.h, layout.w, layout.th, layout.tw, layout.frames, batch)
