#!/usr/bin/env python3
"""Where ToMA's overhead goes: time per merge-machinery region in one merged forward.

Runs a bench workload (default ``sdxl-block``) unmerged and with eager ToMA under
``torch.profiler`` with the merge machinery's regions labelled (``toma_export.core.profiling``):
selection, merge weights, merge, unmerge, position gathers (merged tokens' grid index) and RoPE
row gathers. Prints a table: milliseconds per forward and share of the merged forward, plus the
unmerged and merged forward times measured in the same process (CPU time from the profiler).

    python scripts/profile_sites.py --workload sdxl-block --ratio 0.5 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

from toma_export import ToMAConfig
from toma_export.bench.workloads import Options, get_workload, shared_clone
from toma_export.core.profiling import regions_enabled

REGIONS = ("select", "weights", "merge", "unmerge", "positions", "rope_rows")


def _profile(call, repeats: int) -> tuple[float, dict[str, float]]:
    """Mean wall ms of ``call`` and mean ms per labelled region, over ``repeats`` profiled calls."""
    call()  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            with torch.profiler.record_function("toma::forward"):
                call()
    totals = {e.key: e.cpu_time_total / 1e3 / repeats for e in prof.key_averages() if e.key.startswith("toma::")}
    return totals.get("toma::forward", 0.0), {r: totals.get(f"toma::{r}", 0.0) for r in REGIONS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="sdxl-block", help="bench workload (sdxl-block, flux, flux-tiny, ...)")
    ap.add_argument("--ratio", type=float, default=0.5, help="merge ratio")
    ap.add_argument("--repeats", type=int, default=3, help="profiled forwards per row")
    ap.add_argument("--recompute-every", type=int, default=1, help="1 = selection on every forward (worst case)")
    ap.add_argument("--json", help="write the table here")
    args = ap.parse_args()

    built = get_workload(args.workload).build(Options())
    plain = shared_clone(built.model)
    merged = shared_clone(built.model)
    handle = built.patch(merged, ToMAConfig(ratio=args.ratio, recompute_every=args.recompute_every))
    with torch.inference_mode(), regions_enabled():
        base_ms, _ = _profile(lambda: built.run(plain, built.kwargs), args.repeats)
        toma_ms, regions = _profile(lambda: built.run(merged, built.kwargs), args.repeats)
    handle.remove()
    rows = [dict(region=r, ms=round(ms, 2), share=round(ms / toma_ms, 4) if toma_ms else None) for r, ms in regions.items()]
    overhead = sum(regions.values())
    print(f"{args.workload} r={args.ratio} recompute_every={args.recompute_every}: unmerged {base_ms:.1f} ms, "
          f"ToMA {toma_ms:.1f} ms ({base_ms / toma_ms:.2f}x); {platform.machine()}, {torch.get_num_threads()} threads")
    print(f"{'region':>10} {'ms/forward':>11} {'share':>7}")
    for r in rows:
        print(f"{r['region']:>10} {r['ms']:>11.2f} {r['share'] * 100 if r['share'] is not None else 0:>6.1f}%")
    print(f"{'total':>10} {overhead:>11.2f} {overhead / toma_ms * 100 if toma_ms else 0:>6.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(workload=args.workload, ratio=args.ratio, recompute_every=args.recompute_every,
                           unmerged_ms=base_ms, toma_ms=toma_ms, regions=rows), f, indent=1)


if __name__ == "__main__":
    main()
