"""``build`` / ``verify`` / ``run``: artifacts from the command line.

The work is done by :func:`toma_export.engines.build.build_artifact`,
:func:`toma_export.engines.verify.verify_artifact` and :func:`toma_export.engines.run.run_artifact`,
imported when a command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from toma_export.cli._choices import METHODS
from toma_export.engines import BACKENDS


def _cmd_build(args: argparse.Namespace) -> int:
    from toma_export.engines.build import BuildRequest, build_artifact

    req = BuildRequest(
        model=args.model, method=args.method, ratio=args.ratio, backend=args.backend, height=args.height,
        width=args.width, batch=args.batch, out=Path(args.out), selection=args.selection,
        precision=args.precision, recompute_every=args.recompute_every, force=args.force,
        dynamic_batch=args.dynamic_batch,
    )
    folder = build_artifact(req)
    print(f"built {folder} ({args.backend}, method {args.method}, ratio {args.ratio})")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from toma_export.engines.verify import verify_artifact

    ok, rows = verify_artifact(args.artifact, steps=args.steps, seed=args.seed, tol=args.tol)
    print(f"{'step':>4} {'variant':>7} {'max|Δ| eager':>13} {'mean|Δ| eager':>14} {'max|Δ| unmerged':>16} {'mean|Δ| unmerged':>17}")
    for r in rows:
        print(f"{r['step']:>4} {r['variant']:>7} {r['max_vs_eager']:>13.2e} {r['mean_vs_eager']:>14.2e} "
              f"{r['max_vs_unmerged']:>16.2e} {r['mean_vs_unmerged']:>17.2e}")
    print(("PASS" if ok else "FAIL") + f": engine vs eager ToMA within {args.tol:g} max abs" + ("" if ok else " violated"))
    return 0 if ok else 1


def _cmd_run(args: argparse.Namespace) -> int:
    from toma_export.engines.run import run_artifact

    res = run_artifact(args.artifact, steps=args.steps, seed=args.seed, out=args.out)
    print(f"wrote {args.out} ({res.steps} steps in {res.seconds:.2f} s; {res.selections} selection step(s))")
    return 0


def register(sub: Any) -> None:
    b = sub.add_parser("build", help="build an engine artifact folder (ONNX Runtime, AOTInductor, TensorRT)",
                       description="Capture, rewrite (ToMA) and export a denoiser to an artifact folder with a manifest.")
    b.add_argument("model", help="embedded model name (sdxl-tiny, flux-tiny, sdxl, flux, sd15-tiny) or local diffusers folder")
    b.add_argument("--method", choices=METHODS, default="toma", help="merging method (default: toma)")
    b.add_argument("--ratio", type=float, default=0.5, help="share of image tokens merged away, in [0, 1)")
    b.add_argument("--backend", choices=BACKENDS, default="onnxruntime", help="engine backend (default: onnxruntime)")
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
    v.add_argument("artifact", help="artifact folder (from toma-export build)")
    v.add_argument("--steps", type=int, default=3, help="denoising steps compared, each on fresh random inputs (default: 3)")
    v.add_argument("--seed", type=int, default=1234, help="seed of the random inputs (default: 1234)")
    v.add_argument("--tol", type=float, default=1e-3, help="max abs error allowed against eager ToMA")
    v.set_defaults(handler=_cmd_verify)

    r = sub.add_parser("run", help="generate an image with the full pipeline around an artifact",
                       description="Assemble the model's pipeline (tiny VAE and scheduler for embedded models, prompt "
                       "embeddings instead of text encoders) with the artifact as its denoiser, and write a PNG.")
    r.add_argument("artifact", help="artifact folder (from toma-export build)")
    r.add_argument("--steps", type=int, default=10, help="denoising steps (default: 10)")
    r.add_argument("--seed", type=int, default=0, help="seed of the latents and prompt embeddings (default: 0)")
    r.add_argument("--out", default="image.png", help="PNG file to write (default: image.png)")
    r.set_defaults(handler=_cmd_run)
