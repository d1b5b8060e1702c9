"""Destination selection: greedy facility location inside each tile (docs/DESIGN.md, "Method").

The objective over a tile with cosine similarities ``S`` is
``F(A) = sum_i max(-1, max_{j in A} S[i, j]) + n``: shifting by the cosine lower bound makes
``F`` non-negative, monotone and submodular with ``F({}) = 0``, so greedy is within
``1 - 1/e`` of the optimum, and the first pick maximises ``sum_i S[i, j]``.

The loop runs a fixed ``k`` times over all tiles at once: no sort, no scatter, no host sync;
picks are one-hot masks, so the unrolled form exports to standard ONNX ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Lower bound of cosine similarity; the initial "best coverage" of every token.
COVERAGE_FLOOR = -1.0
#: Gain handicap per slot index. Exact ties are common (two tokens that cover only each other
#: have equal gains), and fp32 rounding, which differs between batch sizes, BLAS kernels, ONNX
#: Runtime and TensorRT, would decide them at random. Subtracting ``TIE_STEP * j`` makes every
#: backend resolve them to the lower index; it exceeds fp32 noise on gains (sums of <= 64 terms
#: of size <= 2) and shifts any gain by less than ``64 * TIE_STEP``.
TIE_STEP = 1e-4


def cosine_similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """``(..., S, C)`` -> ``(..., S, S)`` pairwise cosine similarity, computed in fp32."""
    xn = F.normalize(x.float(), dim=-1)
    return xn @ xn.transpose(-1, -2)


def facility_location_from_similarity(sim: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy facility location on similarity ``(..., S, S)``: ``k`` distinct indices ``(..., k)``.

    ``sim[..., i, j]`` is how well candidate ``j`` covers token ``i``. Gains within
    ``TIE_STEP`` per slot of each other go to the lower index (see :data:`TIE_STEP`).
    """
    s = sim.shape[-1]
    if not 1 <= k <= s:
        raise ValueError(f"k={k} must be in [1, {s}] (tokens per tile)")
    slots = torch.arange(s, device=sim.device)
    handicap = TIE_STEP * slots.to(sim.dtype)
    best = torch.full(sim.shape[:-1], COVERAGE_FLOOR, dtype=sim.dtype, device=sim.device)
    taken = torch.zeros(sim.shape[:-1], dtype=torch.bool, device=sim.device)
    picks = []
    for _ in range(k):
        gain = (sim - best.unsqueeze(-1)).clamp_min(0).sum(dim=-2)
        # Gains are >= 0, so -1 keeps taken slots out even when every gain is 0 (identical tokens).
        gain = gain.masked_fill(taken, -1.0) - handicap
        pick = gain.argmax(dim=-1)
        hit = slots == pick.unsqueeze(-1)
        taken = taken | hit
        covered = (sim * hit.unsqueeze(-2).to(sim.dtype)).sum(dim=-1)
        best = torch.maximum(best, covered)
        picks.append(pick)
    return torch.stack(picks, dim=-1)


def facility_location(features: torch.Tensor, k: int) -> torch.Tensor:
    """Destinations for tiles of features ``(..., S, C)``: ``(..., k)`` int64 tile-local indices."""
    return facility_location_from_similarity(cosine_similarity_matrix(features), k)


def facility_location_objective(sim: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``F(A)`` for the chosen ``idx`` ``(..., k)`` under ``sim`` ``(..., S, S)`` (the shifted objective)."""
    cols = torch.gather(sim, -1, idx.unsqueeze(-2).expand(*sim.shape[:-1], idx.shape[-1]))
    return (cols.max(dim=-1).values - COVERAGE_FLOOR).sum(dim=-1)


def tokens_kept(tile_size: int, ratio: float) -> int:
    """Destinations per tile for a merge ``ratio`` (share of tile tokens removed); at least one."""
    return max(1, tile_size - int(round(tile_size * ratio)))
