#!/usr/bin/env python
"""GPU truth: CUDA-graph and regionally compiled speed-ups at 1024², the selection kernel, eager rows.

    python scripts/gpu_truth.py --out docs/benchmarks/gpu --budget 480 [--sections ...] [--dry-run]

Made for short GPU access (15 minutes in all, at most 10 minutes a command, machine start included):
runs go most valuable first, each in a child process with its own time limit, cut to what is left
of ``--budget`` seconds (a run that no longer fits is skipped and logged), and every result row is
appended to ``OUT/results.jsonl`` as soon as its run ends (device, driver, torch, Triton and the
mode, i.e. the backend, on every row; a run that timed out or failed appends one status row).
Two commands cover the plan on an H100:

    python scripts/gpu_truth.py --out docs/benchmarks/gpu --sections env,checks,cudagraph --budget 480
    python scripts/gpu_truth.py --out docs/benchmarks/gpu --sections regional,loop --budget 300

Sections (random weights; nothing is downloaded):

- ``env``: device, driver, CUDA, torch, Triton (``env.json``);
- ``checks``: the GPU-marked tests of the CUDA-graph runner (equal to eager ToMA step by step,
  select/reuse/select, batch 1 and 2), so the timed rows below are of a correct runner;
- ``cudagraph``: CUDA-graph rows (``--backends eager,cudagraph``: unmerged, ToMA and ideal rows
  interleaved, eager rows beside): SDXL UNet fp16 both attention levels at batch 2 and 1, the
  default level at batch 1, Flux.1 full depth (19 + 38 blocks) bf16 at batch 1 and 2;
- ``regional``: regionally compiled (``inductor-regional``) Flux.1 full depth and SDXL UNet
  (unmerged, ToMA, ideal; compile time in each row's first-call time);
- ``loop``: 20-step denoising loops with ``recompute_every=5`` (SDXL fp16 all levels, eager and
  CUDA graphs; Flux bf16), so selection and reuse steps are both in the figure;
- ``kernel``: the Triton selection kernel and the committed sm_90a PTX against the torch reference
  on SDXL and Flux tile batches (``kernel.json``);
- ``sdxl`` / ``flux`` / ``compile``: the earlier eager method sweeps and whole-model inductor rows.

``--quick`` shrinks everything to the tiny models (a smoke test of this script, CPU or GPU);
``--dry-run`` prints the plan (run, time limit, command) and runs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SECTIONS = ("env", "checks", "cudagraph", "regional", "loop", "kernel", "sdxl", "flux", "compile")
LEVELS = {"sdxl-64x64x640": ((64, 64), 640), "sdxl-32x32x1280": ((32, 32), 1280), "flux-64x64x3072": ((64, 64), 3072)}


def env_section(out: Path) -> dict[str, Any]:
    import platform

    import torch

    from toma_export.bench.runner import cuda_meta

    info: dict[str, Any] = dict(date=time.strftime("%Y-%m-%d %H:%M:%S"), machine=platform.platform(),
                                python=platform.python_version(), torch=torch.__version__)
    if torch.cuda.is_available():
        info.update(device=torch.cuda.get_device_name(), **cuda_meta())
        info["sdpa_flash"] = torch.backends.cuda.flash_sdp_enabled()
    (out / "env.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _bench_ms(fn: Any, cuda: bool) -> float:
    """Median ms per call: CUDA events through ``triton.testing.do_bench``; host clock otherwise."""
    if cuda:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=200, return_mode="median"))
    import statistics

    fn()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def kernel_section(out: Path, quick: bool) -> list[dict[str, Any]]:
    import torch

    from plugins.selection_check import check_picks, tile_features
    from toma_export.core.selection import facility_location, tokens_kept

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    k = tokens_kept(16, 0.5)
    ptx_ok = False
    if cuda and torch.cuda.get_device_capability() == (9, 0):
        try:
            import cupy  # noqa: F401

            ptx_ok = True
        except ImportError:
            print("CuPy is missing: the PTX launch is skipped", file=sys.stderr)
    if cuda:
        from plugins.triton_selection import facility_location_triton
    rows = []
    levels = {"quick-16x16x64": ((16, 16), 64)} if quick else LEVELS
    for level, (grid, channels) in levels.items():
        for batch in (1, 2):
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                x = tile_features(batch, grid, channels, dtype=dtype, device=device, seed=batch * 7 + channels)
                ref = facility_location(x.float(), k)
                row: dict[str, Any] = dict(level=level, batch=batch, dtype=str(dtype).replace("torch.", ""),
                                           tiles=int(x.shape[0] * x.shape[1]), k=k, channels=channels)
                row["torch_ops_ms"] = _bench_ms(lambda: facility_location(x, k), cuda)
                if cuda:
                    got = facility_location_triton(x, k)
                    row["triton"] = check_picks(x, got, ref).as_dict()
                    row["triton_ms"] = _bench_ms(lambda: facility_location_triton(x, k), cuda)
                    if ptx_ok and dtype != torch.bfloat16:
                        from plugins.ptx_launch import launch_committed_ptx

                        got = launch_committed_ptx(x, k)
                        row["ptx"] = dict(check_picks(x, got, ref).as_dict(), unwritten=int((got < 0).sum()))
                rows.append(row)
                print(json.dumps(row), flush=True)
    (out / "kernel.json").write_text(json.dumps({"env": env_section(out), "rows": rows}, indent=2) + "\n")
    return rows


def _append_rows(out: Path, name: str, status: str, seconds: float) -> int:
    """Append the run's rows (or one status row) to ``OUT/results.jsonl``; returns the rows written."""
    import platform

    result_file = out / f"{name}.json"
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {}
    if result_file.exists():
        data = json.loads(result_file.read_text())
        meta, rows = data.get("meta", {}), data.get("results", [])
    known = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
    env = dict(run=name, gpu=meta.get("cuda") or known.get("device"),
               driver=meta.get("cuda_driver") or known.get("cuda_driver"),
               torch=meta.get("torch") or known.get("torch"), triton=meta.get("triton") or known.get("triton"),
               dtype=meta.get("dtype"), date=meta.get("date") or time.strftime("%Y-%m-%d %H:%M:%S"),
               machine=platform.node())
    lines = [json.dumps(dict(env, mode=r.get("backend"), **r), default=str) for r in rows]
    if not rows:
        lines = [json.dumps(dict(env, mode=None, status=status, seconds=round(seconds)))]
    with open(out / "results.jsonl", "a") as f:
        f.write("\n".join(lines) + "\n")
    return len(rows)


