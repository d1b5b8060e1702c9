"""Operators one merged site dispatches: the torch path against the fused kernels (issue 27).

Counted with :class:`~toma_export.core.profiling.LaunchCounter` under ``FakeTensorMode``, so real
site sizes cost nothing and no GPU is needed: ``meta`` tensors take the torch path (what CPU runs
and what a GPU ran before the kernels), fake ``cuda`` tensors the fused ops (one dispatch each).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from toma_export.core.merge import MergeMap
from toma_export.core.profiling import LaunchCounter
from toma_export.core.selection import tokens_kept
from toma_export.core.tiles import TileLayout


@dataclass(frozen=True)
class Site:
    """A merged site: token grid, channels, batch, dtype, token order."""

    name: str
    h: int
    w: int
    channels: int
    batch: int = 2
    dtype: torch.dtype = torch.float16
    tile_major: bool = True


#: SDXL-base levels at 1024² (classifier-free guidance: batch 2; blocks run in tile-major order),
#: an SDXL level whose grid 4x4 tiles do not divide, and a Flux.1 image span (row-major, bf16).
SITES = (
    Site("sdxl 64x64x640", 64, 64, 640),
    Site("sdxl 32x32x1280", 32, 32, 1280),
    Site("sdxl 66x62x640 (border)", 66, 62, 640),
    Site("flux 64x64x3072", 64, 64, 3072, batch=1, dtype=torch.bfloat16, tile_major=False),
)

#: Parts of a site, in the order they run.
PARTS = ("weights", "merge", "unmerge", "shared merge", "unmerge + residual")


def site_launches(site: Site, device: str, ratio: float = 0.5, temperature: float = 1000.0) -> dict[str, Counter[str]]:
    """Operators per part of one site on ``device`` (``meta``: torch path; ``cuda``: fused ops).

    ``weights`` builds the merge map, ``merge`` merges the features it was built from, ``unmerge``
    maps the sub-layer's output back; ``shared merge`` merges other features with these weights
    (``share_weights``), ``unmerge + residual`` adds the block's residual to the unmerged output.
    """
    layout = TileLayout.create(site.h, site.w, (4, 4), tile_major=site.tile_major)
    k = tokens_kept(layout.tile_size, ratio)
    out: dict[str, Counter[str]] = {}

    def count(part: str, fn: Callable[[], Any]) -> Any:
        with LaunchCounter() as counter:
            result = fn()
        out[part] = counter.counts
        return result

    with FakeTensorMode():
        x = torch.empty(site.batch, layout.num_tokens, site.channels, dtype=site.dtype, device=device)
        other = torch.empty_like(x)
        idx = torch.zeros(site.batch, layout.num_tiles, k, dtype=torch.long, device=device)
        mm = count("weights", lambda: MergeMap.build(layout, x, idx, temperature))
        y = count("merge", lambda: mm.merge(x))
        count("unmerge", lambda: mm.unmerge(y))
        count("shared merge", lambda: mm.merge(other))
        count("unmerge + residual", lambda: mm.unmerge(y, x))
    return out


def table(sites: tuple[Site, ...] = SITES) -> str:
    """Markdown table: operators per part, torch path / fused kernels, per site."""
    lines = [
        "| site | " + " | ".join(PARTS) + " | site (weights + merge + unmerge) |",
        "|---|" + "---:|" * (len(PARTS) + 1),
    ]
    for site in sites:
        torch_path, kernels = site_launches(site, "meta"), site_launches(site, "cuda")
        cells = [f"{sum(torch_path[p].values())} / {sum(kernels[p].values())}" for p in PARTS]
        per_site = [sum(sum(c[p].values()) for p in PARTS[:3]) for c in (torch_path, kernels)]
        lines.append(f"| {site.name} | " + " | ".join(cells) + f" | {per_site[0]} / {per_site[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
