"""``build`` / ``verify`` / ``run``: artifacts from the command line."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import toma_export
from toma_export.config import METHODS, ToMAConfig
from toma_export.engines.build import BACKENDS, BuildRequest, build_artifact, require_same_model
from toma_export.engines.load import LoadedArtifact, load_artifact
from toma_export.models.inputs import example_inputs
from toma_export.models.registry import load_model, model_shell
from toma_export.runtime.wrapper import DestinationSchedule, ToMADenoiser


# --- verify -----------------------------------------------------------------------------------------
def verify_artifact(folder: str | Path, *, steps: int = 3, seed: int = 1234, tol: float = 1e-3) -> tuple[bool, list[dict[str, Any]]]:
    """Engine vs eager ToMA and vs the unmerged model over ``steps`` steps of fresh inputs.

    Each step gets new random inputs, so reuse steps run the engine's reuse variant on features
    the destinations were not selected from, exactly as eager does. Returns (ok, rows).
    """
    loaded = load_artifact(folder)
    m = loaded.manifest
    model = load_model(m.model["name"], seed=int(m.extra.get("seed", 0)))
    require_same_model(m, model)
    config = ToMAConfig.from_dict(m.config)
    shapes = m.shapes
    inputs = [
        example_inputs(model, batch=shapes["batch"], height=shapes["height"], width=shapes["width"], seed=seed + i)
        for i in range(steps)
    ]
    with torch.no_grad():
        plain = [model(**kw)[0] for kw in inputs]
        toma_export.apply(model, config)
        try:
            eager = [model(**kw)[0] for kw in inputs]
        finally:
            toma_export.remove(model)
        schedule = DestinationSchedule(config.recompute_every)
        rows = []
        for i, kw in enumerate(inputs):
            recompute = schedule.recompute
            out, schedule.destinations = loaded.runner(kw, schedule.destinations, recompute)
            schedule.step += 1
            variant = "single" if "single" in loaded.runner.variants else ("select" if recompute else "reuse")
            d_eager, d_plain = (out - eager[i]).abs(), (out - plain[i]).abs()
            rows.append(
                dict(step=i, variant=variant, max_vs_eager=d_eager.max().item(), mean_vs_eager=d_eager.mean().item(),
                     max_vs_unmerged=d_plain.max().item(), mean_vs_unmerged=d_plain.mean().item())
            )
    return all(r["max_vs_eager"] <= tol for r in rows), rows


def _cmd_verify(args: argparse.Namespace) -> int:
    ok, rows = verify_artifact(args.artifact, steps=args.steps, seed=args.seed, tol=args.tol)
    print(f"{'step':>4} {'variant':>7} {'max|Δ| eager':>13} {'mean|Δ| eager':>14} {'max|Δ| unmerged':>16} {'mean|Δ| unmerged':>17}")
    for r in rows:
        print(f"{r['step']:>4} {r['variant']:>7} {r['max_vs_eager']:>13.2e} {r['mean_vs_eager']:>14.2e} "
              f"{r['max_vs_unmerged']:>16.2e} {r['mean_vs_unmerged']:>17.2e}")
    print(("PASS" if ok else "FAIL") + f": engine vs eager ToMA within {args.tol:g} max abs" + ("" if ok else " violated"))
    return 0 if ok else 1


# --- run --------------------------------------------------------------------------------------------
def pipeline_for(loaded: LoadedArtifact, *, seed: int = 0) -> Any:
    """A pipeline whose denoiser is the artifact (weights of the denoiser are not loaded in torch)."""
    from toma_export.models.pipelines import build_pipeline

    m = loaded.manifest
    shell = model_shell(m.model["name"])
    pipe = build_pipeline(shell, seed=seed)
    denoiser = ToMADenoiser(loaded.runner, shell, recompute_every=int(m.config["recompute_every"]))
    if hasattr(pipe, "unet"):
        pipe.unet = denoiser
    else:
        pipe.transformer = denoiser
    return pipe


def generate(pipe: Any, *, steps: int, seed: int, height: int, width: int, batch: int = 1) -> tuple[torch.Tensor, float]:
    from toma_export.models.pipelines import prompt_embeddings

    kwargs: dict[str, Any] = dict(
        prompt_embeddings(pipe, batch=batch, seed=seed), num_inference_steps=steps, height=height, width=width,
        output_type="pt", generator=torch.Generator().manual_seed(seed),
    )
    if hasattr(pipe, "transformer"):
        kwargs["guidance_scale"] = 1.0
    denoiser = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    if hasattr(denoiser, "reset"):
        denoiser.reset()
    start = time.perf_counter()
    with torch.no_grad():
        images = pipe(**kwargs).images
    return images, time.perf_counter() - start


def save_png(image: torch.Tensor, path: Path) -> None:
    """Write ``(3, H, W)`` in [0, 1] as PNG via a temporary file, so no half-written image is left."""
    from PIL import Image

    array = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cmd_run(args: argparse.Namespace) -> int:
    loaded = load_artifact(args.artifact)
    shapes = loaded.manifest.shapes
    pipe = pipeline_for(loaded, seed=args.seed)
    pipe.set_progress_bar_config(desc="denoising")
    # CFG doubles the batch inside SDXL pipelines: the artifact's batch is the denoiser's batch.
    cfg_factor = 2 if hasattr(pipe, "unet") else 1
    if shapes["batch"] % cfg_factor:
        raise toma_export.ToMAError(
            f"this SDXL artifact was built for denoiser batch {shapes['batch']}, but classifier-free guidance "
            "runs the denoiser on 2 x images; build with --batch 2 (one image) or another even batch."
        )
    images, seconds = generate(pipe, steps=args.steps, seed=args.seed, height=shapes["height"], width=shapes["width"],
                               batch=shapes["batch"] // cfg_factor)
    save_png(images[0], Path(args.out))
    print(f"wrote {args.out} ({args.steps} steps in {seconds:.2f} s; {loaded.runner.selections} selection step(s))")
    return 0


# --- build ------------------------------------------------------------------------------------------
def _cmd_build(args: argparse.Namespace) -> int:
    req = BuildRequest(
        model=args.model, method=args.method, ratio=args.ratio, backend=args.backend, height=args.height,
        width=args.width, batch=args.batch, out=Path(args.out), selection=args.selection,
        precision=args.precision, recompute_every=args.recompute_every, force=args.force,
        dynamic_batch=args.dynamic_batch,
    )
    folder = build_artifact(req)
    print(f"built {folder} ({args.backend}, method {args.method}, ratio {args.ratio})")
    return 0


def register(sub: Any) -> None:
    b = sub.add_parser("build", help="build an engine artifact folder (ONNX Runtime, AOTInductor, TensorRT)",
                       description="Capture, rewrite (ToMA) and export a denoiser to an artifact folder with a manifest.")
    b.add_argument("model", help="embedded model name (sdxl-tiny, flux-tiny, sdxl, flux, sd15-tiny) or local diffusers folder")
    b.add_argument("--method", choices=METHODS, default="toma")
    b.add_argument("--ratio", type=float, default=0.5, help="share of image tokens merged away, in [0, 1)")
    b.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    b.add_argument("--height", type=int, default=256, help="image height in pixels")
    b.add_argument("--width", type=int, default=256, help="image width in pixels")
    b.add_argument("--batch", type=int, default=2, help="denoiser batch (SDXL with guidance: 2 per image)")
    b.add_argument("--out", required=True, help="artifact folder to create")
    b.add_argument("--selection", choices=("unrolled", "plugin"), default="unrolled",
                   help="ONNX selection as standard ops (ONNX Runtime) or a toma plugin node (TensorRT)")
    b.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32", help="TensorRT precision")
    b.add_argument("--recompute-every", type=int, default=5, help="steps between destination selections")
    b.add_argument("--force", action="store_true", help="replace an existing artifact folder")
    b.add_argument("--dynamic-batch", action="store_true",
                   help="one artifact for any batch at this resolution (the batch is symbolic; build at --batch >= 2)")
    b.set_defaults(handler=_cmd_build)

    v = sub.add_parser("verify", help="compare an artifact against the eager reference on fresh inputs",
                       description="Run the artifact and eager ToMA on the same fresh inputs for a few steps; print errors "
                       "against eager ToMA and against the unmerged model; exit 1 on mismatch.")
    v.add_argument("artifact")
    v.add_argument("--steps", type=int, default=3)
    v.add_argument("--seed", type=int, default=1234)
    v.add_argument("--tol", type=float, default=1e-3, help="max abs error allowed against eager ToMA")
    v.set_defaults(handler=_cmd_verify)

    r = sub.add_parser("run", help="generate an image with the full pipeline around an artifact",
                       description="Assemble the model's pipeline (tiny VAE and scheduler for embedded models, prompt "
                       "embeddings instead of text encoders) with the artifact as its denoiser, and write a PNG.")
    r.add_argument("artifact")
    r.add_argument("--steps", type=int, default=10)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", default="image.png")
    r.set_defaults(handler=_cmd_run)
