"""Generate with an artifact: the model's pipeline with the artifact as its denoiser.

``toma-export run`` (:mod:`toma_export.cli.engines`) and ``toma-export demo`` use these.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from toma_export.engines.load import LoadedArtifact, load_artifact
from toma_export.errors import ToMAError
from toma_export.models.registry import model_shell
from toma_export.runtime.wrapper import ToMADenoiser

__all__ = ["RunResult", "generate", "pipeline_for", "run_artifact", "save_png"]


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


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What :func:`run_artifact` produced."""

    path: Path
    steps: int
    seconds: float
    selections: int


def run_artifact(folder: str | Path, *, steps: int = 10, seed: int = 0, out: str | Path = "image.png") -> RunResult:
    """Generate one image through the full pipeline around the artifact at ``folder``; write it to ``out`` as PNG."""
    loaded = load_artifact(folder)
    shapes = loaded.manifest.shapes
    pipe = pipeline_for(loaded, seed=seed)
    pipe.set_progress_bar_config(desc="denoising")
    # CFG doubles the batch inside SDXL pipelines: the artifact's batch is the denoiser's batch.
    cfg_factor = 2 if hasattr(pipe, "unet") else 1
    if shapes["batch"] % cfg_factor:
        raise ToMAError(
            f"this SDXL artifact was built for denoiser batch {shapes['batch']}, but classifier-free guidance "
            "runs the denoiser on 2 x images; build with --batch 2 (one image) or another even batch."
        )
    images, seconds = generate(pipe, steps=steps, seed=seed, height=shapes["height"], width=shapes["width"],
                               batch=shapes["batch"] // cfg_factor)
    path = Path(out)
    save_png(images[0], path)
    return RunResult(path, steps, seconds, loaded.runner.selections)