def _bench(out: Path, name: str, args: list[str], timeout: int) -> None:
    """One ``toma-export bench`` run in a child process (its own GPU memory and time limit); JSON and
    markdown into ``out``, its rows appended to ``out/results.jsonl`` as soon as it ends."""
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), *args, "--quiet",
           "--json", str(out / f"{name}.json"), "--markdown", str(out / f"{name}.md")]
    print("$", " ".join(cmd[1:]), f"(limit {timeout} s)", flush=True)
    t0 = time.time()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    for stale in (out / f"{name}.json", out / f"{name}.md"):
        stale.unlink(missing_ok=True)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout, capture_output=True, text=True)
        tail = (proc.stdout + proc.stderr)[-4000:]
        status = f"exit {proc.returncode}"
    except subprocess.TimeoutExpired as exc:
        tail = str(exc.stdout or "")[-2000:] + str(exc.stderr or "")[-2000:]
        status = f"timed out after {timeout} s"
    (out / f"{name}.log").write_text(" ".join(cmd[1:]) + "\n" + status + "\n" + tail)
    n = _append_rows(out, name, status, time.time() - t0)
    print(f"[{name}] {status} in {time.time() - t0:.0f} s, {n} row(s) appended", flush=True)
    if (out / f"{name}.md").exists():
        print((out / f"{name}.md").read_text(), flush=True)
    else:
        print(tail, flush=True)


