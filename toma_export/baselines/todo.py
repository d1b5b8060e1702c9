"""ToDo (token downsampling): keys/values from a nearest-neighbour-downsampled token grid.

Queries keep every token, so there is no unmerge. Nearest-neighbour sampling picks real tokens,
so the downsampling is a gather of fixed grid indices (which also gives their RoPE positions).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F


@lru_cache(maxsize=64)
def _kept_index(h: int, w: int, ratio: float) -> torch.Tensor:
    # Built outside inference mode: a cached inference tensor could not be used by later tracing.
    with torch.inference_mode(False):
        scale = math.sqrt(1.0 - ratio)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        grid = torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w)
        return F.interpolate(grid, size=size, mode="nearest-exact").flatten().long()


def downsample_index(h: int, w: int, ratio: float, device: torch.device | None = None) -> torch.Tensor:
    """Grid indices of the tokens kept for keys/values when ``ratio`` of them are dropped."""
    # Traced code builds the (constant) index itself: dynamo does not trace through lru_cache.
    kept = _kept_index.__wrapped__ if torch.compiler.is_compiling() else _kept_index
    return kept(h, w, float(ratio)).to(device)


def downsample_tokens(x: torch.Tensor, h: int, w: int, ratio: float) -> torch.Tensor:
    """``(B, h*w, C)`` -> ``(B, ~(1-ratio)*h*w, C)`` nearest-neighbour downsampled tokens."""
    return x[:, downsample_index(h, w, ratio, x.device)]
