"""Merge and unmerge as attention-like linear maps (docs/DESIGN.md, "Method").

With destination features ``D`` and tile tokens ``X``, ``A = softmax(tau * cos(D, X))`` over
destinations, shape ``(k, S)``. Merge is ``M @ X`` with ``M = A / rowsum(A)`` (each destination
a weighted mean of the tokens it absorbs); unmerge is ``A^T @ Y`` (each token a convex mix of
destinations). Both are batched matmuls over batch x tiles.

This torch code is the reference and the path on every device but CUDA. On CUDA tensors
:class:`MergeMap` calls the fused ops instead (``toma::fused_merge``, ``toma::tile_merge``,
``toma::tile_unmerge`` in ``toma_export.ops``: one Triton launch each, ``plugins/triton_merge.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from toma_export.core.profiling import region
from toma_export.core.tiles import TileLayout


def merge_weights(tiles: torch.Tensor, idx: torch.Tensor, temperature: float) -> torch.Tensor:
    """``A`` ``(B, T, k, S)`` from tile features ``(B, T, S, C)`` and destinations ``(B, T, k)``.

    Softmax in fp32 (``temperature`` x cosine reaches 1e3); returned in the features' dtype. Batch and
    tiles fold into one ``bmm`` batch: a 4-d ``matmul`` adds expands and reshapes at every call,
    each a host cost where an op costs its dispatch.
    """
    b, t, s, c = tiles.shape
    k = idx.shape[-1]
    # normalised before folding: the fresh tensor folds as a view even where the tiles are a strided slice
    xn = F.normalize(tiles if tiles.dtype == torch.float32 else tiles.float(), dim=-1).reshape(b * t, s, c)
    dest = torch.gather(xn, 1, idx.reshape(b * t, k, 1).expand(b * t, k, c))
    a = torch.bmm(dest, xn.transpose(1, 2)).mul(temperature).softmax(dim=1)
    return (a if a.dtype == tiles.dtype else a.to(tiles.dtype)).view(b, t, k, s)


#: Device types whose tensors merge through the fused ops (``bench.kernel_launches`` adds ``meta`` to count them).
KERNEL_DEVICES = frozenset({"cuda"})


def uses_kernels(t: torch.Tensor) -> bool:
    """Whether tensors on ``t``'s device merge through the fused kernels (CUDA) or this module's torch code."""
    return t.device.type in KERNEL_DEVICES


def _ops() -> Any:
    import toma_export.ops  # noqa: F401  registers the toma:: ops (it imports this module, so not at the top)

    return torch.ops.toma


def _layout_args(layout: TileLayout) -> tuple[int, int, int, int, int, bool]:
    return (layout.h, layout.w, layout.th, layout.tw, layout.frames, layout.tile_major)


def merge_tiles(merge_matrix: torch.Tensor, tiles: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """Merged tokens ``(B, T*k + R, C)``: ``M @ X`` per tile (tile-major), then the border ``rest``."""
    b, t, k, s = merge_matrix.shape
    return _merge_folded(merge_matrix.reshape(b * t, k, s), tiles, rest)


def unmerge_tiles(layout: TileLayout, weights: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Tokens ``(B, N, C)`` from merged ``y``: ``A^T @ Y`` per tile, the border copied back."""
    b, t, k, s = weights.shape
    return _unmerge_folded(layout, weights.reshape(b * t, k, s).transpose(1, 2), y)


def _merge_folded(m3: torch.Tensor, tiles: torch.Tensor, rest: torch.Tensor | None) -> torch.Tensor:
    """``M`` folded to ``(B*T, k, S)`` times ``tiles`` (``(B, T, S, C)``, or tile-major ``(B, T*S, C)``)."""
    b, c = tiles.shape[0], tiles.shape[-1]
    merged = _bmm_tiles(m3, tiles.reshape(m3.shape[0], m3.shape[2], c)).view(b, -1, c)
    return torch.cat([merged, rest], dim=1) if rest is not None and rest.shape[1] else merged