def speed_runs(quick: bool) -> dict[str, list[tuple[str, list[str], int]]]:
    """Section -> [(run name, bench arguments, timeout s)]."""
    sdxl = ["--workload", "sdxl-unet", "--model", "sdxl-tiny" if quick else "sdxl", "--dtype", "float16"]
    flux = ["--workload", "flux", "--model", "flux-tiny" if quick else "flux-full", "--dtype", "bfloat16"]
    px = ["--height", "256", "--width", "256"] if quick else ["--height", "1024", "--width", "1024"]
    all_levels = ["--max-downsample", "4"]
    reps = ["--repeats", "2", "--warmup", "1"] if quick else ["--repeats", "10", "--warmup", "3"]
    three = ["--ratios", "0.25,0.5,0.75"]
    methods = ["--methods", "none,toma,tomesd,todo"]
    cg_reps = ["--repeats", "2", "--warmup", "1"] if quick else ["--repeats", "8", "--warmup", "2"]
    pair = ["--methods", "none,toma", "--ratios", "0.5"]
    graphs = ["--backends", "eager,cudagraph", *cg_reps]
    regional = ["--backends", "inductor-regional", *cg_reps]
    return {
        "cudagraph": [
            ("cg_sdxl_all_levels_b2", [*sdxl, *px, *pair, *all_levels, "--batch", "2", *graphs], 200),
            ("cg_flux_full_b1", [*flux, *px, *pair, *graphs], 240),
            ("cg_sdxl_default_level_b1", [*sdxl, *px, *pair, *graphs], 150),
            ("cg_sdxl_all_levels_b1", [*sdxl, *px, *pair, *all_levels, *graphs], 150),
            ("cg_flux_full_b2", [*flux, *px, *pair, "--batch", "2", *graphs], 240),
        ],
        "regional": [
            ("regional_flux_full", [*flux, *px, *pair, *regional], 280),
            ("regional_sdxl_all_levels", [*sdxl, *px, *pair, *all_levels, *regional], 240),
        ],
        "sdxl": [
            ("sdxl_default_levels", [*sdxl, *px, *methods, *three, "--backends", "eager", *reps], 420),
            ("sdxl_all_levels", [*sdxl, *px, *methods, *three, *all_levels, "--backends", "eager", *reps], 420),
            ("sdxl_all_levels_b2", [*sdxl, *px, *methods, "--ratios", "0.5", *all_levels, "--batch", "2",
                                    "--backends", "eager", *reps], 300),
        ],
        "flux": [
            ("flux_full", [*flux, *px, "--methods", "none,toma,todo", *three, "--backends", "eager", *reps], 150),
        ],
        "compile": [
            ("sdxl_compile", [*sdxl, *px, "--methods", "none,toma,todo", "--ratios", "0.5", *all_levels,
                              "--backends", "inductor", *reps], 400),
            # Two compiles of the full UNet (about 2 min each on 16 cores) where four do not fit a 10-min call.
            ("sdxl_compile_toma", [*sdxl, *px, "--methods", "none,toma", "--ratios", "0.5", *all_levels, "--no-ideal",
                                   "--backends", "inductor", *reps], 300),
            # Compile time grows with depth: the depth-reduced Flux (2 + 4 blocks, full width).
            ("flux_compile", ["--workload", "flux", "--model", "flux-tiny" if quick else "flux", "--dtype", "bfloat16",
                              *px, "--methods", "none,toma", "--ratios", "0.5", "--backends", "inductor", *reps], 180),
        ],
        "loop": [
            ("sdxl_loop20", ["--workload", "sdxl-loop", "--model", "sdxl-tiny" if quick else "sdxl", "--dtype",
                             "float16", *px, "--steps", "20", "--recompute-every", "5", "--methods", "none,toma",
                             "--ratios", "0.5", *all_levels, "--backends", "eager,cudagraph",
                             *(["--repeats", "1", "--warmup", "1"] if quick else ["--repeats", "5", "--warmup", "1"])],
             120),
            ("flux_loop20", ["--workload", "flux-loop", "--model", "flux-tiny" if quick else "flux-full", "--dtype",
                             "bfloat16", *px, "--steps", "20", "--recompute-every", "5", "--methods", "none,toma",
                             "--ratios", "0.5", "--backends", "eager",
                             *(["--repeats", "1", "--warmup", "1"] if quick else ["--repeats", "3", "--warmup", "1"])],
             200),
        ],
    }


