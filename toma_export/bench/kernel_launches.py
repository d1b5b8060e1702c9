"""Operators the merge machinery dispatches: the torch path against the fused kernels (issue 27).

Counted with :class:`~toma_export.core.profiling.OpCounter`, so real sizes cost nothing and no
GPU is needed. Per site (:func:`site_launches`, under ``FakeTensorMode``): ``meta`` tensors take the
torch path (what CPU runs and what a GPU ran before the kernels), fake ``cuda`` tensors the fused
ops (one dispatch each). Per forward (:func:`forward_launches`): a bench workload built on ``meta``,
unmerged and with eager ToMA, the kernel path counted by letting ``meta`` tensors take the fused ops
(:func:`kernel_path_on_meta`; their meta kernels are the fake ones, one dispatch each, as on CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import toma_export.core.merge as core_merge
from toma_export.config import ToMAConfig
from toma_export.core.merge import MergeMap
from toma_export.core.profiling import OpCounter
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
    (a later site of a group, ``weights="group"``), ``unmerge + residual`` adds the block's residual to the unmerged output.
    """
    layout = TileLayout.create(site.h, site.w, (4, 4), tile_major=site.tile_major)
    k = tokens_kept(layout.tile_size, ratio)
    out: dict[str, Counter[str]] = {}

    def count(part: str, fn: Callable[[], Any]) -> Any:
        with OpCounter() as counter:
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


@contextlib.contextmanager
def kernel_path_on_meta() -> Iterator[None]:
    """``meta`` tensors take the fused ops (as CUDA tensors do) while open."""
    before = core_merge.KERNEL_DEVICES
    core_merge.KERNEL_DEVICES = before | {"meta"}
    try:
        yield
    finally:
        core_merge.KERNEL_DEVICES = before


def forward_launches(
    workload: str, config: ToMAConfig, model: str | None = None, dtype: torch.dtype = torch.float16
) -> dict[str, int]:
    """Operators per forward of ``workload`` on ``meta`` (batch 1): unmerged, and with eager ToMA on
    the torch path and on the kernel path, each for a selecting step and the reuse step after it."""
    from toma_export.bench.launches import meta_flux_grid
    from toma_export.bench.workloads import Options, get_workload, shared_clone

    built = get_workload(workload).build(Options(model=model, dtype=dtype, device="meta"))
    ids = built.kwargs.get("img_ids")  # Flux: the hooks read the grid from ids, which meta tensors lack
    n = ids.shape[-2] if ids is not None else 0
    side = math.isqrt(n)
    grid = (side, side) if n and side * side == n else None  # the workloads' square images

    def count(module: torch.nn.Module) -> int:
        with torch.no_grad(), OpCounter() as counter:
            module(**built.kwargs)
        return counter.total

    out = {"unmerged": count(built.model)}
    for path, mode in (("torch", contextlib.nullcontext()), ("kernels", kernel_path_on_meta())):
        clone = shared_clone(built.model)
        handle = built.patch(clone, config)
        try:
            with mode, meta_flux_grid(grid, read=False):
                handle.reset()
                out[f"{path} select"] = count(clone)
                out[f"{path} reuse"] = count(clone)
        finally:
            handle.remove()
    return out


#: Per-forward rows: (label, workload, model, preset or None for the default config, other fields).
FORWARDS: tuple[tuple[str, str, str | None, str | None, dict[str, Any]], ...] = (
    ("SDXL-base UNet 1024², fast", "sdxl-unet", None, "fast", {}),
    ("SDXL-base UNet 1024², fast, weights=group", "sdxl-unet", None, "fast", {"weights": "group"}),
    ("SDXL-base UNet 1024², fast, weights=period", "sdxl-unet", None, "fast", {"weights": "period"}),
    ("SDXL-base UNet 1024², balanced", "sdxl-unet", None, "balanced", {}),
    ("Flux.1 full depth 1024², default", "flux", "flux-full", None, {}),
    ("Flux.1 full depth 1024², weights=period", "flux", "flux-full", None, {"weights": "period"}),
)


def forward_table() -> str:
    """Markdown table of :func:`forward_launches` for :data:`FORWARDS` (fp16, batch 1)."""
    from toma_export.presets import PRESETS

    lines = [
        "| forward | unmerged | torch path select / reuse | kernels select / reuse |",
        "|---|---:|---:|---:|",
    ]
    for label, workload, model, preset, extra in FORWARDS:
        config = ToMAConfig(**(dict(PRESETS[preset]) if preset else {}), **extra)
        n = forward_launches(workload, config, model)
        u = n["unmerged"]
        cell = {
            p: f"{n[p + ' select']} / {n[p + ' reuse']} ({n[p + ' select'] / u:.2f}x / {n[p + ' reuse'] / u:.2f}x)"
            for p in ("torch", "kernels")
        }
        lines.append(f"| {label} | {u} | {cell['torch']} | {cell['kernels']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forward", action="store_true", help="also count whole forwards (SDXL UNet, Flux.1; ~1 min)")
    args = parser.parse_args(argv)
    print(table())
    if args.forward:
        print()
        print(forward_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
