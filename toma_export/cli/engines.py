"""``build`` / ``verify`` / ``run``: artifacts from the command line.

The work is done by :func:`toma_export.engines.build.build_artifact`,
:func:`toma_export.engines.verify.verify_artifact` and :func:`toma_export.engines.run.run_artifact`,
imported when a command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from toma_export.cli._choices import MODEL_HELP
from toma_export.cli.argtypes import MAX_SEED, OneOf, guidance, int_in, nonneg_float, path_arg, text_arg
from toma_export.cli.config_options import add_config_options, config_from_args
from toma_export.input_rules import MAX_BATCH, MAX_GUIDANCE, MAX_STEPS
from toma_export.vocabulary import ENGINE_BACKENDS, PRECISIONS, SELECTIONS, VERIFY_TOLERANCES

_PRECISION_HINT = f"--dtype {'|'.join(PRECISIONS)} (or --fp16 / --bf16 alone)"


_tol = nonneg_float("--tol", "--tol 1e-3")


def _cmd_build(args: argparse.Namespace) -> int:
    from toma_export.engines.build import BuildRequest, build_artifact

    config = config_from_args(args)
    req = BuildRequest(
        model=args.model, config=config, backend=args.backend, height=args.height, width=args.width,
        frames=args.frames, batch=args.batch, out=Path(args.out), selection=args.selection, precision=args.precision,
        force=args.force, dynamic_batch=args.dynamic_batch, revision=args.revision, variant=args.variant,
        subfolder=args.subfolder,
    )
    folder = build_artifact(req, progress=not args.quiet)
    clip = f", {args.frames} frames" if args.frames != 1 else ""
    print(f"built {folder} ({args.backend}, {args.precision}{clip}, method {config.method}, ratio {config.ratio}, "
          f"tile {config.tile[0]}x{config.tile[1]}, merge {','.join(s.value for s in config.sublayers) or 'nothing'}, "
          f"max_downsample {config.max_downsample or 'auto'})")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from toma_export.engines.verify import verify_artifact

    ok, rows = verify_artifact(args.artifact, steps=args.steps, seed=args.seed, tol=args.tol, model=args.model)
    tol = rows[0]["tol"] if rows else args.tol
    print(f"{'step':>4} {'variant':>7} {'max|Δ| eager':>13} {'mean|Δ| eager':>14} {'max|Δ| unmerged':>16} {'mean|Δ| unmerged':>17}")
    for r in rows:
        print(f"{r['step']:>4} {r['variant']:>7} {r['max_vs_eager']:>13.2e} {r['mean_vs_eager']:>14.2e} "
              f"{r['max_vs_unmerged']:>16.2e} {r['mean_vs_unmerged']:>17.2e}")
    print(("PASS" if ok else "FAIL") + f": engine vs eager ToMA (toma_export.apply) within {tol:g} max abs"
          + ("" if ok else " violated"))
    return 0 if ok else 1


def _cmd_run(args: argparse.Namespace) -> int:
    from toma_export.engines.run import run_artifact
    from toma_export.errors import ToMAError

    out = Path(args.out)
    if out.is_dir():
        raise ToMAError(f"--out {out} is a folder; give the PNG file to write, e.g. --out {out / 'image.png'}.")
    if not out.parent.is_dir() and out.parent.exists():
        raise ToMAError(f"--out {out}: {out.parent} is not a folder; give a PNG path in a folder.")
    res = run_artifact(args.artifact, steps=args.steps, seed=args.seed, out=args.out, prompt=args.prompt,
                       negative_prompt=args.negative_prompt, guidance_scale=args.guidance_scale, model=args.model)
    print(f"wrote {args.out} ({res.steps} steps in {res.seconds:.2f} s; {res.selections} selection step(s))")
    return 0


def register(sub: Any) -> None:
    b = sub.add_parser("build", help="build an engine artifact folder (ONNX Runtime, AOTInductor, TensorRT)",
                       description="Capture, rewrite (ToMA) and export a denoiser to an artifact folder with a manifest.")
    b.add_argument("model", type=path_arg("MODEL", "sdxl-tiny"), help=MODEL_HELP)
    b.add_argument("--revision", help="Hub ids: branch, tag or commit to load (default: main)")
    b.add_argument("--variant", help="weights variant to load, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors)")
    b.add_argument("--subfolder", help="folder of the denoiser inside a pipeline (default: unet or transformer)")
    b.add_argument("--backend", choices=ENGINE_BACKENDS, default="onnxruntime", help="engine backend (default: onnxruntime)")
    b.add_argument("--height", type=int, default=256,
                   help="image height in pixels, a multiple of 8 (UNets) or 16 (Flux), at most 4096 (default: 256)")
    b.add_argument("--width", type=int, default=256, help="image width in pixels, as --height (default: 256)")
    b.add_argument("--frames", type=int, default=1,
                   help="pixel frames of the clip, for video models (Wan: 4k+1, e.g. 17; default: 1, an image); "
                   "recorded in the manifest, so verify needs no flag")
    b.add_argument("--batch", type=int_in(1, MAX_BATCH + 1, "--batch", "--batch 2"), default=2,
                   help=f"denoiser batch, 1 to {MAX_BATCH} (SDXL with guidance: 2 per image; default: 2)")
    b.add_argument("--out", required=True, type=path_arg("--out", "engines/out/sdxl"), help="artifact folder to create")
    b.add_argument("--selection", choices=SELECTIONS, default="unrolled",
                   help="ONNX selection as standard ops (ONNX Runtime) or a toma plugin node (TensorRT)")
    b.add_argument("--dtype", "--precision", dest="precision", choices=PRECISIONS, default="fp32", action=OneOf,
                   hint=_PRECISION_HINT,
                   help="dtype of the engine's weights and activations: the model is cast to it before capture "
                   "(default: fp32; bf16 on ONNX Runtime computes each op in fp32 between bf16 casts)")
    b.add_argument("--fp16", dest="precision", action=OneOf, const="fp16", hint=_PRECISION_HINT,
                   help="same as --dtype fp16")
    b.add_argument("--bf16", dest="precision", action=OneOf, const="bf16", hint=_PRECISION_HINT,
                   help="same as --dtype bf16")
    b.add_argument("--force", action="store_true", help="replace an existing artifact folder")
    b.add_argument("--dynamic-batch", action="store_true",
                   help="one artifact for any batch at this resolution (the batch is symbolic; build at --batch >= 2)")
    b.add_argument("--quiet", action="store_true", help="no progress bar (it is also off when stderr is not a terminal)")
    add_config_options(b)
    b.set_defaults(handler=_cmd_build)

    v = sub.add_parser("verify", help="compare an artifact against the eager reference on fresh inputs",
                       description="Run the artifact and eager ToMA (in the artifact's dtype) on the same fresh inputs "
                       "for a few steps (batch, resolution and frames as the manifest records them); print errors "
                       "against eager ToMA and against the unmerged model; exit 1 on mismatch.")
    v.add_argument("artifact", type=path_arg("ARTIFACT", "engines/out/sdxl"), help="artifact folder (from toma-export build)")
    v.add_argument("--steps", type=int_in(1, MAX_STEPS + 1, "--steps", "--steps 3"), default=3,
                   help=f"denoising steps compared, 1 to {MAX_STEPS}, each on fresh random inputs (default: 3)")
    v.add_argument("--seed", type=int_in(0, MAX_SEED, "--seed", "--seed 1234"), default=1234,
                   help="seed of the random inputs, in [0, 2**63) (default: 1234)")
    v.add_argument("--tol", type=_tol, default=None,
                   help="max abs error allowed against eager ToMA (default by the artifact's precision: "
                   + ", ".join(f"{k} {t:g}" for k, t in VERIFY_TOLERANCES.items()) + ")")
    v.add_argument("--model", type=path_arg("--model", "models/sdxl"), help="where the artifact's model is now (local folder or Hub id), if it moved since the "
                   "build; its class, config and weights must still match the manifest")
    v.set_defaults(handler=_cmd_verify)

    r = sub.add_parser("run", help="generate an image with the full pipeline around an artifact",
                       description="Assemble the model's pipeline (a saved pipeline's own scheduler, VAE, text encoders "
                       "and tokenizers; for embedded models a tiny VAE and scheduler and deterministic prompt embeddings) "
                       "with the artifact as its denoiser, and write a PNG.")
    r.add_argument("artifact", type=path_arg("ARTIFACT", "engines/out/sdxl"), help="artifact folder (from toma-export build)")
    r.add_argument("--steps", type=int_in(1, MAX_STEPS + 1, "--steps", "--steps 20"), default=10,
                   help=f"denoising steps, 1 to {MAX_STEPS} (default: 10)")
    r.add_argument("--seed", type=int_in(0, MAX_SEED, "--seed", "--seed 0"), default=0,
                   help="seed of the latents and prompt embeddings, in [0, 2**63) (default: 0)")
    r.add_argument("--out", default="image.png", type=path_arg("--out", "image.png"),
                   help="PNG file to write, not a folder (default: image.png)")
    r.add_argument("--prompt", type=text_arg("--prompt"), help="text prompt: encoded by the pipeline's own text encoders; embedded tiny models map "
                   "it to deterministic embeddings (a seed from the prompt's SHA-256)")
    r.add_argument("--negative-prompt", type=text_arg("--negative-prompt"), help="negative prompt (pipelines with classifier-free guidance)")
    r.add_argument("--guidance-scale", type=guidance("--guidance-scale"),
                   help=f"classifier-free guidance scale, finite, 0 to {MAX_GUIDANCE:g} (default: the pipeline's)")
    r.add_argument("--model", type=path_arg("--model", "models/sdxl"),
                   help="where the artifact's model is now (local folder or Hub id), if it moved since the build: "
                   "the pipeline is loaded from here instead of the place the manifest records")
    r.set_defaults(handler=_cmd_run)
