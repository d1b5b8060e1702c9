#!/usr/bin/env python3
"""Launches and syncs per forward, real size, on the meta device (``toma_export.bench.launches``).

Counts the ATen ops of one forward of the SDXL-base UNet at 1024² (``fast``, the default level,
both levels without cross-attention) and of Flux.1 at full depth (19 + 38 blocks, 4096 image +
512 text tokens): kernels, views, CPU-side ops, host-device copies and device reads; unmerged,
a ToMA step that selects and one that reuses; per hooked module and per merge region. Seconds,
no weights (the meta device). Prints markdown tables.

    python scripts/count_launches.py [--targets sdxl,flux] [--dtype float16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="sdxl,flux", help="comma-separated of sdxl, flux")
    ap.add_argument("--configs", help="SDXL configurations (default: fast,default,both-levels)")
    ap.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float16",
                    help="model dtype (default float16, as on a GPU: the merge weights' fp32 round trip counts)")
    ap.add_argument("--json", type=Path, help="also write the counts here")
    args = ap.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    import torch

    from toma_export.bench.launches import CONFIGS, KINDS, TARGETS, count_target, markdown

    bad = [t for t in targets if t not in TARGETS] + [c for c in (args.configs or "").split(",") if c and c not in CONFIGS]
    if bad:
        ap.error(f"unknown {bad}: targets are {', '.join(TARGETS)}; configurations {', '.join(CONFIGS)}")
    configs = args.configs.split(",") if args.configs else None
    counted = [c for t in targets for c in count_target(t, configs if t == "sdxl" else None, getattr(torch, args.dtype))]
    print(markdown(counted))
    if args.json:
        args.json.write_text(json.dumps([dict(target=c.target, describe=c.describe, config=c.config,
                                              rows={r.label: {k: r.tally.total(k) for k in KINDS} for r in c.rows})
                                         for c in counted], indent=1))


if __name__ == "__main__":
    main()
