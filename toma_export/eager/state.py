"""``MergeContext``: what the eager hooks of one model share during a generation.

It holds the config, the generation's :class:`~toma_export.schedule.StepSchedule` (step count,
recompute decision, destinations carried between steps), the token grid of the current call and
per-step scratch: which destination groups already ran this step, block-level matchings of the
baselines. A forward pass is one denoising step. Sites of the same token layout form a group:
the group's first site in a step selects (scheduled steps) or takes the carried destinations,
later sites reuse them. Merge weights follow ``config.weights``: rebuilt per site (``site``), built at
the group's first site each step (``group``), or kept from the selecting step's first site for the
recompute period in persistent device buffers, as the destinations are (``period``).
"""

from __future__ import annotations

from typing import Any, Hashable

import torch
from diffusers.hooks.hooks import BaseState

from toma_export.config import ToMAConfig
from toma_export.errors import ToMAConfigError
from toma_export.core.merge import MergeMap, merged_positions, uses_kernels
from toma_export.core.profiling import region
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
        self._step_rows: dict[Hashable, list[tuple[torch.Tensor, ...]]] = {}
        #: ``weights="period"``: per group key, the selecting step's weights and merge matrix, persistent
        #: device buffers written in place (like the destinations) and read by every site of a reuse step.
        self.kept_weights: dict[Hashable, tuple[torch.Tensor, torch.Tensor | None]] = {}
        #: The running block's tokens are in tile-major order (``TileOrderHook``, during its forward).
        self.tile_major = False
        self._layouts: dict[tuple[int, int, bool], TileLayout] = {}  # eager ``layout_for`` (the config is fixed)
        self._levels: dict[tuple[tuple[int, int], int, int], tuple[int, int] | None] = {}  # eager ``unet_grid``

    # -- the denoising loop (diffusers' stateful-hook reset calls ``reset``) ------------------------
    def reset(self, *args: Any, **kwargs: Any) -> None:
        self.schedule.reset()
        self.blocks.clear()

    def begin_step(self) -> None:
        self.tile_major = False  # a block that raised mid-forward leaves no order behind
        self._step_idx.clear()
        self._step_weights.clear()
        self._step_rows.clear()

    def prepare(self, grids: list[tuple[int, int]], batch: int, device: torch.device,
                dtype: torch.dtype | None = None) -> None:
        """Host, before the step's computation: reserve the destination buffer of every layout the
        call may merge (``grids``), and with ``weights="period"`` the kept weights' buffers (in
        ``dtype``, the tokens'), and decide select or reuse, so traced sites only read the bool
        and write in place (:class:`~toma_export.schedule.StepSchedule`)."""
        keys = []
        for h, w in grids:
            try:
                layout = self.layout_for(h, w)
            except ToMAConfigError:
                continue  # the site that meets this grid raises it
            if self.merges(layout):
                key = _key(layout, batch)
                k = tokens_kept(layout.tile_size, self.config.ratio)
                self.schedule.reserve(key, (batch, layout.num_tiles, k), device)
                if self.config.weights == "period" and dtype is not None:
                    self._reserve_weights(key, (batch, layout.num_tiles, k, layout.tile_size), device, dtype)
                keys.append(key)
        if not self.schedule.begin(keys):
            # A reuse step's sites all read the carried buffers from the step's table, as a select
            # step's later sites do: one traced variant for both (regional compilation).
            self._step_idx.update(zip(keys, self.schedule.read(keys)))
            if self.config.weights == "period":  # and the kept weights, as a select step's later sites do
                for key in keys:
                    kept = self.kept_weights.get(key)
                    if kept is not None and key in self.schedule.valid:
                        h, w, th, tw, frames, _ = key
                        self._step_weights[key] = MergeMap(TileLayout(h, w, th, tw, frames), self._step_idx[key], *kept)

    def end_step(self) -> None:
        # Nothing built inside a (possibly traced) step may outlive it but tensors and plain keys.
        self._step_idx.clear()
        self._step_weights.clear()
        self._step_rows.clear()
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
        if torch.compiler.is_compiling():
            return _merged_level(n, self.latent_hw, max_downsample)
        key = (self.latent_hw, n, max_downsample)
        if key not in self._levels:
            self._levels[key] = _merged_level(n, self.latent_hw, max_downsample)
        return self._levels[key]

    def image_grid(self, n: int) -> tuple[int, int] | None:
        """The transformer's image grid when a site sees exactly its ``n`` tokens, else None."""
        g = self.grid
        return g if g is not None and g[0] * g[1] == n else None

    # -- ToMA -----------------------------------------------------------------------------------------
    def layout_for(self, h: int, w: int) -> TileLayout:
        """The site layout of an ``h x w`` grid, in the token order the current block runs in.

        Eager calls take it from a per-context cache (every merged site asks, each forward); while
        tracing it is built in-graph, so no traced variant reads host state that outlives its step."""
        if torch.compiler.is_compiling():
            return TileLayout.create(h, w, self.config.tile, self.config.remainder, tile_major=self.tile_major)
        key = (h, w, self.tile_major)
        layout = self._layouts.get(key)
        if layout is None:
            layout = self._layouts[key] = TileLayout.create(
                h, w, self.config.tile, self.config.remainder, tile_major=self.tile_major)
        return layout

    def merges(self, layout: TileLayout) -> bool:
        """Whether a site of this layout merges anything (k < tile size and at least one tile)."""
        return layout.num_tiles > 0 and tokens_kept(layout.tile_size, self.config.ratio) < layout.tile_size

    def merge_map(self, layout: TileLayout, features: torch.Tensor) -> MergeMap:
        """One site's merge map: the group's destinations this step, weights from ``features`` or
        shared within the group (``config.weights``)."""
        key = _key(layout, features.shape[0])
        if self.config.share_weights and key in self._step_weights:
            return self._step_weights[key].on(layout)
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []

        def split() -> tuple[torch.Tensor, torch.Tensor]:
            """The tiles, split once for selection and the torch path's weights (CUDA's kernels read the grid)."""
            if not parts:
                parts.append(layout.split(features))
            return parts[0]

        selected: list[bool] = []

        def select() -> torch.Tensor:
            selected.append(True)
            return select_op(split()[0], tokens_kept(layout.tile_size, self.config.ratio))

        idx = self._step_idx.get(key)
        if idx is None:
            idx = self.schedule.carry(key, select)
            self._step_idx[key] = idx
        period = self.config.weights == "period"
        kept = self.kept_weights.get(key)
        if period and not selected and kept is not None and key in self.schedule.valid:
            # carried destinations: the weights kept with them at the step that selected them
            mm = MergeMap(layout, idx, kept[0], kept[1])
        else:
            mm = MergeMap.build(layout, features, idx, self.config.temperature, None if uses_kernels(features) else split())
            if period and selected:
                self._keep_weights(key, mm)
        if self.config.share_weights:
            self._step_weights[key] = mm
        return mm

    def _reserve_weights(self, key: Hashable, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> None:
        """Allocate ``key``'s kept-weights buffers before a traced select step writes them (host), so
        every select step writes in place and traces the same graph (the torch path keeps ``M`` too)."""
        kept = self.kept_weights.get(key)
        if kept is not None and (tuple(kept[0].shape), kept[0].device, kept[0].dtype) == (shape, torch.device(device), dtype):
            return
        with torch.inference_mode(False):
            a = torch.zeros(shape, device=device, dtype=dtype)
            m = None if uses_kernels(a) else torch.zeros(shape, device=device, dtype=dtype)
        if a.device.type == "cuda":  # static inputs of inductor's CUDA-graph trees, as the destinations are
            for t in (a, m):
                if t is not None:
                    torch._dynamo.mark_static_address(t)
        self.kept_weights[key] = (a, m)

    def _keep_weights(self, key: Hashable, mm: MergeMap) -> None:
        """Write a selecting step's weights into ``key``'s persistent buffers (made on first use)."""
        fresh = (mm.weights, mm.merge_matrix)
        kept = self.kept_weights.get(key)
        if kept is not None and all(_same(b, f) for b, f in zip(kept, fresh)):
            for b, f in zip(kept, fresh):
                if b is not None and f is not None:
                    b.copy_(f)
            return
        if torch.compiler.is_compiling():
            self.kept_weights[key] = tuple(None if f is None else f.clone() for f in fresh)  # type: ignore[assignment]
            return
        with torch.inference_mode(False):  # made in an inference-mode call, written in place outside one
            self.kept_weights[key] = tuple(None if f is None else f.detach().clone() for f in fresh)  # type: ignore[assignment]


    # -- RoPE rows of merged tokens (transformers) ---------------------------------------------------
    def rope_rows(self, merger: Any, rope: tuple[torch.Tensor, ...], text: int) -> list[tuple[torch.Tensor, ...]]:
        """Per batch element, the rows of the ``(S, D)`` RoPE tables ``rope`` for ``[text; merged image]``.

        A merged token takes its destination's row. The rows depend only on the group's destinations
        and the tables, which every block of a forward shares, so a ToMA group gathers them once per
        step (its first site, or :meth:`carried_rope_rows` on a reuse step) and later sites read them.
        """
        key = _rows_key(_key(merger.layout, merger.idx.shape[0]), rope, text) if isinstance(merger, MergeMap) else None
        rows = self._step_rows.get(key) if key is not None else None
        if rows is None:
            rows = _gather_rows(rope, text, merger.positions())
            if key is not None:
                self._step_rows[key] = rows
        return rows

    def carried_rope_rows(self, rope: tuple[torch.Tensor, ...]) -> None:
        """On a reuse step, gather the merged rows of the tables ``rope`` just made for the image grid
        of this call, from the carried destinations (nothing on a select step: selection has not run)."""
        grid = self.grid
        if self.schedule.selecting or grid is None or rope[0].shape[0] < grid[0] * grid[1]:
            return
        text = rope[0].shape[0] - grid[0] * grid[1]
        for key, idx in self._step_idx.items():
            if isinstance(key, tuple) and key[:2] == grid:
                layout = TileLayout.create(*grid, self.config.tile, self.config.remainder)
                rows_key = _rows_key(key, rope, text)
                if rows_key not in self._step_rows:
                    self._step_rows[rows_key] = _gather_rows(rope, text, merged_positions(layout, idx))


def _merged_level(n: int, latent_hw: tuple[int, int], max_downsample: int) -> tuple[int, int] | None:
    level = unet_level(n, *latent_hw)
    return None if level is None or level[2] > max_downsample else level[:2]


def _same(buf: torch.Tensor | None, fresh: torch.Tensor | None) -> bool:
    if buf is None or fresh is None:
        return buf is None and fresh is None
    return buf.shape == fresh.shape and buf.dtype == fresh.dtype and buf.device == fresh.device


def _rows_key(group: tuple[int, ...], rope: tuple[torch.Tensor, ...], text: int) -> tuple:
    return (group, text, tuple(rope[0].shape), str(rope[0].dtype))


def _gather_rows(rope: tuple[torch.Tensor, ...], text: int, positions: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Rows of every table in ``rope`` per batch element: the text rows, then each merged token's row."""
    with region("rope_rows"):
        index = torch.cat([torch.arange(text, device=positions.device).expand(positions.shape[0], -1), positions + text], 1)
        return [tuple(t[index[b].to(t.device)] for t in rope) for b in range(positions.shape[0])]


def _key(layout: TileLayout, batch: int) -> tuple[int, ...]:
    """A destination group's key: plain ints (traceable) and no token order, so row- and
    tile-major sites share destinations."""
    return (layout.h, layout.w, layout.th, layout.tw, layout.frames, batch)
