"""Which token counts are image grids, read from the model's example inputs (not its class).

A merge site needs the 2-D grid of its image tokens. Two sources cover diffusers' families:

- a 4-D latent input ``(B, C, H, W)`` (UNets, DiT, PixArt, SD3): the grids are ``H x W`` and its
  ceil-halvings (UNet levels: stride-2 convs with padding 1; patch embeddings of size 2, 4, ...
  give the same sides when they divide);
- position ids ``(N, 3)`` / ``(B, N, 3)`` holding a full row-major grid (Flux's ``img_ids``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

from toma_export.eager.flux import image_grid


@dataclass(frozen=True)
class Grid:
    """A token grid and its downsampling factor relative to the input it was derived from."""

    h: int
    w: int
    downsample: int = 1

    @property
    def tokens(self) -> int:
        return self.h * self.w


def token_grids(example_kwargs: dict[str, Any]) -> list[Grid]:
    """Candidate image grids of a model's inputs, highest resolution first, one per token count.

    A latent level whose token count equals the length of a sequence input (text) is dropped:
    such a site could be either, and merging text tokens would be wrong.
    """
    latent: list[Grid] = []
    from_ids: list[Grid] = []
    lengths: set[int] = set()
    for leaf in pytree.tree_leaves(example_kwargs):
        if not isinstance(leaf, torch.Tensor) or not leaf.is_floating_point():
            continue
        if leaf.ndim == 4:
            h, w, f = int(leaf.shape[-2]), int(leaf.shape[-1]), 1
            while h * w > 1:
                latent.append(Grid(h, w, f))
                h, w, f = -(-h // 2), -(-w // 2), f * 2
        elif leaf.ndim in (2, 3) and leaf.shape[-1] == 3 and leaf.shape[-2] > 1:
            hw = image_grid(leaf)
            if hw is not None:
                from_ids.append(Grid(hw[0], hw[1], 1))
        if leaf.ndim == 3:
            lengths.add(int(leaf.shape[1]))
    seen: dict[int, Grid] = {}
    for g in from_ids + [g for g in latent if g.tokens not in lengths]:
        seen.setdefault(g.tokens, g)
    return sorted(seen.values(), key=lambda g: -g.tokens)


def grid_for(grids: list[Grid], tokens: int) -> Grid | None:
    return next((g for g in grids if g.tokens == tokens), None)
