"""The demo (``toma-export demo``, ``make demo``): what the project is for, in two parts.

1. The engine path end to end on the embedded toy model (``sdxl-tiny``): build a ToMA artifact and an
   unmerged one on ONNX Runtime, verify the ToMA one against eager ToMA, generate with both through
   the full pipeline. The toy widths leave too little work per token for merging to pay, so this part
   shows correctness, not speed.
2. The speed-up at real token counts: SDXL's highest-resolution transformer block at 1024² (4096
   tokens at real width), ToMA against the unmerged block and the ideal (the block on the kept tokens,
   no merge cost), built as engines of the same backend and timed interleaved by the bench harness:
   the figure a user sees at scale, as ``toma-export bench --workload sdxl-block`` measures it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toma_export.errors import ToMAError

#: The timed workload of part 2 (``toma_export/bench/workloads.py``).
SPEED_WORKLOAD = "sdxl-block"
#: How part 2 names its backends.
BACKEND_NAMES = {
    "onnxruntime": "ONNX Runtime engines (CPU), built like `toma-export build`: ToMA's select variant every "
    "recompute_every calls, its reuse variant between",
    "eager": "eager PyTorch (toma_export.apply's hooks)",
}


def run_demo(
    model: str = "sdxl-tiny", *, ratio: float = 0.5, steps: int = 8, size: int = 512, repeats: int = 3, seed: int = 0,
    out: str | Path = Path("engines/out/demo"), speed_backend: str = "onnxruntime", speed_size: int = 1024,
    speed_repeats: int = 10,
) -> int:
    """Run the demo; print progress and the results; return 0, or 1 when the engine does not match eager
    ToMA or the timed ToMA row fails. ``speed_repeats`` 0 skips part 2."""
    from toma_export.bench.backends import BACKENDS

    if speed_backend not in BACKENDS:
        raise ToMAError(f"--speed-backend {speed_backend!r} is not a bench backend; use one of {', '.join(BACKENDS)}.")
    if not engine_path(model, ratio=ratio, steps=steps, size=size, repeats=repeats, seed=seed, out=Path(out)):
        return 1
    if speed_repeats <= 0:
        return 0
    result = speed_at_scale(ratio=ratio, backend=speed_backend, size=speed_size, repeats=speed_repeats)
    return 0 if print_speed(result, ratio) else 1


def engine_path(model: str, *, ratio: float, steps: int, size: int, repeats: int, seed: int, out: Path) -> bool:
    """Part 1: build, verify, generate; False when the ToMA engine does not match eager ToMA."""
    from toma_export.engines.build import BuildRequest, build_artifact
    from toma_export.engines.load import load_artifact
    from toma_export.engines.run import generate, pipeline_for, save_png
    from toma_export.engines.verify import verify_artifact

    flux = model.startswith("flux")
    batch = 1 if flux else 2  # SDXL pipelines run guidance as a batch of 2
    folders = {}
    for method in ("toma", "none"):
        print(f"[demo] building the {method} artifact of {model} (toy width) at {size}x{size} on ONNX Runtime")
        folders[method] = build_artifact(
            BuildRequest(model, method=method, ratio=ratio, height=size, width=size, batch=batch,
                         out=out / f"{model}-{method}", force=True)
        )
    print("[demo] verifying the ToMA artifact against eager ToMA")
    ok, rows = verify_artifact(folders["toma"], steps=2)
    for r in rows:
        print(f"  step {r['step']} ({r['variant']}): max |engine - eager ToMA| {r['max_vs_eager']:.2e}, "
              f"max |engine - unmerged model| {r['max_vs_unmerged']:.2e}")
    if not ok:
        print("[demo] FAIL: the engine does not match eager ToMA")
        return False
    pipes = {m: pipeline_for(load_artifact(f), seed=seed) for m, f in folders.items()}
    times: dict[str, list[float]] = {m: [] for m in pipes}
    images: dict[str, Any] = {}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
        generate(pipe, steps=1, seed=seed, height=size, width=size)  # warm-up
    for _ in range(repeats):  # interleaved, so drift hits both alike
        for method, pipe in pipes.items():
            images[method], seconds = generate(pipe, steps=steps, seed=seed, height=size, width=size)
            times[method].append(seconds)
    for method, img in images.items():
        save_png(img[0], out / f"{method}.png")
    med = {m: sorted(t)[len(t) // 2] for m, t in times.items()}
    rel = ((images["toma"] - images["none"]).norm() / images["none"].norm()).item()
    print(f"[demo] generated through the full pipeline ({model}, {size}x{size}, {steps} steps, median of {repeats}): "
          f"unmerged {med['none']:.2f} s, ToMA r={ratio} {med['toma']:.2f} s")
    print(f"  image difference ToMA vs unmerged: {rel:.4f} relative; images in {out}/")
    print(f"  ({model} is toy width: too little work per token for merging to pay. The speed-up at real size follows.)")
    return True


def speed_at_scale(*, ratio: float, backend: str, size: int, repeats: int) -> dict[str, Any]:
    """Part 2: unmerged, ToMA and ideal rows of :data:`SPEED_WORKLOAD` on ``backend``, timed interleaved
    after one untimed call each (the bench's ``{"meta", "results"}``)."""
    from toma_export.bench.runner import Plan, run_plan
    from toma_export.bench.workloads import Options

    print(f"[demo] timing unmerged, ToMA and the ideal on SDXL's highest-resolution transformer block at {size}x{size} "
          f"px ({SPEED_WORKLOAD}, {backend}, {repeats} interleaved rounds)")
    plan = Plan(workloads=[SPEED_WORKLOAD], methods=("toma",), ratios=(ratio,), backends=(backend,),
                repeats=repeats, warmup=1, memory=False, options=Options(height=size, width=size))
    return run_plan(plan, progress_bar=False)


def print_speed(result: dict[str, Any], ratio: float) -> bool:
    """Print part 2's rows and what was measured; False when a row failed."""
    meta, rows = result["meta"], result["results"]
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        print(f"[demo] FAIL: {r['variant']} row: {r['status']}")
    by = {r["method"]: r for r in rows if r["status"] == "ok"}
    if failed or not {"none", "toma", "ideal"} <= by.keys():
        return False
    backend, repeats = rows[0]["backend"], rows[0]["repeats"]
    h, w = meta["options"]["height"], meta["options"]["width"]
    print(f"[demo] speed at {h}x{w} px: {meta['workloads'][SPEED_WORKLOAD]}, {meta['dtype']}, random weights")
    print(f"  backend: {BACKEND_NAMES.get(backend, backend)}; {meta['cpu_count']} CPUs, "
          f"torch {meta['torch']} with {meta['torch_threads']} threads")
    print(f"  rows timed interleaved, {repeats} rounds after one untimed call each; medians:")
    none, toma, ideal = by["none"], by["toma"], by["ideal"]
    eff = toma["overhead_efficiency"]
    print(f"    unmerged     {none['median_ms']:8.1f} ms   1.00x")
    print(f"    ToMA r={ratio:<5g} {toma['median_ms']:8.1f} ms   {toma['speedup']:.2f}x"
          + (f"   ({100 * eff:.0f}% of the ideal saving)" if eff is not None else ""))
    print(f"    ideal        {ideal['median_ms']:8.1f} ms   {ideal['speedup']:.2f}x   ({ideal['note']}; no merge cost)")
    print(f"  the same rows: toma-export bench --workload {SPEED_WORKLOAD} --methods none,toma --ratios {ratio:g} "
          f"--backends {backend} --repeats {repeats} --warmup 1 --no-memory --height {h} --width {w}")
    print(f"[demo] ToMA r={ratio:g} on {backend} at {h}x{w} px: {toma['speedup']:.2f}x the unmerged speed "
          f"(ideal {ideal['speedup']:.2f}x)")
    return True
