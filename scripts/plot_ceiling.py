#!/usr/bin/env python
"""Measured ToMA speed-ups against the FLOP ceiling, per workload, ratio, backend and machine.

Reads committed bench JSONs (``toma-export bench --json``), counts for each workload and ratio the
FLOP ceiling ``FLOPs(unmerged) / FLOPs(ideal)`` and the ToMA row's own FLOP ratio on the meta device
(toma_export/bench/ceiling.py: shapes only, seconds per real-size model, no timing), and writes to
``--out``: ``ceiling.png`` (bars per backend with the ideal row and the ceiling), ``ceiling.md``
(the table, also printed) and ``flop_ceiling.json`` (the counts, reused on the next run unless
``--recount``). Nothing is written anywhere else.

    python scripts/plot_ceiling.py                          # every bench JSON in docs/benchmarks{,/gpu}
    python scripts/plot_ceiling.py docs/benchmarks/bench_wan.json --out results/ceiling
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "docs" / "benchmarks"
DEFAULT_DIRS = (BENCH_DIR, BENCH_DIR / "gpu")
CACHE_NAME = "flop_ceiling.json"


class InputError(Exception):
    """A bench file that is missing, unreadable or not a bench result: the message names it."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="plot_ceiling.py",
        description="Plot measured ToMA speed-ups (and the ideal rows') against the FLOP ceiling "
        "FLOPs(unmerged)/FLOPs(ideal) of each workload and ratio, per backend and machine.",
        epilog="FLOPs are counted on the meta device (no weights, no timing): seconds per model. "
        "Only the plain 'toma' rows are plotted (sub-layer variants such as toma[attn] are left out).",
    )
    p.add_argument("files", nargs="*", type=Path, metavar="BENCH.json",
                   help="bench results to read (default: every bench JSON in docs/benchmarks/ and "
                   "docs/benchmarks/gpu/; other JSON files there are skipped)")
    p.add_argument("--out", type=Path, default=BENCH_DIR,
                   help=f"folder for ceiling.png, ceiling.md and {CACHE_NAME} (default: docs/benchmarks)")
    p.add_argument("--recount", action="store_true", help=f"count every FLOP ceiling again instead of reusing "
                   f"--out/{CACHE_NAME}")
    p.add_argument("--device", choices=("meta", "cpu"), default="meta",
                   help="where to run the counted forwards: meta (shapes only, default) or cpu (real "
                   "compute, small models only; the counts are the same)")
    p.add_argument("--no-toma-flops", action="store_true", help="count only unmerged and ideal FLOPs, "
                   "not the ToMA row's own")
    return p.parse_args(argv)


def source_name(path: Path) -> str:
    """``gpu/flux_full`` for committed files, the file's stem for others: the table's "run" column."""
    try:
        return str(path.resolve().relative_to(BENCH_DIR).with_suffix(""))
    except ValueError:
        return path.stem


def load_bench(path: Path) -> dict[str, Any]:
    """A bench result ``{"meta": ..., "results": [rows]}``; :class:`InputError` naming the problem."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot be read ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(data, list):
        data = {"meta": {}, "results": data}
    rows = data.get("results") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InputError(f"{path}: not a bench result (expected {{\"meta\": ..., \"results\": [rows]}} as written "
                         "by `toma-export bench --json`)")
    needed = ("workload", "backend", "method", "ratio")
    for i, r in enumerate(rows):
        missing = [k for k in needed if k not in r]
        if missing and r.get("method") != "none":
            raise InputError(f"{path}: row {i} has no {', '.join(missing)} (not a `toma-export bench` row)")
    return data


def inputs(files: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Named files must all be bench results; by default, bench results in the default folders."""
    if files:
        return [(f, load_bench(f)) for f in files]
    found = []
    for folder in DEFAULT_DIRS:
        for f in sorted(folder.glob("*.json")):
            try:
                found.append((f, load_bench(f)))
            except InputError as exc:
                print(f"skipped {exc}", file=sys.stderr)
    if not found:
        raise InputError(f"no bench JSON in {', '.join(str(d) for d in DEFAULT_DIRS)}; name files to read")
    return found


def load_cache(path: Path) -> dict[str, Any]:
    """Counted ceilings by key from an earlier run's ``flop_ceiling.json`` (empty when absent)."""
    from toma_export.bench.ceiling import Ceiling

    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())["entries"]
        ceilings = [Ceiling.from_dict(e) for e in entries]
    except Exception as exc:
        raise InputError(f"{path}: not a FLOP-ceiling cache ({type(exc).__name__}: {exc}); "
                         "delete it or pass --recount") from exc
    return {c.spec.key(c.ratio): c for c in ceilings}


