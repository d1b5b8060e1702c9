#!/usr/bin/env python3
"""Where ToMA's overhead goes: time per merge-machinery region in one merged forward.

Runs a bench workload (default ``sdxl-block``) unmerged and with eager ToMA under
``torch.profiler`` with the merge machinery's regions labelled (``toma_export.core.profiling``):
selection, merge weights, merge, unmerge, position gathers (merged tokens' grid index) and RoPE
row gathers. Prints a table: milliseconds per forward and share of the merged forward, plus the
unmerged and merged forward times measured in the same process (CPU time from the profiler).

``--ops N`` also profiles the workload's ideal row (merged sub-layers on (1-r)N tokens, no merge
cost) and lists the N ATen ops whose self CPU time per forward differs most between ToMA and the
ideal: the gap the overhead efficiency measures, op by op, labelled or not.

    python scripts/profile_sites.py --workload sdxl-block --ratio 0.5 [--ops 15] [--variant NAME] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

from toma_export import ToMAConfig
from toma_export.bench.variants import CUTS
from toma_export.bench.workloads import Options, get_workload, shared_clone
from toma_export.core.profiling import regions_enabled

REGIONS = ("select", "weights", "merge", "unmerge", "positions", "rope_rows")


def _profile(call, repeats: int, ops: dict[str, float] | None = None) -> tuple[float, dict[str, float]]:
    """Mean wall ms of ``call`` and mean ms per labelled region, over ``repeats`` profiled calls;
    fills ``ops`` with the mean self CPU ms per ATen op when given."""
    call()  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            with torch.profiler.record_function("toma::forward"):
                call()
    averages = prof.key_averages()
    totals = {e.key: e.cpu_time_total / 1e3 / repeats for e in averages if e.key.startswith("toma::")}
    if ops is not None:
        ops.update({e.key: e.self_cpu_time_total / 1e3 / repeats for e in averages if e.key.startswith("aten::")})
    return totals.get("toma::forward", 0.0), {r: totals.get(f"toma::{r}", 0.0) for r in REGIONS}


def op_gap(toma: dict[str, float], ideal: dict[str, float], top: int) -> list[dict[str, float | str]]:
    """The ``top`` ATen ops by |ToMA − ideal| self time per forward (ms), largest first."""
    keys = set(toma) | set(ideal)
    rows = [dict(op=k, toma_ms=round(toma.get(k, 0.0), 2), ideal_ms=round(ideal.get(k, 0.0), 2),
                 gap_ms=round(toma.get(k, 0.0) - ideal.get(k, 0.0), 2)) for k in keys]
    return sorted(rows, key=lambda r: -abs(float(r["gap_ms"])))[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="sdxl-block", help="bench workload (sdxl-block, flux, flux-tiny, ...)")
    ap.add_argument("--ratio", type=float, default=0.5, help="merge ratio")
    ap.add_argument("--repeats", type=int, default=3, help="profiled forwards per row")
    ap.add_argument("--recompute-every", type=int, default=1, help="1 = selection on every forward (worst case)")
    ap.add_argument("--ops", type=int, default=0, metavar="N",
                    help="also profile the ideal row and list the N ops that differ most from it")
    ap.add_argument("--variant", choices=tuple(CUTS), help="profile this named configuration "
                    "(toma_export/bench/variants.py) instead of ToMAConfig's defaults")
    ap.add_argument("--json", help="write the table here")
    args = ap.parse_args()
    extra = dict(CUTS[args.variant]) if args.variant else {}

    built = get_workload(args.workload).build(Options())
    plain = shared_clone(built.model)
    merged = shared_clone(built.model)
    handle = built.patch(merged, ToMAConfig(ratio=args.ratio, recompute_every=args.recompute_every, **extra))
    toma_ops: dict[str, float] = {}
    ideal_ops: dict[str, float] = {}
    ideal_ms = None
    with torch.inference_mode(), regions_enabled():
        base_ms, _ = _profile(lambda: built.run(plain, built.kwargs), args.repeats)
        toma_ms, regions = _profile(lambda: built.run(merged, built.kwargs), args.repeats, toma_ops)
        handle.remove()
        made = built.ideal(args.ratio) if args.ops else None
        if made is not None:
            ideal_model, ideal_kw = made
            ideal_ms, _ = _profile(lambda: built.run(ideal_model, ideal_kw), args.repeats, ideal_ops)
    rows = [dict(region=r, ms=round(ms, 2), share=round(ms / toma_ms, 4) if toma_ms else None) for r, ms in regions.items()]
    overhead = sum(regions.values())
    print(f"{args.workload} r={args.ratio} recompute_every={args.recompute_every}: unmerged {base_ms:.1f} ms, "
          f"ToMA {toma_ms:.1f} ms ({base_ms / toma_ms:.2f}x); {platform.machine()}, {torch.get_num_threads()} threads")
    print(f"{'region':>10} {'ms/forward':>11} {'share':>7}")
    for r in rows:
        print(f"{r['region']:>10} {r['ms']:>11.2f} {r['share'] * 100 if r['share'] is not None else 0:>6.1f}%")
    print(f"{'total':>10} {overhead:>11.2f} {overhead / toma_ms * 100 if toma_ms else 0:>6.1f}%")
    gap = op_gap(toma_ops, ideal_ops, args.ops) if ideal_ms is not None else []
    if ideal_ms is not None:
        print(f"\nideal {ideal_ms:.1f} ms: ToMA - ideal = {toma_ms - ideal_ms:.1f} ms per forward; by op (self CPU ms):")
        print(f"{'op':>32} {'ToMA':>9} {'ideal':>9} {'gap':>9}")
        for g in gap:
            print(f"{g['op']:>32} {g['toma_ms']:>9.2f} {g['ideal_ms']:>9.2f} {g['gap_ms']:>9.2f}")
    elif args.ops:
        print(f"\n{args.workload} has no ideal row; no op gap")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(workload=args.workload, ratio=args.ratio, recompute_every=args.recompute_every,
                           variant=args.variant, config=extra,
                           unmerged_ms=base_ms, toma_ms=toma_ms, ideal_ms=ideal_ms, regions=rows, op_gap=gap),
                      f, indent=1)


if __name__ == "__main__":
    main()
