#!/usr/bin/env python
"""Block-level benchmark at SDXL's highest-resolution attention level.

One ``BasicTransformerBlock`` as SDXL builds it (640 channels, 10 heads of 64, 4096 tokens on a
64x64 grid, cross-attention context 77x2048), batch 1. Rows, timed round-robin in one run:
baseline (no merge), ToMA, ToMeSD (the ``tomesd`` package), ToDo at ``--ratio``, the ideal (the
same block on (1 - ratio)·4096 tokens, no merge cost), and ToMA with each choice of merged
sub-layers (attn; attn+mlp; attn+cross+mlp) to pick ``ToMAConfig``'s defaults. ``--cuts`` adds the
overhead cuts, each beside the path before it (``toma_export/bench/variants.py``).

    python scripts/bench_block.py --repeats 10 --json out/bench_block.json --markdown out/bench_block.md
    python scripts/bench_block.py --methods "" --no-sublayers --cuts --backends eager,inductor
    python scripts/bench_block.py --workload sdxl-unet --max-downsample 4 --methods "" --no-sublayers --cuts
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from toma_export.bench.report import markdown_report, write_atomic, write_json
from toma_export.bench.runner import Plan, Variant, run_plan
from toma_export.bench.variants import CUTS, SUBLAYERS, toma_variants
from toma_export.bench.workloads import Options
from toma_export.config import ToMAConfig


def _default_sublayers() -> str:
    d = ToMAConfig()
    return "+".join(n for n, on in (("attn", d.merge_attn), ("cross", d.merge_cross), ("mlp", d.merge_mlp)) if on)


def variants(ratio: float, methods: list[str], sublayers: bool, cuts: bool = False) -> list[Variant]:
    out = [Variant(m, ratio) for m in methods]
    if sublayers:
        out += toma_variants(SUBLAYERS, ratio)
    if cuts:
        out += toma_variants(CUTS, ratio)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="sdxl-block", help="bench workload (default sdxl-block; e.g. sdxl-unet)")
    p.add_argument("--max-downsample", type=int, help="UNet levels merged in every row, e.g. 4 = both SDXL levels")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--methods", default="toma,tomesd,todo", help="comma-separated (none is always run)")
    p.add_argument("--backends", default="eager", help="eager, inductor (comma-separated)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-sublayers", action="store_true", help="skip the merged-sub-layer comparison")
    p.add_argument("--cuts", action="store_true", help="add the overhead cuts, each beside the path before it")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = {} if args.max_downsample is None else {"max_downsample": args.max_downsample}
    plan = Plan(
        workloads=[args.workload],
        backends=[b for b in args.backends.split(",") if b],
        repeats=args.repeats,
        warmup=args.warmup,
        memory=not args.no_memory,
        options=Options(config=config),  # the ideal rows merge the same levels
        config=config,
        variants=variants(args.ratio, [m for m in args.methods.split(",") if m and m != "none"],
                          not args.no_sublayers, args.cuts),
    )
    result = run_plan(plan, progress_bar=not args.quiet)
    result["meta"]["toma_default_sublayers"] = _default_sublayers()
    report = markdown_report(result) + f"\n`toma` rows use ToMAConfig's defaults ({_default_sublayers()}).\n"
    print(report)
    if args.json:
        write_json(args.json, result)
    if args.markdown:
        write_atomic(args.markdown, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
