#!/usr/bin/env python3
"""Host time per forward: the SDXL-base UNet at full depth and tiny width on CPU, rows interleaved.

At tiny width (SDXL-tiny's channels, SDXL-base's blocks and transformer layers) and a small image
every op costs about what dispatching it costs, so a forward's time is the host time a GPU run
pays to issue its kernels; merged and unmerged rows then compare the host work of the merge
machinery. Each round runs every row once in a rotating order (``bench.timing``); a ToMA row is a
generation of ``--steps`` forwards (a select step, then reuse steps) timed per forward.

    python scripts/host_time.py [--size 128] [--rounds 7] [--steps 5] [--rows unmerged,fast,fast[weights=period]]
"""

from __future__ import annotations

import argparse
import sys

#: Row name -> (preset, extra config fields); ``unmerged`` has no config.
ROWS = {
    "unmerged": None,
    "fast": ("fast", {}),
    "fast[weights=group]": ("fast", {"weights": "group"}),
    "fast[weights=period]": ("fast", {"weights": "period"}),
    "balanced": ("balanced", {}),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128, help="image side in pixels (latent side / 8; default 128: 8x8 and 4x4 merged grids)")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds (default 7; one more untimed first)")
    ap.add_argument("--steps", type=int, default=5, help="forwards per ToMA generation (default 5 = one period)")
    ap.add_argument("--rows", default="unmerged,fast", help="rows, comma-separated, of " + ", ".join(ROWS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: host time, not parallel ops)")
    args = ap.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        ap.error(f"unknown rows {bad}: choose from {', '.join(ROWS)}")
    if "unmerged" not in rows:
        ap.error(f"rows {rows} lack 'unmerged', the row the others are compared with")
    if args.size % 64 or args.size < 128 or args.rounds < 1 or args.steps < 1:
        ap.error("--size must be a multiple of 64 and >= 128 (4x4 tiles on the 1/4 level); --rounds, --steps >= 1")
    import statistics

    import torch

    import toma_export
    from toma_export.bench.timing import interleaved_order, time_call
    from toma_export.bench.workloads import shared_clone
    from toma_export.config import ToMAConfig
    from toma_export.models.inputs import example_inputs
    from toma_export.models.registry import load_model
    from toma_export.presets import preset

    torch.set_num_threads(args.threads)
    base = load_model("sdxl-deep-tiny", seed=0)
    kw = example_inputs(base, batch=2, height=args.size, width=args.size, seed=0)  # batch 2: guidance
    models = {}
    for name in rows:
        spec = ROWS[name]
        model = shared_clone(base)
        if spec is not None:
            toma_export.apply(model, ToMAConfig(**(preset(spec[0]) | spec[1])))
        models[name] = model

    def generation(name: str) -> list[float]:
        model = models[name]
        if ROWS[name] is not None:
            toma_export.reset(model)
        with torch.no_grad():
            return [time_call(lambda: model(**kw)) for _ in range(args.steps)]

    times: dict[str, list[float]] = {r: [] for r in rows}
    for i, order in enumerate(interleaved_order(len(rows), args.rounds + 1)):
        for j in order:
            t = generation(rows[j])
            if i:  # round 0 warms up
                times[rows[j]].extend(t)
    ref = statistics.median(times["unmerged"])
    print(f"SDXL-base depth, SDXL-tiny width, {args.size}x{args.size}, batch 2, {args.threads} thread(s), "
          f"{args.rounds} rounds x {args.steps} forwards, rows interleaved")
    print("| row | median ms per forward | min ms | vs unmerged |")
    print("|---|---:|---:|---:|")
    for r in rows:
        med = statistics.median(times[r])
        print(f"| {r} | {med:.1f} | {min(times[r]):.1f} | {med / ref:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
