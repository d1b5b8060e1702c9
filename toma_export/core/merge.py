"""Merge and unmerge as attention-like linear maps (docs/DESIGN.md, "Method").

With destination features ``D`` and tile tokens ``X``, ``A = softmax(tau * cos(D, X))`` over
destinations, shape ``(k, S)``. Merge is ``M @ X`` with ``M = A / rowsum(A)`` (each destination
a weighted mean of the tokens it absorbs); unmerge is ``A^T @ Y`` (each token a convex mix of
destinations). Both are batched matmuls over batch x tiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from toma_export.core.profiling import region
from toma_export.core.tiles import TileLayout


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` ``(..., k)`` of ``x`` ``(..., S, C)`` -> ``(..., k, C)``."""
    return torch.gather(x, -2, idx.unsqueeze(-1).expand(*idx.shape, x.shape[-1]))


def merge_weights(tiles: torch.Tensor, idx: torch.Tensor, temperature: float) -> torch.Tensor:
    """``A`` ``(B, T, k, S)`` from tile features ``(B, T, S, C)`` and destinations ``(B, T, k)``.

    Softmax in fp32 (``temperature`` x cosine reaches 1e3); returned in the features' dtype.
    """
    xn = F.normalize(tiles.float(), dim=-1)
    logits = temperature * (gather_tokens(xn, idx) @ xn.transpose(-1, -2))
    return logits.softmax(dim=-2).to(tiles.dtype)


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

    def __post_init__(self) -> None:
        if self.merge_matrix is None:
            object.__setattr__(self, "merge_matrix", self.weights / self.weights.sum(dim=-1, keepdim=True))

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
        if self.source is not None and x is self.source[0]:
            tiles, rest = self.source[1], self.source[2]  # the features the map came from: split once
        else:
            tiles, rest = self.layout.split(x)
        assert self.merge_matrix is not None
        merged = (self.merge_matrix.to(x.dtype) @ tiles).flatten(1, 2)
        return torch.cat([merged, rest], dim=1) if rest.shape[1] else merged

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        with region("unmerge"):
            return self._unmerge(y)

    def _unmerge(self, y: torch.Tensor) -> torch.Tensor:
        b, t, k, s = self.weights.shape
        ym, rest = y[:, : t * k], y[:, t * k :]
        tiles = self.weights.to(y.dtype).transpose(-1, -2) @ ym.reshape(b, t, k, y.shape[-1])
        return self.layout.join(tiles, rest)


def merged_positions(layout: TileLayout, idx: torch.Tensor) -> torch.Tensor:
    """Grid index ``(B, T*k + R)`` of each merged token: its destination's, border tokens their own.

    Used to gather RoPE rows: a merged token takes its destination's position (gather, not mean).
    """
    tile_index, rest_index = layout.token_index_on(idx.device)
    b = idx.shape[0]
    dest = torch.gather(tile_index.expand(b, -1, -1), -1, idx).flatten(1)
    return torch.cat([dest, rest_index.expand(b, -1)], dim=1)
