"""Is a batch of picks what the greedy tie rule allows? Shared by the GPU tests and ``scripts/gpu_truth.py``.

Two implementations of the selection (Triton kernel, PTX launched through the driver, torch ops)
sum fp32 reductions in different orders, so where two gains sit within a few ulps of the tie
band's edge they may legitimately disagree. :func:`check_picks` replays the greedy in float64
under each implementation's own earlier picks and says, per tile, whether every pick is one the
rule allows up to fp32 noise, and whether noise could have changed the answer anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from toma_export.core.selection import COVERAGE_FLOOR, TIE_BAND, cosine_similarity_matrix

#: fp32 noise on a tile's gains (sums of 16 cosine differences of fp32 Gram entries).
GAIN_NOISE = 1e-5


@dataclass(frozen=True)
class PickCheck:
    """Per-tile verdicts for picks ``(T, k)`` against the greedy rule, and how they match a reference."""

    tiles: int
    allowed: int  # tiles where every pick is allowed by the rule (up to GAIN_NOISE)
    equal: int  # tiles whose picks equal the reference's exactly
    unequal_but_ambiguous: int  # unequal tiles where noise could decide a step

    @property
    def ok(self) -> bool:
        """Every tile allowed, and every disagreement with the reference explained by noise."""
        return self.allowed == self.tiles and self.equal + self.unequal_but_ambiguous == self.tiles

    def as_dict(self) -> dict[str, int | bool]:
        return dict(tiles=self.tiles, allowed=self.allowed, equal=self.equal,
                    unequal_but_ambiguous=self.unequal_but_ambiguous, ok=self.ok)


def greedy_verdicts(sim: torch.Tensor, picks: torch.Tensor, tol: float = GAIN_NOISE) -> tuple[torch.Tensor, torch.Tensor]:
    """``(allowed, ambiguous)``, each ``(T,)`` bool, for ``picks (T, k)`` on similarity ``sim (T, S, S)``.

    At each step, under the picks made so far (float64): the pick's gain is within ``tol`` of the
    band ``[top - TIE_BAND, top]`` and no lower index is surely inside it (``allowed``);
    ``ambiguous`` marks tiles where some gain lies within ``tol`` of the band's edge.
    """
    sim = sim.to(torch.float64)
    t, s, _ = sim.shape
    picks = picks.to(torch.long)
    slots = torch.arange(s, device=sim.device)
    best = torch.full((t, s), COVERAGE_FLOOR, dtype=torch.float64, device=sim.device)
    taken = torch.zeros((t, s), dtype=torch.bool, device=sim.device)
    allowed = torch.ones(t, dtype=torch.bool, device=sim.device)
    ambiguous = torch.zeros(t, dtype=torch.bool, device=sim.device)
    for p in range(picks.shape[1]):
        j = picks[:, p]
        gain = (sim - best.unsqueeze(-1)).clamp_min(0).sum(dim=-2).masked_fill(taken, float("-inf"))
        edge = gain.amax(dim=-1, keepdim=True) - TIE_BAND
        g_j = gain.gather(-1, j[:, None])
        lower_surely_in = ((gain >= edge + tol) & (slots < j[:, None])).any(dim=-1)
        allowed &= (g_j >= edge - tol).squeeze(-1) & ~lower_surely_in & ~taken.gather(-1, j[:, None]).squeeze(-1)
        ambiguous |= ((gain - edge).abs() < tol).any(dim=-1)
        taken |= slots == j[:, None]
        best = torch.maximum(best, sim.gather(-1, j[:, None, None].expand(t, s, 1)).squeeze(-1))
    return allowed, ambiguous


def check_picks(features: torch.Tensor, picks: torch.Tensor, reference: torch.Tensor) -> PickCheck:
    """Verdicts for ``picks`` on tiles ``features (..., S, C)`` against ``reference`` picks (same shape)."""
    s, c = features.shape[-2:]
    x = features.reshape(-1, s, c)
    got = picks.reshape(x.shape[0], -1).to(torch.long)
    ref = reference.reshape(x.shape[0], -1).to(torch.long)
    sim = cosine_similarity_matrix(x.float())
    allowed, ambiguous = greedy_verdicts(sim, got)
    equal = (got == ref).all(dim=-1)
    return PickCheck(
        tiles=int(x.shape[0]),
        allowed=int(allowed.sum()),
        equal=int(equal.sum()),
        unequal_but_ambiguous=int((~equal & ambiguous).sum()),
    )


def tile_features(
    batch: int, grid: tuple[int, int], channels: int, tile: tuple[int, int] = (4, 4), *,
    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0,
) -> torch.Tensor:
    """Tile batches ``(batch, T, S, C)`` shaped like a real level's: smooth low-rank image-like
    features plus noise, and a few exactly duplicated tokens (exact ties), drawn fresh per seed."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    h, w = grid
    rank = 16
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    freqs = torch.randn(rank, 2, generator=g) * 6
    phase = torch.rand(rank, generator=g) * 6.283
    basis = torch.sin(freqs[:, 0, None, None] * yy + freqs[:, 1, None, None] * xx + phase[:, None, None])
    mix = torch.randn(batch, rank, channels, generator=g) / rank**0.5
    x = torch.einsum("rhw,brc->bhwc", basis, mix) + 0.3 * torch.randn(batch, h, w, channels, generator=g)
    x[:, 1::7, 2::5] = x[:, 0:1, 0:1]  # duplicated tokens: exact ties
    th, tw = tile
    ty, tx = h // th, w // tw
    tiles = x[:, : ty * th, : tx * tw].reshape(batch, ty, th, tx, tw, channels).permute(0, 1, 3, 2, 4, 5)
    return tiles.reshape(batch, ty * tx, th * tw, channels).contiguous().to(device=device, dtype=dtype)