def _unmerge_folded(layout: TileLayout, at3: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``A^T`` folded to ``(B*T, S, k)`` times the merged tiles of ``y``, joined back with the border."""
    b, c = y.shape[0], y.shape[-1]
    s, k = at3.shape[1], at3.shape[2]
    cut = layout.num_tiles * k
    ym, rest = (y[:, :cut], y[:, cut:]) if layout.num_rest else (y, None)
    tiles = _bmm_tiles(at3, ym.reshape(at3.shape[0], k, c))
    if layout.tile_major and rest is None:
        return tiles.view(b, -1, c)  # tile-major tokens are the tiles, back to back
    return layout.join(tiles.view(b, -1, s, c), rest)


def _bmm_tiles(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``a @ x`` over the folded batch x tiles, in ``x``'s dtype (the weights may be kept in another)."""
    return torch.bmm(a if a.dtype == x.dtype else a.to(x.dtype), x)


@dataclass(frozen=True)
class MergeMap:
    """One site's merge/unmerge for a fixed layout: ``N`` tokens <-> ``T*k + R`` merged tokens.

    Merged order: tile destinations (tile-major), then the unmerged border tokens.
    """

    layout: TileLayout
    idx: torch.Tensor  # destinations, (B, T, k) tile-local
    weights: torch.Tensor  # A, (B, T, k, S): unmerge map (columns sum to 1)
    merge_matrix: torch.Tensor | None = field(default=None, repr=False)  # M = A / rowsum(A), derived
    # (features, their tiles, their border) when built from features: merging them skips a re-split
    source: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = field(default=None, compare=False, repr=False)
    # (features, their merged tokens) when the fused kernel built the map: merging them is free
    fused: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, compare=False, repr=False)
    #: torch path: ``(M, A^T)`` folded to ``(B*T, k, S)`` and ``(B*T, S, k)``, the operands of one ``bmm`` each
    _folded: tuple[torch.Tensor, torch.Tensor] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if uses_kernels(self.weights):
            return
        b, t, k, s = self.weights.shape
        if self.merge_matrix is None:
            object.__setattr__(self, "merge_matrix", self.weights / self.weights.sum(dim=-1, keepdim=True))
        assert self.merge_matrix is not None
        # M and A^T folded to (B*T, ., .) once per map: a map shared by a group's sites folds once a step
        object.__setattr__(self, "_folded", (self.merge_matrix.reshape(b * t, k, s),
                                             self.weights.reshape(b * t, k, s).transpose(1, 2)))

    @classmethod
    def build(
        cls,
        layout: TileLayout,
        features: torch.Tensor,
        idx: torch.Tensor,
        temperature: float,
        parts: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> MergeMap:
        """Weights from ``features`` ``(B, N, C)`` and shared destinations ``idx``; ``parts`` is
        ``layout.split(features)`` when the caller already split them (for selection)."""
        with region("weights"):
            if uses_kernels(features):  # weights and merged tokens in one launch, read from the grid
                merged, weights = _ops().fused_merge(features, idx, *_layout_args(layout), float(temperature))
                return cls(layout, idx, weights, fused=(features, merged))
            tiles, rest = parts if parts is not None else layout.split(features)
            return cls(layout, idx, merge_weights(tiles, idx, temperature), source=(features, tiles, rest))

    def on(self, layout: TileLayout) -> MergeMap:
        """The same map over ``layout`` (another token order of the same grid and tiles)."""
        return self if layout == self.layout else MergeMap(layout, self.idx, self.weights, self.merge_matrix)

    def positions(self) -> torch.Tensor:
        """Grid index of each merged token ``(B, M)`` (see :func:`merged_positions`)."""
        with region("positions"):
            return merged_positions(self.layout, self.idx)

    @property
    def num_merged(self) -> int:
        return self.layout.merged_count(self.weights.shape[2])

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        with region("merge"):
            return self._merge(x)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None and x is self.fused[0]:
            return self.fused[1]
        if uses_kernels(x):
            return _ops().tile_merge(x, self.weights, *_layout_args(self.layout))
        layout = self.layout
        if self.source is not None and x is self.source[0]:
            tiles, rest = self.source[1], self.source[2]  # the features the map came from: split once
        elif layout.tile_major and not layout.num_rest:
            tiles, rest = x, None  # tile-major tokens are the tiles, back to back
        else:
            tiles, rest = layout.split(x)
        return _merge_folded(self._folded[0], tiles, rest)

    def unmerge(self, y: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens ``(B, N, C)`` from merged ``y``; ``residual + unmerge(y)`` when given (fused on CUDA)."""
        with region("unmerge"):
            if uses_kernels(y):
                return _ops().tile_unmerge(y, self.weights, residual, *_layout_args(self.layout))
            out = _unmerge_folded(self.layout, self._folded[1], y)
            return out if residual is None else out + residual


def merged_positions(layout: TileLayout, idx: torch.Tensor) -> torch.Tensor:
    """Grid index ``(B, T*k + R)`` of each merged token: its destination's, border tokens their own.

    Used to gather RoPE rows: a merged token takes its destination's position (gather, not mean).
    """
    tile_index, rest_index = layout.token_index_on(idx.device)
    b = idx.shape[0]
    dest = torch.gather(tile_index.expand(b, -1, -1), -1, idx).flatten(1)
    return torch.cat([dest, rest_index.expand(b, -1)], dim=1) if layout.num_rest else dest
