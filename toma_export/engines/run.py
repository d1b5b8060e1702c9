"""Generate with an artifact: the model's pipeline with the artifact as its denoiser.

``toma-export run`` (:mod:`toma_export.cli.engines`) and ``toma-export demo`` use these.

Which pipeline: when the artifact's model came from a pipeline (a local folder with
``model_index.json``, or a Hub pipeline id), that pipeline is loaded as the user saved it — its
scheduler, VAE, text encoders and tokenizers — with the artifact in place of its ``unet`` /
``transformer`` (the denoiser's weights are not loaded). Embedded models (and bare model folders)
get the embedded encoder-free pipeline, conditioned by deterministic prompt embeddings
(:func:`toma_export.models.pipelines.prompt_embeddings_for`).
"""

from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path
from typing import Any

import torch

from toma_export.engines.manifest import ModelRecord
from toma_export.engines.load import LoadedArtifact, load_artifact
from toma_export.errors import ToMAError
from toma_export.input_rules import check_guidance, check_path, check_text
from toma_export.models.spec import ModelSpec, spec_for

__all__ = ["RunResult", "generate", "pipeline_for", "run_artifact", "save_png"]

#: SDXL pipelines' default ``guidance_scale`` (classifier-free guidance doubles the denoiser batch when > 1).
SDXL_GUIDANCE = 5.0


def _load_source_pipeline(model: ModelRecord, shell: torch.nn.Module) -> Any:
    """The pipeline the artifact's model came from (it has a ``component``), with ``shell`` (weightless) as
    that denoiser."""
    from diffusers import DiffusionPipeline

    from toma_export.models.registry import _Hub

    kwargs: dict[str, Any] = {str(model.component): shell}
    if model.variant:
        kwargs["variant"] = model.variant
    root = model.name
    if model.source == "hub":
        revision = model.load_revision
        hub = _Hub(root, revision)
        kwargs.update(revision=revision, cache_dir=hub.cache_dir, local_files_only=hub.local_files_only)
    else:
        kwargs["local_files_only"] = True
        if not (Path(root) / "model_index.json").is_file():
            raise ToMAError(
                f"the artifact was built from the pipeline folder {root}, which is no longer there; "
                "move it back or rebuild the artifact from its new place."
            )
    try:
        return DiffusionPipeline.from_pretrained(root, **kwargs)
    except (OSError, ValueError) as exc:
        raise ToMAError(f"the pipeline {root!r} the artifact was built from could not be loaded: {exc}") from exc


def pipeline_for(loaded: LoadedArtifact, *, seed: int = 0, model: str | Path | None = None) -> Any:
    """A pipeline whose denoiser is the artifact (weights of the denoiser are not loaded in torch).

    The artifact's own pipeline (scheduler, VAE, text encoders, tokenizers) when its model came from a
    pipeline folder or Hub pipeline id; else the embedded encoder-free pipeline (``seed`` seeds its VAE).
    ``model``: where that model is now (the user's ``--model``), instead of the recorded source. Either
    is loaded only after its denoiser's class and config match the manifest
    (:mod:`toma_export.engines.model_source`).
    """
    from toma_export.engines.consistency import check_shapes_fit_model
    from toma_export.engines.model_source import source_shell
    from toma_export.engines.swap import swap_denoiser
    from toma_export.models.pipelines import build_pipeline

    shell, m = source_shell(loaded.manifest, model)
    check_shapes_fit_model(loaded.folder, loaded.manifest, shell)
    pipe = _load_source_pipeline(m, shell) if m.component else build_pipeline(shell, seed=seed)
    return swap_denoiser(pipe, loaded, check=True)


