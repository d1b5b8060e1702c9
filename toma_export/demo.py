"""``toma-export demo``: the main job on the embedded default model, end to end, in one command."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

import toma_export
from toma_export.config import ToMAConfig
from toma_export.models.pipelines import build_pipeline, prompt_embeddings


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="generate with and without ToMA on an embedded model and report speed and fidelity",
        description="Generate with the unmerged model and with ToMA (eager) on the same seed, side by side, "
        "and print the speed-up and the difference of the results.",
    )
    p.add_argument("--model", default="sdxl-tiny", help="embedded model name or local pipeline folder (default: sdxl-tiny)")
    p.add_argument("--ratio", type=float, default=0.5, help="share of image tokens merged away (default: 0.5)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps (default: 4)")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="folder for the two images")
    p.set_defaults(handler=run_demo)


def _generate(pipe: Any, args: argparse.Namespace) -> tuple[torch.Tensor, float]:
    kwargs: dict[str, Any] = dict(
        prompt_embeddings(pipe, seed=args.seed),
        num_inference_steps=args.steps,
        height=args.height,
        width=args.width,
        output_type="pt",
        generator=torch.Generator().manual_seed(args.seed),
    )
    if hasattr(pipe, "transformer"):
        kwargs["guidance_scale"] = 1.0
    start = time.perf_counter()
    with torch.no_grad():
        images = pipe(**kwargs).images
    return images, time.perf_counter() - start


def run_demo(args: argparse.Namespace) -> int:
    from PIL import Image

    config = ToMAConfig(ratio=args.ratio)
    pipe = build_pipeline(args.model, seed=args.seed)
    pipe.set_progress_bar_config(desc="denoising")
    _generate(pipe, args)  # warm-up: first calls pay one-off allocation costs
    base, t_base = _generate(pipe, args)
    toma_export.apply(pipe, config)
    merged, t_toma = _generate(pipe, args)
    toma_export.remove(pipe)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, img in (("baseline", base), ("toma", merged)):
        array = (img[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
        Image.fromarray(array).save(args.out / f"{name}.png")
    rel = ((merged - base).norm() / base.norm()).item()
    print(f"model {args.model}  {args.height}x{args.width}  {args.steps} steps  ratio {args.ratio}")
    print(f"baseline {t_base:.2f} s   toma {t_toma:.2f} s   speed-up {t_base / t_toma:.2f}x (eager, this machine)")
    print(f"image relative difference vs baseline: {rel:.4f}   images in {args.out}/")
    return 0
