#!/usr/bin/env python3
"""What torch.compile makes of an applied model over a run of steps (``toma_export.bench.compile_probe``).

Compiles each target unmerged and with ToMA, whole-model (``torch.compile``) and regional (diffusers'
``compile_repeated_blocks``), with a backend that records every graph and runs it as traced, on the
meta device (no compiler, no weights): graphs over ``--steps`` calls of one generation, nodes, CPU
nodes and CPU inputs, mutated inputs, graphs that run selection, and dynamo's recompile reasons.

    python scripts/compile_probe.py [--targets sdxl-tiny,flux] [--modes whole,regional] [--steps 6]

``sdxl`` (the real-size UNet, minutes per row on 2 cores) is opt-in.
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="sdxl-tiny,flux", help="comma-separated of sdxl-tiny, flux, sdxl")
    ap.add_argument("--modes", default="whole,regional", help="comma-separated of whole, regional")
    ap.add_argument("--steps", type=int, default=6, help="calls of one generation (default 6)")
    args = ap.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.steps < 1:
        ap.error(f"--steps {args.steps}: give at least 1 step")
    from toma_export.bench.compile_probe import TARGETS, markdown, probe_target

    bad = [t for t in targets if t not in TARGETS] + [m for m in modes if m not in ("whole", "regional")]
    if bad:
        ap.error(f"unknown {bad}: targets are {', '.join(TARGETS)}; modes whole, regional")
    print(markdown([probe_target(t, m == "regional", args.steps) for t in targets for m in modes]))


if __name__ == "__main__":
    main()
