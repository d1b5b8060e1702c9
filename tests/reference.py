"""Plain-loop oracles for the vectorised maths (tests only): slow, obvious, float64."""

from __future__ import annotations

import itertools
import math

import torch


def cosine_matrix(x: torch.Tensor) -> list[list[float]]:
    """Cosine similarity of the rows of ``x`` (S, C) as nested Python floats."""
    rows = x.double().tolist()
    norms = [math.sqrt(sum(v * v for v in r)) or 1.0 for r in rows]
    return [[sum(a * b for a, b in zip(ri, rj)) / (ni * nj) for rj, nj in zip(rows, norms)] for ri, ni in zip(rows, norms)]


def greedy_facility_location(sim: list[list[float]], k: int, tie_band: float = 3e-5) -> list[int]:
    """Textbook greedy on F(A) = sum_i max(-1, max_{j in A} sim[i][j]).

    The lowest index whose gain is within ``tie_band`` of the best gain wins (the project's tie
    rule; ``tie_band=0`` is the plain greedy with lowest-index ties).
    """
    n = len(sim)
    best = [-1.0] * n
    chosen: list[int] = []
    for _ in range(k):
        gains = []
        for j in range(n):
            if j in chosen:
                gains.append(-1.0)
                continue
            gains.append(sum(max(0.0, sim[i][j] - best[i]) for i in range(n)))
        top = max(gains)
        j = min(c for c in range(n) if gains[c] >= top - tie_band)
        chosen.append(j)
        best = [max(best[i], sim[i][j]) for i in range(n)]
    return chosen


def objective(sim: list[list[float]], chosen: list[int]) -> float:
    return sum(max(sim[i][j] for j in chosen) + 1.0 for i in range(len(sim)))


def brute_force_optimum(sim: list[list[float]], k: int) -> float:
    return max(objective(sim, list(c)) for c in itertools.combinations(range(len(sim)), k))


def merge_float64(layout, x: torch.Tensor, idx: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Merged tokens and weights ``A`` of ``x`` ``(B, N, C)`` with every step in float64 (the torch path
    keeps its softmax in float32, so it cannot serve as its own exact reference)."""
    tiles, rest = layout.split(x.double())
    xn = tiles / tiles.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    dest = torch.gather(xn, -2, idx.unsqueeze(-1).expand(*idx.shape, xn.shape[-1]))
    a = (temperature * dest @ xn.transpose(-1, -2)).softmax(dim=-2)
    merged = ((a / a.sum(-1, keepdim=True)) @ tiles).flatten(1, 2)
    return torch.cat([merged, rest], dim=1), a
