#!/usr/bin/env python3
"""Host time per forward: the SDXL-base UNet at full depth and tiny width on CPU, rows interleaved.

At tiny width (SDXL-tiny's channels, SDXL-base's blocks and transformer layers) and a small image
every op costs about what dispatching it costs, so a forward's time is the host time a GPU run
pays to issue its kernels; merged and unmerged rows then compare the host work of the merge
machinery. Each round runs every row once in a rotating order (``bench.timing``); a ToMA row is a
generation of ``--steps`` forwards (a select step, then reuse steps) timed per forward.

    python scripts/host_time.py [--size 128] [--rounds 7] [--steps 5] [--rows unmerged,fast,fast[weights=period]]

``--meta`` times the real SDXL-base UNet (fp16, 1024² by default) on the ``meta`` device instead: no op
computes anything there, so a forward's time is host time alone (Python, hooks and ATen dispatch), and
the ToMA rows take the fused-kernel ops as CUDA tensors do (``--torch-path`` keeps the torch path).
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
    ap.add_argument("--size", type=int, default=None,
                    help="image side in pixels (default 128: 8x8 and 4x4 merged grids; 1024 with --meta)")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds (default 7; one more untimed first)")
    ap.add_argument("--steps", type=int, default=5, help="forwards per ToMA generation (default 5 = one period)")
    ap.add_argument("--rows", default="unmerged,fast", help="rows, comma-separated, of " + ", ".join(ROWS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: host time, not parallel ops)")
    ap.add_argument("--meta", action="store_true",
                    help="the real SDXL-base UNet on the meta device (host time only; --size default 1024)")
    ap.add_argument("--torch-path", action="store_true", help="with --meta: the torch merge path, not the fused ops")
    args = ap.parse_args(argv)
    args.size = args.size or (1024 if args.meta else 128)
    if args.torch_path and not args.meta:
        ap.error("--torch-path applies with --meta (on the CPU the torch path is the only one)")
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        ap.error(f"unknown rows {bad}: choose from {', '.join(ROWS)}")
    if "unmerged" not in rows:
        ap.error(f"rows {rows} lack 'unmerged', the row the others are compared with")
    if args.size % 64 or args.size < 128 or args.rounds < 1 or args.steps < 1:
        ap.error("--size must be a multiple of 64 and >= 128 (4x4 tiles on the 1/4 level); --rounds, --steps >= 1")
    import contextlib
    import statistics

    import torch

    import toma_export
    from toma_export.bench.timing import interleaved_order, time_call
    from toma_export.bench.workloads import shared_clone
    from toma_export.config import ToMAConfig
    from toma_export.models.inputs import example_inputs
    from toma_export.models.registry import load_model
    from toma_export.presets import preset

    from toma_export.bench.kernel_launches import kernel_path_on_meta

    torch.set_num_threads(args.threads)
    if args.meta:
        base = load_model("sdxl", dtype=torch.float16, device="meta")
        path = contextlib.nullcontext if args.torch_path else kernel_path_on_meta
        what = f"SDXL-base UNet on meta (fp16, {'torch path' if args.torch_path else 'fused ops'})"
    else:
        base, path = load_model("sdxl-deep-tiny", seed=0), contextlib.nullcontext
        what = "SDXL-base depth, SDXL-tiny width"
    kw = example_inputs(base, batch=2, height=args.size, width=args.size, seed=0,
                        dtype=next(base.parameters()).dtype, device=next(base.parameters()).device)  # batch 2: guidance
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
        with torch.no_grad(), path():
            return [time_call(lambda: model(**kw)) for _ in range(args.steps)]

    times: dict[str, list[float]] = {r: [] for r in rows}
    for i, order in enumerate(interleaved_order(len(rows), args.rounds + 1)):
        for j in order:
            t = generation(rows[j])
            if i:  # round 0 warms up
                times[rows[j]].extend(t)
    ref = statistics.median(times["unmerged"])
    print(f"{what}, {args.size}x{args.size}, batch 2, {args.threads} thread(s), "
          f"{args.rounds} rounds x {args.steps} forwards, rows interleaved")
    print("| row | median ms per forward | min ms | vs unmerged |")
    print("|---|---:|---:|---:|")
    for r in rows:
        med = statistics.median(times[r])
        print(f"| {r} | {med:.1f} | {min(times[r]):.1f} | {med / ref:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
