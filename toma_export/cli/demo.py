"""``toma-export demo``: the main job on the embedded default model (:func:`toma_export.demo.run_demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _run(args: argparse.Namespace) -> int:
    from toma_export.demo import run_demo

    return run_demo(args.model, ratio=args.ratio, steps=args.steps, size=args.size, repeats=args.repeats,
                    seed=args.seed, out=args.out)


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
    p.add_argument("--seed", type=int, default=0, help="seed of the pipelines' latents and prompt embeddings (default: 0)")
    p.add_argument("--out", type=Path, default=Path("engines/out/demo"), help="artifacts and images go here")
    p.set_defaults(handler=_run)
