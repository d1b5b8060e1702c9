"""The demo (``toma-export demo``, ``make demo``): the main job on the embedded default model, end to end.

Builds a ToMA artifact and an unmerged one on ONNX Runtime, verifies the ToMA artifact against the
eager reference, generates with both through the full pipeline, and prints the speed-up measured
side by side in this run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toma_export.engines.build import BuildRequest, build_artifact
from toma_export.engines.load import load_artifact
from toma_export.engines.run import generate, pipeline_for, save_png
from toma_export.engines.verify import verify_artifact


def run_demo(
    model: str = "sdxl-tiny", *, ratio: float = 0.5, steps: int = 8, size: int = 512, repeats: int = 3, seed: int = 0,
    out: str | Path = Path("engines/out/demo"),
) -> int:
    """Run the demo; print progress and the result; return 0, or 1 when the engine does not match eager ToMA."""
    out = Path(out)
    flux = model.startswith("flux")
    batch = 1 if flux else 2  # SDXL pipelines run guidance as a batch of 2
    folders = {}
    for method in ("toma", "none"):
        print(f"[demo] building {method} artifact for {model} at {size}x{size}")
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
        return 1
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
    print(f"[demo] {model} {size}x{size}, {steps} steps, ONNX Runtime (CPU), median of {repeats}:")
    print(f"  unmerged {med['none']:.2f} s   ToMA r={ratio} {med['toma']:.2f} s   "
          f"speed-up {med['none'] / med['toma']:.2f}x")
    print(f"  image difference ToMA vs unmerged: {rel:.4f} relative; images in {out}/")
    return 0
