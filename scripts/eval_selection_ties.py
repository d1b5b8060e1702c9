#!/usr/bin/env python3
"""How faithful is our selection to plain greedy facility location, on photo-derived features?

Features: each scikit-image photo resized to 512x512, cut into 8x8-pixel patches (a 64x64 token
grid, like SDXL's 1024² level 1), mean-centred and projected to 640 channels by a fixed random
matrix (a linear map keeps the patches' similarity structure). Tiles of 4x4 tokens, k = 8
(ratio 0.5). For every tile the plain greedy (float64, no tie rule but lowest index on exact
equality) is compared with: the project's rule (gains within TIE_BAND of the best tie, lowest
index wins; fp32), and the earlier per-slot handicap rule (gain - 1e-4 * slot; fp32).
Reports the share of tiles whose ordered picks equal the plain greedy's and the objective gap.

    python scripts/eval_selection_ties.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from skimage import data
from skimage.transform import resize

from toma_export.core import selection
from toma_export.core.selection import cosine_similarity_matrix, facility_location_objective
from toma_export.core.tiles import TileLayout

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def photo_features(name: str, channels: int = 640, seed: int = 0) -> torch.Tensor:
    img = getattr(data, name)()
    img = img[..., :3] if img.ndim == 3 else np.stack([img] * 3, -1)
    x = torch.from_numpy(resize(img, (512, 512), anti_aliasing=True)).float().permute(2, 0, 1)[None]
    patches = F.unfold(x, 8, stride=8)[0].T  # (4096, 192)
    patches = patches - patches.mean(0, keepdim=True)
    proj = torch.randn(patches.shape[1], channels, generator=torch.Generator().manual_seed(seed))
    return (patches @ proj)[None]  # (1, 4096, 640)


def greedy(sim: torch.Tensor, k: int, rule: str) -> torch.Tensor:
    """k picks per tile under ``rule``: "plain" (the best gain; float64-equal gains, i.e. within
    1e-9, go to the lowest index), "band" (ours), "handicap" (earlier)."""
    s = sim.shape[-1]
    slots = torch.arange(s)
    best = torch.full(sim.shape[:-1], -1.0, dtype=sim.dtype)
    taken = torch.zeros(sim.shape[:-1], dtype=torch.bool)
    picks = []
    for _ in range(k):
        gain = (sim - best.unsqueeze(-1)).clamp_min(0).sum(-2).masked_fill(taken, -1.0)
        if rule == "handicap":
            pick = (gain - 1e-4 * slots.to(sim.dtype)).argmax(-1)
        elif rule == "band":
            pick = (gain >= gain.amax(-1, keepdim=True) - selection.TIE_BAND).to(sim.dtype).argmax(-1)
        else:
            pick = (gain >= gain.amax(-1, keepdim=True) - 1e-9).to(sim.dtype).argmax(-1)
        hit = slots == pick.unsqueeze(-1)
        taken |= hit
        best = torch.maximum(best, (sim * hit.unsqueeze(-2).to(sim.dtype)).sum(-1))
        picks.append(pick)
    return torch.stack(picks, -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the per-photo rows here")
    args = ap.parse_args()
    layout = TileLayout(64, 64, 4, 4)
    rows = []
    for name in PHOTOS:
        tiles, _ = layout.split(photo_features(name))
        sim64 = cosine_similarity_matrix(tiles.double())
        sim32 = cosine_similarity_matrix(tiles)
        plain = greedy(sim64, 8, "plain")
        f_plain = facility_location_objective(sim64, plain)
        row = {"photo": name, "tiles": int(plain[0].shape[0])}
        for rule in ("band", "handicap"):
            picks = greedy(sim32, 8, rule)
            gap = (f_plain - facility_location_objective(sim64, picks))[0]
            row[rule] = {
                "equal_picks": float((picks == plain).all(-1).float().mean()),
                "mean_objective_gap": float(gap.mean()),
                "worst_objective_gap": float(gap.max()),
            }
        assert torch.equal(selection.facility_location(tiles, 8), greedy(sim32, 8, "band"))  # the library's rule
        rows.append(row)
        print(f"{name:>22}: band equal {row['band']['equal_picks']:.1%} gap {row['band']['mean_objective_gap']:.1e} "
              f"(worst {row['band']['worst_objective_gap']:.1e}) | handicap equal {row['handicap']['equal_picks']:.1%} "
              f"gap {row['handicap']['mean_objective_gap']:.1e} (worst {row['handicap']['worst_objective_gap']:.1e})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tie_band": selection.TIE_BAND, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