def count(rows: list[Any], cached: dict[str, Any], device: str, toma: bool) -> dict[str, Any]:
    """Ceilings for every (spec, ratio) of ``rows``: from ``cached`` or counted, one build per spec."""
    from toma_export.bench.ceiling import CeilingError, flop_ceilings

    wanted: dict[Any, set[float]] = {}
    for r in rows:
        wanted.setdefault(r.spec, set()).add(r.ratio)
    out: dict[str, Any] = {}
    for spec, ratios in wanted.items():
        missing = []
        for ratio in sorted(ratios):
            key = spec.key(ratio)
            if key in cached and (cached[key].toma_flops is not None or not toma or cached[key].toma_note):
                out[key] = cached[key]
            else:
                missing.append(ratio)
        if not missing:
            continue
        t0 = time.perf_counter()
        try:
            for c in flop_ceilings(spec, missing, device=device, toma=toma):
                out[spec.key(c.ratio)] = c
        except CeilingError as exc:
            print(f"warning: no ceiling for {spec.label()}: {exc}", file=sys.stderr)
            continue
        print(f"counted {spec.label()} at r={', '.join(f'{r:g}' for r in missing)} on {device} "
              f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


def plot_bars(rows: list[Any], ceilings: dict[str, Any]) -> list[dict[str, Any]]:
    """One bar per workload, machine, ratio and backend: the median over the runs that measured it
    (whisker: their range; all runs are in the table), so repeated runs do not crowd a panel."""
    import statistics

    groups: dict[tuple[str, str, float, str], list[Any]] = {}
    for r in rows:
        groups.setdefault((r.spec.label(), r.machine, r.ratio, r.backend), []).append(r)
    bars = []
    for (label, machine, ratio, backend), runs in groups.items():
        c = ceilings.get(runs[0].key)
        toma = [r.toma for r in runs]
        ideal = [r.ideal for r in runs if r.ideal is not None]
        bars.append(dict(
            panel=f"{label} · {machine}", ratio=ratio, backend=backend,
            tick=backend if len(runs) == 1 else f"{backend} ({len(runs)} runs)",
            toma=statistics.median(toma), ideal=statistics.median(ideal) if ideal else None,
            spread=(min(toma), max(toma)) if len(runs) > 1 else None,
            ceiling=c.ceiling if c else None, toma_flops=c.toma_ratio if c else None))
    return bars


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        files = inputs(list(args.files))
        if args.out.exists() and not args.out.is_dir():
            raise InputError(f"--out {args.out}: exists and is not a folder")
        cache_path = args.out / CACHE_NAME
        cached = {} if args.recount else load_cache(cache_path)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import torch

    from toma_export.bench.ceiling import WHAT_IS_COUNTED, ceiling_table, speed_rows
    from toma_export.bench.plots import ceiling_plot
    from toma_export.bench.report import write_atomic

    rows = []
    for path, data in files:
        got = speed_rows(data, source_name(path))
        if not got:
            print(f"skipped {path}: no plain 'toma' row with a speed-up", file=sys.stderr)
        rows += got
    if not rows:
        print("error: none of the files has a plain 'toma' row with a speed-up to plot", file=sys.stderr)
        return 1
    rows.sort(key=lambda r: (r.spec.label(), r.machine, r.ratio, r.backend, r.source))
    ceilings = count(rows, cached, args.device, not args.no_toma_flops)

    command = shlex.join(["python", "scripts/plot_ceiling.py", *argv])
    args.out.mkdir(parents=True, exist_ok=True)
    used = [ceilings[k] for k in dict.fromkeys(r.key for r in rows) if k in ceilings]
    write_atomic(cache_path, json.dumps(dict(
        command=command, torch=torch.__version__, counted=WHAT_IS_COUNTED,
        ceiling="FLOPs(unmerged forward) / FLOPs(ideal forward), the bench's ideal row at the same ratio",
        entries=[c.to_dict() for c in used]), indent=2) + "\n")

    table = ceiling_table(rows, ceilings)
    write_atomic(args.out / "ceiling.md", "\n".join([
        "## Speed-up against the FLOP ceiling", "",
        f"`{command}`", "",
        "FLOP ceiling = FLOPs(unmerged forward) / FLOPs(ideal forward) at the same ratio; ToMA FLOP ratio = "
        "FLOPs(unmerged) / FLOPs(ToMA forward, a selecting step); ToMA (ideal) % of ceiling saving = "
        "(1 - 1/speed-up) / (1 - 1/ceiling), the share of the FLOP saving the row turned into time. Counted: " + WHAT_IS_COUNTED,
        "Speed-ups: each run's ToMA and ideal rows against the same backend's unmerged row of that run.", "",
        table]))
    print(table)

    png = ceiling_plot(plot_bars(rows, ceilings), args.out / "ceiling.png")
    print(f"wrote {png}, {args.out / 'ceiling.md'}, {cache_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
