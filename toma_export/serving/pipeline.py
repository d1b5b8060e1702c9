"""Batched text-to-image generation with per-request state, for the served pipeline.

:class:`BatchedGenerator` takes the generations of one dynamic batch (several requests), groups those
that can share a pipeline call (same step count, guidance scale and conditioning kind:
:meth:`GenerationRequest.group_key`), and runs each group as one pipeline call with

- per-request prompt embeddings stacked along the batch (each request's own prompt),
- a per-request ``torch.Generator`` list (each request's own seed: the initial noise of row ``i`` is
  what a solo call with that seed draws),
- one fresh destination schedule for the call: the denoiser starts every pipeline call at step 0
  (``ToMADenoiser.reset()`` / diffusers' stateful-hook reset for eager ToMA), and ToMA selects
  destinations per batch element, so every request in the call gets its own destinations from its
  own latents, on the same step schedule as if it were served alone.

Hence a batched response equals the same request served alone up to floating-point reassociation
(measured ~1e-6 on [0, 1] images; the contract is <= 1e-3), and nothing is carried between calls
(``tests/test_serving.py`` proves both, and A-B-A).

Sources: an artifact folder (its engine through :class:`toma_export.runtime.ToMADenoiser`), an
embedded model name or local folder (eager ToMA via :func:`toma_export.apply`), or a pipeline built
elsewhere (the exported repository's BLS denoiser).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from toma_export.errors import ToMAError
from toma_export.models.spec import ModelSpec, spec_for
from toma_export.serving.contract import DEFAULT_GUIDANCE, GenerationRequest, Limits

__all__ = ["BatchedGenerator", "generator_for_source", "to_uint8"]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[n, 3, H, W]`` in [0, 1] -> ``[n, H, W, 3]`` uint8 (rounded)."""
    return (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


@dataclass
class BatchedGenerator:
    """Runs generations on one pipeline, batching what can share a call (see the module doc)."""

    pipe: Any
    height: int
    width: int
    #: Images per pipeline call: ``None`` any; an int a maximum (``exact`` pads to it: fixed-batch engines).
    max_images: int | None = None
    exact: bool = False
    #: Denoiser batch the engine was built for (fixed-batch artifacts), to refuse what cannot fit.
    fixed_denoiser_batch: int | None = None
    #: The denoiser's family facts: an artifact's manifest records them; default: resolved from ``pipe`` once.
    spec: ModelSpec | None = None
    calls: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.spec is None:
            self.spec = spec_for(self.pipe)

    @property
    def model_spec(self) -> ModelSpec:
        assert self.spec is not None  # set in __post_init__
        return self.spec

    def limits(self, max_steps: int, max_prompt_bytes: int) -> Limits:
        """The request limits of this pipeline: negative prompts where it runs true classifier-free
        guidance, and its own ``__call__``'s default guidance scale."""
        default = inspect.signature(self.pipe.__call__).parameters.get("guidance_scale")
        guidance = default.default if default is not None and isinstance(default.default, (int, float)) else DEFAULT_GUIDANCE
        return Limits(max_steps=max_steps, max_prompt_bytes=max_prompt_bytes,
                      negative_prompts=self.model_spec.cfg_doubles_batch, default_guidance=float(guidance))

    def _cfg_factor(self, guidance: float) -> int:
        """Denoiser rows per image: SDXL runs classifier-free guidance as a batch of 2 when guidance > 1."""
        spec = self.model_spec
        if not spec.cfg_doubles_batch:
            return 1
        unet = getattr(self.pipe, spec.denoiser_attribute)
        return 2 if guidance > 1.0 and getattr(unet.config, "time_cond_proj_dim", None) is None else 1

    def check(self, req: GenerationRequest) -> None:
        """Refuse what this engine cannot run (a fixed-batch engine and a guidance that changes the batch)."""
        if self.fixed_denoiser_batch is not None and self.fixed_denoiser_batch % self._cfg_factor(req.guidance_scale):
            raise ToMAError(
                f"this engine runs the denoiser at batch {self.fixed_denoiser_batch}; guidance_scale "
                f"{req.guidance_scale} needs an even batch. Send guidance_scale <= 1 or serve an artifact built "
                "with --batch 2 or --dynamic-batch."
            )

    def _chunk_size(self, guidance: float) -> int | None:
        cfg = self._cfg_factor(guidance)
        if self.fixed_denoiser_batch is not None:
            return self.fixed_denoiser_batch // cfg
        return None if self.max_images is None else max(1, self.max_images // cfg)

    def _embeddings(self, req: GenerationRequest) -> dict[str, Any]:
        from toma_export.models.pipelines import prompt_embeddings_for

        return prompt_embeddings_for(self.pipe, req.prompt, req.negative_prompt)

    def _call(self, reqs: Sequence[GenerationRequest], pad_to: int | None) -> torch.Tensor:
        rows = list(reqs) + [reqs[-1]] * ((pad_to or len(reqs)) - len(reqs))
        parts = [self._embeddings(r) for r in rows]
        kwargs: dict[str, Any] = {}
        for key in parts[0]:
            values = [p[key] for p in parts]
            kwargs[key] = torch.cat(values) if isinstance(values[0], torch.Tensor) else values
        kwargs.update(
            num_inference_steps=rows[0].steps, guidance_scale=rows[0].guidance_scale, height=self.height,
            width=self.width, output_type="pt", generator=[torch.Generator().manual_seed(r.seed) for r in rows],
        )
        denoiser = getattr(self.pipe, self.model_spec.denoiser_attribute)
        if hasattr(denoiser, "reset"):
            denoiser.reset()  # a fresh destination schedule for this call (also reset after every pipeline call)
        with torch.no_grad():
            images = self.pipe(**kwargs).images
        self.calls += 1
        return images[: len(reqs)]

    def generate_float(self, reqs: Sequence[GenerationRequest]) -> list[torch.Tensor]:
        """Images ``[3, H, W]`` in [0, 1], in the order of ``reqs``."""
        out: list[torch.Tensor | None] = [None] * len(reqs)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, r in enumerate(reqs):
            self.check(r)
            groups.setdefault(r.group_key(), []).append(i)
        for idx in groups.values():
            size = self._chunk_size(reqs[idx[0]].guidance_scale) or len(idx)
            for start in range(0, len(idx), size):
                chunk = idx[start : start + size]
                images = self._call([reqs[i] for i in chunk], size if self.fixed_denoiser_batch else None)
                for i, image in zip(chunk, images):
                    out[i] = image
        return [o for o in out if o is not None]

    def generate(self, reqs: Sequence[GenerationRequest]) -> list[np.ndarray]:
        """uint8 ``[H, W, 3]`` images, in the order of ``reqs``."""
        return [to_uint8(im[None])[0] for im in self.generate_float(reqs)]


def generator_for_source(
    source: str | Path, *, height: int = 64, width: int = 64, ratio: float = 0.5, seed: int = 0
) -> BatchedGenerator:
    """A generator for an artifact folder (engine through ``ToMADenoiser``; its resolution) or a model
    name/folder (eager ToMA at ``ratio``, at ``height`` x ``width``). Raises the loader's
    :class:`~toma_export.engines.artifact.ArtifactError` for a corrupted or mismatched artifact."""
    path = Path(source)
    if (path / "manifest.json").exists() or (path.is_dir() and not (path / "model_index.json").exists()
                                              and not (path / "config.json").exists()):
        from toma_export.engines.load import load_artifact
        from toma_export.engines.run import pipeline_for

        loaded = load_artifact(path)
        shapes, spec = loaded.manifest.shapes, loaded.manifest.model.spec
        pipe = pipeline_for(loaded, seed=seed)
        pipe.set_progress_bar_config(disable=True)
        if shapes.dynamic_batch:
            return BatchedGenerator(pipe, shapes.height, shapes.width, max_images=shapes.batch_max, spec=spec)
        return BatchedGenerator(pipe, shapes.height, shapes.width, fixed_denoiser_batch=shapes.batch, exact=True,
                                spec=spec)
    import toma_export
    from toma_export.config import ToMAConfig
    from toma_export.models.pipelines import build_pipeline

    pipe = build_pipeline(str(source), seed=seed)
    pipe.set_progress_bar_config(disable=True)
    if ratio > 0:
        toma_export.apply(pipe, ToMAConfig(ratio=ratio))
    return BatchedGenerator(pipe, height, width)
