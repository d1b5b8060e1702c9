"""``toma-export demo``: the engine path on the embedded toy model, then the speed-up at real token counts
(:func:`toma_export.demo.run_demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from toma_export.cli.argtypes import MAX_SEED, int_in, path_arg
from toma_export.input_rules import MAX_STEPS

_out = path_arg("--out", "engines/out/demo")


def _run(args: argparse.Namespace) -> int:
    from toma_export.config import ToMAConfig
    from toma_export.demo import run_demo

    ToMAConfig(ratio=args.ratio)  # the ratio rule, before anything is built

    return run_demo(args.model, ratio=args.ratio, steps=args.steps, size=args.size, repeats=args.repeats,
                    seed=args.seed, out=args.out, speed_backend=args.speed_backend, speed_size=args.speed_size,
                    speed_repeats=args.speed_repeats)


def _side(text: str) -> int:
    """An image side in pixels for the timed block: a positive multiple of 16 (one token per 16 px), <= 4096."""
    value = int_in(16, 4097, "--speed-size", "1024")(text)
    if value % 16:
        raise argparse.ArgumentTypeError(f"--speed-size {value} is not a multiple of 16 (one block token per 16 px); "
                                         "use e.g. 1024")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="build, verify and run ToMA vs unmerged engines on a toy model, then time the speed-up at real size",
        description="Part 1: build a ToMA artifact and an unmerged artifact of an embedded toy model (ONNX Runtime), "
        "verify the ToMA one against eager ToMA and generate with both through the full pipeline. Part 2: time ToMA "
        "against unmerged and the ideal on SDXL's highest-resolution transformer block at real width and token "
        "count (1024x1024: 4096 tokens), interleaved, on one backend, and print the speed-up.",
    )
    p.add_argument("--model", default="sdxl-tiny", help="embedded model of part 1 (default: sdxl-tiny)")
    p.add_argument("--ratio", type=float, default=0.5, help="share of image tokens merged away (default: 0.5)")
    p.add_argument("--steps", type=int_in(1, MAX_STEPS + 1, "--steps", "--steps 8"), default=8,
                   help=f"denoising steps per timed generation, 1 to {MAX_STEPS} (default: 8)")
    p.add_argument("--size", type=int_in(1, 4097, "--size", "--size 512"), default=512,
                   help="image side in pixels, a multiple of 8 (16 for Flux), at most 4096 (default: 512)")
    p.add_argument("--repeats", type=int_in(1, 101, "--repeats", "--repeats 3"), default=3,
                   help="timed generations per engine, interleaved, 1 to 100 (default: 3)")
    p.add_argument("--seed", type=int_in(0, MAX_SEED, "--seed", "--seed 0"), default=0,
                   help="seed of the pipelines' latents and prompt embeddings, in [0, 2**63) (default: 0)")
    p.add_argument("--out", type=lambda t: Path(_out(t)), default=Path("engines/out/demo"),
                   help="artifacts and images go here")
    p.add_argument("--speed-backend", default="onnxruntime",
                   help="backend of part 2, a bench backend (default: onnxruntime; eager, inductor, ...)")
    p.add_argument("--speed-size", type=_side, default=1024,
                   help="image side in pixels of part 2's block (default: 1024, SDXL's 4096 tokens at that level)")
    p.add_argument("--speed-repeats", type=int_in(0, 1001, "--speed-repeats", "10"), default=10,
                   help="interleaved timed rounds of part 2 (default: 10; 0 skips part 2)")
    p.set_defaults(handler=_run)
