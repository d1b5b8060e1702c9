#!/usr/bin/env python
"""Image quality of merged generation for users with real weights (and, realistically, a GPU).

Generates the same prompts and seeds with the unmerged pipeline and with each method/ratio, then
reports DINO delta (vs the unmerged images), CLIP score (vs the prompt) and FID (merged vs
unmerged image sets; FD on DINO features when no Inception weights are given). Everything is
loaded from local folders; nothing is downloaded.

    python scripts/eval_quality.py --pipeline /models/sdxl-base --dino /models/dinov2-base \\
        --clip /models/clip-vit-large-patch14 --fid-weights /models/pt_inception-2015-12-05.pth \\
        --prompts prompts.txt --methods toma,tomesd,todo --ratios 0.5 --steps 30 --device cuda \\
        --json out/quality.json

Needs ``transformers`` (DINO, CLIP) and ``torchmetrics`` + ``torch-fidelity`` (FID proper).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch

import toma_export
from toma_export.bench.quality import (
    Extractors, MissingDependency, clip_from_folder, dino_from_folder, inception_from_weights, metrics,
)
from toma_export.bench.report import write_atomic, write_json
from toma_export.config import ToMAConfig

DEFAULT_PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a cup of coffee on a wooden table, morning light",
    "a ginger cat sleeping on a windowsill",
    "a rocket launching at dawn, long exposure",
)

#: ``generate(config or None, prompts, seeds) -> (N, 3, H, W)`` images in [0, 1].
Generate = Callable[[ToMAConfig | None, Sequence[str], Sequence[int]], torch.Tensor]


def pipeline_generator(path: str, device: str, dtype: torch.dtype, steps: int, size: int | None) -> Generate:
    """Generation with a local diffusers pipeline folder; ToMA is applied per config and removed after."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)

    def generate(config: ToMAConfig | None, prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        if config is not None:
            toma_export.apply(pipe, config)
        try:
            images = []
            for prompt, seed in zip(prompts, seeds):
                kw = dict(num_inference_steps=steps, output_type="pt",
                          generator=torch.Generator(device).manual_seed(seed))
                if size:
                    kw.update(height=size, width=size)
                images.append(pipe(prompt, **kw).images[0].float().cpu())
            return torch.stack(images)
        finally:
            if config is not None:
                toma_export.remove(pipe)

    return generate


def build_extractors(args: argparse.Namespace) -> Extractors:
    ex = Extractors()
    if args.dino:
        ex.dino = dino_from_folder(args.dino, args.metric_device)
    if args.clip:
        ex.clip_image, ex.clip_text = clip_from_folder(args.clip, args.metric_device)
    if args.fid_weights:
        ex.fid = inception_from_weights(args.fid_weights, args.metric_device)
    elif ex.dino is not None:
        ex.fid, ex.fid_name = ex.dino, "FD-DINO"
    if ex.dino is None and ex.clip_image is None and ex.fid is None:
        raise MissingDependency("no metric to compute: pass --dino, --clip and/or --fid-weights (local folders/files).")
    return ex


def _csv(s: str) -> list[str]:
    return [t for t in (x.strip() for x in s.split(",")) if t]


def main(argv: list[str] | None = None, generate: Generate | None = None, extractors: Extractors | None = None) -> int:
    """``generate`` / ``extractors`` replace the pipeline and feature networks (tests inject tiny ones)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", help="local diffusers pipeline folder (SDXL or Flux)")
    p.add_argument("--dino", help="local transformers DINO/DINOv2 folder")
    p.add_argument("--clip", help="local transformers CLIP folder")
    p.add_argument("--fid-weights", help="local torch-fidelity Inception weights (.pth); else FD on DINO features")
    p.add_argument("--prompts", type=Path, help="text file, one prompt a line (default: 4 built-in prompts)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per prompt")
    p.add_argument("--methods", default="toma,tomesd,todo")
    p.add_argument("--ratios", default="0.5")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--size", type=int, help="image side in pixels (default: the pipeline's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--metric-device", default="cpu")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    try:
        if generate is None:
            if not args.pipeline:
                p.error("--pipeline (a local diffusers folder) is required")
            generate = pipeline_generator(args.pipeline, args.device, getattr(torch, args.dtype), args.steps, args.size)
        ex = extractors or build_extractors(args)
    except MissingDependency as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    prompts = [l.strip() for l in args.prompts.read_text().splitlines() if l.strip()] if args.prompts else list(DEFAULT_PROMPTS)
    prompts = [pr for pr in prompts for _ in range(args.seeds)]
    seeds = [i % args.seeds for i in range(len(prompts))]
    reference = generate(None, prompts, seeds)
    rows = [dict(method="none", ratio=0.0, **metrics(ex, reference, reference, prompts))]
    for ratio in map(float, _csv(args.ratios)):
        for method in _csv(args.methods):
            images = generate(ToMAConfig(ratio=ratio, method=method), prompts, seeds)
            rows.append(dict(method=method, ratio=ratio, **metrics(ex, images, reference, prompts)))
    keys = [k for k in rows[0] if k not in ("method", "ratio")]
    lines = ["| method | ratio | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    lines += [f"| {r['method']} | {r['ratio']:g} | " + " | ".join(f"{r[k]:.4f}" for k in keys) + " |" for r in rows]
    text = f"## Quality ({len(prompts)} images per row; FID/FD vs the unmerged images)\n\n" + "\n".join(lines) + "\n"
    print(text)
    if args.json:
        write_json(args.json, {"meta": dict(pipeline=args.pipeline, steps=args.steps, prompts=prompts), "results": rows})
    if args.markdown:
        write_atomic(args.markdown, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
