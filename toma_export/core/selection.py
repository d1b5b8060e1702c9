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

from toma_export.core.profiling import region

#: Lower bound of cosine similarity; the initial "best coverage" of every token.
COVERAGE_FLOOR = -1.0
#: Tie band on gains. Exact ties are common (two tokens that cover only each other have equal
#: gains), and fp32 rounding, which differs between batch sizes, BLAS kernels, ONNX Runtime and
#: TensorRT, would decide them at random. Every gain within ``TIE_BAND`` of the step's best gain
#: counts as tied and the lowest index among them wins, on every backend. The band sits above fp32
#: noise on gains (measured by scripts/eval_selection_ties.py's features: similarities differ by
#: <= 6e-7 between summation orders, 4x4-tile gains by <= 6e-6) and decides nothing else: a pick
#: differs from the plain greedy's only when two gains are within ``TIE_BAND`` of each other. The
#: earlier rule, a per-slot handicap of 1e-4 * slot, overrode genuine preferences of up to 1.5e-3.
TIE_BAND = 3e-5


def cosine_similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """``(..., S, C)`` -> ``(..., S, S)`` pairwise cosine similarity, computed in fp32."""
    xn = F.normalize(x.float(), dim=-1)
    return xn @ xn.transpose(-1, -2)


def facility_location_from_similarity(sim: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy facility location on similarity ``(..., S, S)``: ``k`` distinct indices ``(..., k)``.

    ``sim[..., i, j]`` is how well candidate ``j`` covers token ``i``. Of the gains within
    ``TIE_BAND`` of the best, the lowest index wins (see :data:`TIE_BAND`).
    """
    s = sim.shape[-1]
    if not 1 <= k <= s:
        raise ValueError(f"k={k} must be in [1, {s}] (tokens per tile)")
    slots = torch.arange(s, device=sim.device)
    best = torch.full(sim.shape[:-1], COVERAGE_FLOOR, dtype=sim.dtype, device=sim.device)
    taken = torch.zeros(sim.shape[:-1], dtype=torch.bool, device=sim.device)
    picks = []
    for _ in range(k):
        gain = (sim - best.unsqueeze(-1)).clamp_min(0).sum(dim=-2)
        # Gains are >= 0, so -1 keeps taken slots out even when every gain is 0 (identical tokens).
        gain = gain.masked_fill(taken, -1.0)
        top = gain.amax(dim=-1, keepdim=True)
        # argmax returns the first maximum: the lowest index inside the band.
        pick = (gain >= top - TIE_BAND).to(sim.dtype).argmax(dim=-1)
        hit = slots == pick.unsqueeze(-1)
        taken = taken | hit
        covered = (sim * hit.unsqueeze(-2).to(sim.dtype)).sum(dim=-1)
        best = torch.maximum(best, covered)
        picks.append(pick)
    return torch.stack(picks, dim=-1)


def facility_location(features: torch.Tensor, k: int) -> torch.Tensor:
    """Destinations for tiles of features ``(..., S, C)``: ``(..., k)`` int64 tile-local indices."""
    with region("select"):
        return facility_location_from_similarity(cosine_similarity_matrix(features), k)


def facility_location_objective(sim: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``F(A)`` for the chosen ``idx`` ``(..., k)`` under ``sim`` ``(..., S, S)`` (the shifted objective)."""
    cols = torch.gather(sim, -1, idx.unsqueeze(-2).expand(*sim.shape[:-1], idx.shape[-1]))
    return (cols.max(dim=-1).values - COVERAGE_FLOOR).sum(dim=-1)


def tokens_kept(tile_size: int, ratio: float) -> int:
    """Destinations per tile for a merge ``ratio`` (share of tile tokens removed); at least one."""
    return max(1, tile_size - int(round(tile_size * ratio)))
