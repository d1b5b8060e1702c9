#!/usr/bin/env python
"""Fidelity of each method/ratio against the unmerged model on real photos (scikit-image).

Images are encoded at latent scale by a fixed stand-in for the VAE (avg-pool by 8 + a fixed
3->C map; see toma_export/bench/fidelity.py), noised at several timesteps, and fed to the model
with and without merging; relative L2 error and cosine similarity of the outputs are reported.
With ``--bench BENCH.json`` the speed-ups of that benchmark are joined in and a speed-fidelity
frontier is plotted.

    python scripts/eval_fidelity.py --model sdxl --size 512 --json out/fidelity.json \\
        --bench out/bench_sdxl_unet.json --frontier out/plots/frontier.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from toma_export.bench.fidelity import DEFAULT_IMAGES, DEFAULT_TIMESTEPS, evaluate, frontier_points, samples
from toma_export.bench.report import load_json, write_atomic, write_json
from toma_export.bench.variants import CUTS, SUBLAYERS
from toma_export.config import ToMAConfig
from toma_export.models.registry import load_model


def _csv(s: str) -> list[str]:
    return [t for t in (x.strip() for x in s.split(",")) if t]


def configs(methods: list[str], ratios: list[float], sublayers: bool,
            tile: tuple[int, int] = (4, 4), cuts: bool = False,
            max_downsample: int | None = None) -> list[tuple[str, ToMAConfig]]:
    common = dict(tile=tile, max_downsample=max_downsample)
    out = [(m, ToMAConfig(ratio=r, method=m, **common)) for r in ratios for m in methods if m != "none"]
    named = {**(SUBLAYERS if sublayers else {}), **(CUTS if cuts else {})}
    out += [(n, ToMAConfig(ratio=r, method="toma", **common, **c)) for r in ratios for n, c in named.items()]
    return out


def weight_configs(weights: list[str], ratios: list[float], preset: str | None, tile: tuple[int, int],
                   max_downsample: int | None) -> list[tuple[str, ToMAConfig]]:
    """``name[weights=W]`` rows: ``preset`` (or the defaults) with each merge-weight sharing ``W``."""
    from toma_export.presets import preset as preset_fields

    base = dict(tile=tile, max_downsample=max_downsample) | (preset_fields(preset) if preset else {})
    if preset:
        ratios = [base.pop("ratio")]
    name = preset or "toma"
    return [(f"{name}[weights={w}]", ToMAConfig(**(base | dict(ratio=r, weights=w)))) for r in ratios for w in weights]


def _tile(s: str) -> tuple[int, int]:
    try:
        r, c = (int(x) for x in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tile {s!r}: give rows x cols, e.g. 4x4") from None
    return r, c


def table(rows: list[dict]) -> str:
    lines = ["| variant | ratio | rel. error (mean ± std) | max | cosine (mean) | min | speed-up |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("refused"):
            lines.append(f"| {r['variant']} | {r['ratio']:g} | refused: {r['refused']} | | | | |")
            continue
        sp = f"{r['speedup']:.2f}x" if r.get("speedup") else "–"
        lines.append(f"| {r['variant']} | {r['ratio']:g} | {r['rel_error']:.4f} ± {r['rel_error_std']:.4f} | "
                     f"{r['rel_error_max']:.4f} | {r['cosine']:.5f} | {r['cosine_min']:.5f} | {sp} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sdxl", help="embedded model name or local diffusers folder")
    p.add_argument("--size", type=int, default=512, help="square image side in pixels (or --height/--width)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--frames", type=int, default=1, help="pixel frames of the clip (video models; a still clip)")
    p.add_argument("--tile", type=_tile, default=(4, 4), help="ToMA tile, rows x cols (default 4x4)")
    p.add_argument("--images", default=",".join(DEFAULT_IMAGES), help="skimage.data photo names")
    p.add_argument("--timesteps", default=",".join(map(str, DEFAULT_TIMESTEPS)), help="of 1000")
    p.add_argument("--methods", default="toma,tomesd,todo,catome")
    p.add_argument("--ratios", default="0.25,0.5,0.75")
    p.add_argument("--sublayers", action="store_true", help="also ToMA with attn / attn+mlp / attn+cross+mlp")
    p.add_argument("--cuts", action="store_true", help="also ToMA with each overhead cut (bench/variants.py)")
    p.add_argument("--max-downsample", type=int, help="UNet levels merged, e.g. 4 = both SDXL attention levels")
    p.add_argument("--weights", help="also ToMA with each merge-weight sharing of this list (site,group,period), "
                   "on --preset's fields (default: the ToMA defaults) at each ratio")
    p.add_argument("--preset", help="the base of the --weights rows (quality, balanced, fast; its ratio wins)")
    p.add_argument("--trajectory", action="store_true", help="one generation per image: its timesteps run as "
                   "consecutive steps (reuse steps between selections), not each a fresh generation")
    p.add_argument("--bench", type=Path, help="a bench JSON whose speed-ups are joined in (frontier)")
    p.add_argument("--bench-workload", help="which workload of --bench (default: its first)")
    p.add_argument("--bench-backend", default="eager")
    p.add_argument("--frontier", type=Path, help="write the speed-fidelity frontier PNG here (needs --bench)")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--threads", type=int)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from tqdm.auto import tqdm

    h, w = args.height or args.size, args.width or args.size
    model = load_model(args.model)
    inputs = samples(model, _csv(args.images), [int(t) for t in _csv(args.timesteps)], h, w, frames=args.frames)
    cfgs = configs(_csv(args.methods), [float(r) for r in _csv(args.ratios)], args.sublayers, args.tile, args.cuts,
                   args.max_downsample)
    if args.weights:
        cfgs += weight_configs(_csv(args.weights), [float(r) for r in _csv(args.ratios)], args.preset, args.tile,
                               args.max_downsample)
    with tqdm(total=len(inputs) * (1 + len(cfgs)), disable=args.quiet, desc="fidelity", unit="fwd") as bar:
        rows = evaluate(model, cfgs, inputs, progress=bar.update, trajectory=args.trajectory)
    if args.bench:
        bench = load_json(args.bench)["results"]
        points = frontier_points(rows, bench, args.bench_workload, args.bench_backend)
        speed = {(pt["variant"], pt["ratio"]): pt["speedup"] for pt in points}
        for r in rows:
            r["speedup"] = speed.get((r["variant"], r["ratio"]))
        if args.frontier:
            from toma_export.bench.plots import frontier_plot

            frontier_plot(points, args.frontier, f"{args.model} {h}x{w}: speed vs fidelity")
            print(f"wrote {args.frontier}", file=sys.stderr)
    meta = dict(model=args.model, height=h, width=w, frames=args.frames, tile=list(args.tile), trajectory=args.trajectory,
                max_downsample=args.max_downsample, images=_csv(args.images), timesteps=_csv(args.timesteps),
                encoding="avg-pool 8 + fixed seeded 3->C unit-row projection, standardised; random text embedding",
                bench=str(args.bench) if args.bench else None)
    text = (f"## Fidelity: {args.model} at {h}x{w}, images {', '.join(meta['images'])}, "
            f"timesteps {', '.join(meta['timesteps'])}\n\n" + table(rows) + "\n")
    print(text)
    if args.json:
        write_json(args.json, {"meta": meta, "results": rows})
    if args.markdown:
        write_atomic(args.markdown, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