def generate(
    pipe: Any,
    *,
    steps: int,
    seed: int,
    height: int,
    width: int,
    batch: int = 1,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    guidance_scale: float | None = None,
    spec: ModelSpec | None = None,
) -> tuple[torch.Tensor, float]:
    """Run ``pipe`` once: ``batch`` images at ``height x width``, ``steps`` steps, generator seeded ``seed``.

    With ``prompt`` the conditioning is :func:`~toma_export.models.pipelines.prompt_embeddings_for`
    (the pipeline's own text encoders, or deterministic embeddings of the prompt for the embedded
    encoder-free pipelines); without one, a pipeline with text encoders gets the empty prompt and an
    encoder-free one random embeddings seeded with ``seed``. ``guidance_scale``: the pipeline's
    (SDXL: classifier-free guidance, default 5.0; Flux: distilled guidance, default 1.0 here).
    ``spec``: the denoiser's family (an artifact's manifest records it; default: the pipeline's).
    """
    from toma_export.models.pipelines import has_text_encoders, prompt_embeddings, prompt_embeddings_for

    spec = spec or spec_for(pipe)

    if prompt is None and not has_text_encoders(pipe):
        if negative_prompt is not None:
            raise ToMAError("a negative prompt needs a prompt; pass --prompt as well.")
        cond = prompt_embeddings(pipe, batch=batch, seed=seed)
    else:
        cond = dict(prompt_embeddings_for(pipe, prompt or "", negative_prompt), num_images_per_prompt=batch)
    kwargs: dict[str, Any] = dict(
        cond, num_inference_steps=steps, height=height, width=width,
        output_type="pt", generator=torch.Generator().manual_seed(seed),
    )
    if guidance_scale is not None:
        kwargs["guidance_scale"] = float(guidance_scale)
    elif not spec.cfg_doubles_batch and not has_text_encoders(pipe):
        kwargs["guidance_scale"] = 1.0  # the embedded Flux pipeline (no guidance embedding)
    denoiser = getattr(pipe, spec.denoiser_attribute)
    if hasattr(denoiser, "reset"):
        denoiser.reset()
    start = time.perf_counter()
    with torch.no_grad():
        images = pipe(**kwargs).images
    return images, time.perf_counter() - start


def save_png(image: torch.Tensor, path: Path) -> None:
    """Write ``(3, H, W)`` in [0, 1] as PNG atomically (no half-written image), with the user's umask."""
    from PIL import Image

    from toma_export.fsutil import atomic_write_bytes

    path = Path(path)
    if path.is_dir():
        raise ToMAError(f"--out {path} is a folder; give a file name such as {path / 'image.png'}.")
    array = (image.detach().float().permute(1, 2, 0).clamp(0, 1) * 255).round().byte().cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:
        raise ToMAError(f"cannot write {path}: {exc.strerror or exc}. Choose another --out.") from exc


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What :func:`run_artifact` produced."""

    path: Path
    steps: int
    seconds: float
    selections: int


def run_artifact(
    folder: str | Path,
    *,
    steps: int = 10,
    seed: int = 0,
    out: str | Path = "image.png",
    prompt: str | None = None,
    negative_prompt: str | None = None,
    guidance_scale: float | None = None,
    model: str | Path | None = None,
) -> RunResult:
    """Generate one image through the full pipeline around the artifact at ``folder``; write it to ``out`` as PNG.

    The pipeline is :func:`pipeline_for`'s: the artifact's own saved/Hub pipeline (its scheduler, VAE,
    text encoders, tokenizers) or the embedded one. ``prompt``/``negative_prompt`` condition the image
    (see :func:`generate`); ``guidance_scale`` is the pipeline's (SDXL: > 1 runs classifier-free
    guidance, a denoiser batch of 2 per image, so such artifacts are built with ``--batch 2``).
    ``model``: where the artifact's model is now, if it moved (see :func:`pipeline_for`).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ToMAError(f"steps must be a positive integer (got {steps!r}).")
    if guidance_scale is not None:
        guidance_scale = check_guidance(guidance_scale, "--guidance-scale")
    for text, flag in ((prompt, "--prompt"), (negative_prompt, "--negative-prompt")):
        if text is not None:
            check_text(text, flag)
    check_path(str(out), "--out", "image.png")
    loaded = load_artifact(folder)
    shapes, spec = loaded.manifest.shapes, loaded.manifest.model.spec
    if shapes.frames > 1:
        raise ToMAError(
            f"{folder} was built for a {shapes.frames}-frame clip (a video denoiser); `toma-export run` "
            f"generates images (SDXL and Flux pipelines) and has no video pipeline. Check the artifact with "
            f"`toma-export verify {folder}` instead."
        )
    pipe = pipeline_for(loaded, seed=seed, model=model)
    pipe.set_progress_bar_config(desc="denoising")
    # CFG doubles the batch inside SDXL pipelines: the artifact's batch is the denoiser's batch.
    cfg_factor = 2 if spec.cfg_doubles_batch and (SDXL_GUIDANCE if guidance_scale is None else guidance_scale) > 1 else 1
    if shapes.batch % cfg_factor:
        raise ToMAError(
            f"this SDXL artifact was built for denoiser batch {shapes.batch}, but classifier-free guidance "
            "runs the denoiser on 2 x images; build with --batch 2 (one image) or another even batch, or "
            "run with --guidance-scale 1 (no guidance)."
        )
    images, seconds = generate(
        pipe, steps=steps, seed=seed, height=shapes.height, width=shapes.width,
        batch=shapes.batch // cfg_factor, prompt=prompt, negative_prompt=negative_prompt,
        guidance_scale=guidance_scale, spec=spec,
    )
    path = Path(out)
    save_png(images[0], path)
    return RunResult(path, steps, seconds, loaded.runner.selections)
