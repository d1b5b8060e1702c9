"""``toma-export demo``: the main job on the embedded default model, end to end.

Builds a ToMA artifact and an unmerged one on ONNX Runtime, verifies the ToMA artifact against the
eager reference, generates with both through the full pipeline, and prints the speed-up measured
side by side in this run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from toma_export.engines.build import BuildRequest, build_artifact
from toma_export.engines.commands import generate, pipeline_for, save_png, verify_artifact
from toma_export.engines.load import load_artifact


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="build, verify and run ToMA vs unmerged ONNX Runtime engines on an embedded model",
        description="Build a ToMA artifact and an unmerged artifact (ONNX Runtime), verify the ToMA one against "
        "eager ToMA, generate with both through the full pipeline and print the speed-up.",
    )
    p.add_argument("--model", default="sdxl-tiny", help="embedded model name (default: sdxl-tiny)")
    p.add_argument("--ratio", type=float, default=0.5, help="share of image tokens merged away (default: 0.5)")
    p.add_argument("--steps", type=int, default=8, help="denoising steps per timed generation (default: 8)")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (default: 512)")
    p.add_argument("--repeats", type=int, default=3, help="timed generations per engine, interleaved (default: 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("engines/out/demo"), help="artifacts and images go here")
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    flux = args.model.startswith("flux")
    batch = 1 if flux else 2  # SDXL pipelines run guidance as a batch of 2
    folders = {}
    for method in ("toma", "none"):
        print(f"[demo] building {method} artifact for {args.model} at {args.size}x{args.size}")
        folders[method] = build_artifact(
            BuildRequest(args.model, method=method, ratio=args.ratio, height=args.size, width=args.size, batch=batch,
                         out=args.out / f"{args.model}-{method}", force=True)
        )
    print("[demo] verifying the ToMA artifact against eager ToMA")
    ok, rows = verify_artifact(folders["toma"], steps=2)
    for r in rows:
        print(f"  step {r['step']} ({r['variant']}): max |engine - eager ToMA| {r['max_vs_eager']:.2e}, "
              f"max |engine - unmerged model| {r['max_vs_unmerged']:.2e}")
    if not ok:
        print("[demo] FAIL: the engine does not match eager ToMA")
        return 1
    pipes = {m: pipeline_for(load_artifact(f), seed=args.seed) for m, f in folders.items()}
    times: dict[str, list[float]] = {m: [] for m in pipes}
    images: dict[str, Any] = {}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
        generate(pipe, steps=1, seed=args.seed, height=args.size, width=args.size)  # warm-up
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        for method, pipe in pipes.items():
            images[method], seconds = generate(pipe, steps=args.steps, seed=args.seed, height=args.size, width=args.size)
            times[method].append(seconds)
    for method, img in images.items():
        save_png(img[0], args.out / f"{method}.png")
    med = {m: sorted(t)[len(t) // 2] for m, t in times.items()}
    rel = ((images["toma"] - images["none"]).norm() / images["none"].norm()).item()
    print(f"[demo] {args.model} {args.size}x{args.size}, {args.steps} steps, ONNX Runtime (CPU), median of {args.repeats}:")
    print(f"  unmerged {med['none']:.2f} s   ToMA r={args.ratio} {med['toma']:.2f} s   "
          f"speed-up {med['none'] / med['toma']:.2f}x")
    print(f"  image difference ToMA vs unmerged: {rel:.4f} relative; images in {args.out}/")
    return 0