def checks_section(out: Path, timeout: int) -> None:
    """``pytest -m gpu tests/test_cudagraph.py`` in a child process; its summary line appended as a row."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests/test_cudagraph.py"]
    print("$", " ".join(cmd[1:]), f"(limit {timeout} s)", flush=True)
    t0 = time.time()
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=max(timeout, 1), capture_output=True, text=True)
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        status = lines[-1] if lines else f"exit {proc.returncode}"
        tail = "\n".join(lines[-40:])
    except subprocess.TimeoutExpired:
        status, tail = f"timed out after {timeout} s", ""
    (out / "checks.log").write_text(" ".join(cmd[1:]) + "\n" + tail + "\n")
    _append_rows(out, "checks", status, time.time() - t0)
    print(f"[checks] {status}", flush=True)


def plan(sections: list[str], only: set[str], quick: bool) -> list[tuple[str, str, list[str], int]]:
    """``(section, run, bench arguments, time limit s)`` in the order they run (most valuable first)."""
    runs = speed_runs(quick)
    return [(section, name, args, limit) for section in sections if section in runs
            for name, args, limit in runs[section] if not only or name in only]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Sections: " + ", ".join(SECTIONS))
    p.add_argument("--out", type=Path, required=True, help="folder for results.jsonl, the JSON rows, markdown tables and logs")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of: " + ", ".join(SECTIONS))
    p.add_argument("--only", default="", help="comma-separated run names within the sections (default: all)")
    p.add_argument("--quick", action="store_true", help="tiny models and few repeats: a smoke test of this script")
    p.add_argument("--budget", type=float, default=540.0,
                   help="seconds this invocation may take in all (default 540: a 10-minute command with the "
                        "machine's start); runs are cut to what is left and skipped when under 30 s would remain")
    p.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    args = p.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.budget <= 0:
        p.error(f"--budget {args.budget:g}: must be > 0 seconds")
    only = {s for s in args.only.split(",") if s}
    known = {name for runs in speed_runs(args.quick).values() for name, _, _ in runs}
    if only - known:
        p.error(f"--only names unknown run(s) {sorted(only - known)}; known: {', '.join(sorted(known))}")
    if args.dry_run:
        total = 0
        for section in sections:
            if section in ("env", "kernel", "checks"):
                print(f"{section}: in process")
        for section, name, bench_args, limit in plan(sections, only, args.quick):
            total += limit
            print(f"{section}/{name} (limit {limit} s): bench {' '.join(bench_args)}")
        print(f"limits add up to {total} s; budget {args.budget:g} s")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.budget
    runs = speed_runs(args.quick)
    for section in sections:
        t0 = time.time()
        print(f"== {section}", flush=True)
        if section == "env":
            print(json.dumps(env_section(args.out), indent=2), flush=True)
        elif section == "kernel":
            kernel_section(args.out, args.quick)
        elif section == "checks":
            checks_section(args.out, min(150, int(deadline - time.time())))
        else:
            for name, bench_args, timeout in runs[section]:
                if only and name not in only:
                    continue
                left = int(deadline - time.time())
                if left < 30:
                    print(f"[{name}] skipped: {left} s of the budget left", flush=True)
                    _append_rows(args.out, name, f"skipped: {left} s of the budget left", 0.0)
                    continue
                _bench(args.out, name, bench_args, min(timeout, left))
        print(f"== {section} done in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
