"""Fidelity of merged models against the unmerged model on real images at latent scale.

There are no VAE weights here, so images are "encoded" by a fixed, deterministic stand-in:
centre-crop to the target aspect, resize to the pixel size, average-pool by 8 (the VAE factor)
and map RGB to the latent channels with a fixed 3->C matrix (seeded, unit-norm rows), then scale
to unit variance, laid out as the model's own example latents are (:func:`photo_latents`: 4-D,
video 5-D, or packed 2x2 into tokens as Flux, FLUX.2 and Qwen-Image pipelines pack them). Noise is
mixed in at several timesteps: DDPM ``sqrt(abar)·x0 + sqrt(1-abar)·eps`` with SD's scaled-linear
betas for UNets, flow matching ``(1-s)·x0 + s·eps`` (s = t/1000) for transformers.
Text conditioning is a fixed random embedding (no text encoder). Each merged model's output is
compared to the unmerged model's on the same input: relative L2 error and cosine similarity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import toma_export
from toma_export.config import ToMAConfig
from toma_export.errors import ToMAError
from toma_export.models.inputs import VAE_FACTOR, example_inputs
from toma_export.models.outputs import first_output as first
from toma_export.models.registry import model_family

DEFAULT_IMAGES = ("astronaut", "coffee", "chelsea", "rocket")
DEFAULT_TIMESTEPS = (800, 300)


def load_image(name: str, height: int, width: int) -> torch.Tensor:
    """A scikit-image photo as ``(3, height, width)`` in [-1, 1]: centre-cropped to aspect, resized."""
    import skimage.data
    from skimage.transform import resize

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3].astype(np.float32) / 255.0
    h, w = img.shape[:2]
    target = width / height
    if w / h > target:
        cw = int(round(h * target))
        img = img[:, (w - cw) // 2 : (w - cw) // 2 + cw]
    else:
        ch = int(round(w / target))
        img = img[(h - ch) // 2 : (h - ch) // 2 + ch]
    img = resize(img, (height, width), anti_aliasing=True)
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() * 2 - 1


def projection(channels: int, seed: int = 0) -> torch.Tensor:
    """The fixed RGB -> latent map ``(channels, 3)``: seeded Gaussian rows normalised to unit length."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(channels, 3, generator=g)
    return w / w.norm(dim=1, keepdim=True)


def encode(pixels: torch.Tensor, channels: int) -> torch.Tensor:
    """``(B, 3, H, W)`` pixels -> ``(B, C, H/8, W/8)`` latents with zero mean and unit variance."""
    pooled = F.avg_pool2d(pixels, VAE_FACTOR)
    lat = torch.einsum("cr,brhw->bchw", projection(channels), pooled)
    return (lat - lat.mean()) / lat.std().clamp_min(1e-6)


def alpha_bar(t: int, steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> float:
    """SD's scaled-linear DDPM schedule: cumulative product of (1 - beta) up to step ``t``."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return float(torch.cumprod(1 - betas, 0)[t])


def pack_flux(lat: torch.Tensor) -> torch.Tensor:
    """``(B, 16, H, W)`` -> ``(B, H/2*W/2, 64)`` as diffusers' Flux pipeline packs latents."""
    b, c, h, w = lat.shape
    return lat.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


@dataclass
class Sample:
    """One model input: an image at one timestep."""

    image: str
    timestep: int
    kwargs: dict[str, Any]


def latent_key(template: dict[str, Any]) -> str:
    """The example inputs' latent argument: ``sample`` (UNets) or ``hidden_states`` (transformers)."""
    for key in ("sample", "hidden_states"):
        if isinstance(template.get(key), torch.Tensor):
            return key
    raise ValueError(f"no latent input (sample / hidden_states) among {sorted(template)}")


def photo_latents(pixels: torch.Tensor, like: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(1, 3, H, W)`` pixels as latents in the layout of ``like`` (the model's example latents), so one
    stand-in encoder serves every family: ``(B, C, h, w)`` maps to C channels at 1/8 scale (UNets,
    SD3); ``(B, C, F, h, w)`` is a still clip of F latent frames (video); ``(B, N, D)`` with N =
    (H/16)(W/16) tokens is D/4 channels packed 2x2 per token (Flux, FLUX.2, Qwen-Image)."""
    if like.ndim == 4:
        return encode(pixels, like.shape[1])
    if like.ndim == 5:
        return encode(pixels, like.shape[1]).unsqueeze(2).expand(-1, -1, like.shape[2], -1, -1).contiguous()
    tokens = (height // (2 * VAE_FACTOR)) * (width // (2 * VAE_FACTOR))
    if like.ndim == 3 and like.shape[1] == tokens and like.shape[2] % 4 == 0:
        return pack_flux(encode(pixels, like.shape[2] // 4))
    raise ValueError(
        f"latents shaped {tuple(like.shape)} at {height}x{width} px are none of (B, C, h, w), (B, C, F, h, w) or "
        "2x2-packed (B, N, 4C): the stand-in encoder cannot lay a photo out for this model."
    )


def samples(
    model: torch.nn.Module,
    images: Sequence[str],
    timesteps: Sequence[int],
    height: int,
    width: int,
    seed: int = 0,
    frames: int = 1,
) -> list[Sample]:
    """Noisy latent-scale inputs for every image x timestep (same noise per image across methods).

    UNets get DDPM noise and integer timesteps. Transformers are flow-matching models: noise level
    s = t/1000, passed on the scale the pipeline's own example inputs use (s itself where the example
    timestep is at most 1, as Flux/FLUX.2/Qwen-Image pipelines pass it; t for SD3 and Wan)."""
    unet = model_family(model) == "unet"
    base = example_inputs(model, batch=1, height=height, width=width, seed=seed, frames=frames)
    key = latent_key(base)
    step_scale = 1.0 if unet or float(base["timestep"].max()) <= 1.0 else 1000.0
    out = []
    for i, name in enumerate(images):
        pixels = load_image(name, height, width).unsqueeze(0)
        g = torch.Generator().manual_seed(seed + 1 + i)
        x0 = photo_latents(pixels, base[key], height, width)
        eps = torch.randn(x0.shape, generator=g)
        for t in timesteps:
            kw = dict(base, return_dict=False)
            if unet:
                ab = alpha_bar(t)
                kw.update(sample=math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps, timestep=torch.tensor(float(t)))
            else:
                s = t / 1000
                kw.update({key: (1 - s) * x0 + s * eps, "timestep": torch.full((1,), s * step_scale)})
            out.append(Sample(name, t, kw))
    return out


def compare(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Relative L2 error and cosine similarity of ``out`` against ``ref`` (flattened)."""
    o, r = out.double().flatten(), ref.double().flatten()
    rel = float((o - r).norm() / r.norm().clamp_min(1e-30))
    cos = float(F.cosine_similarity(o, r, dim=0))
    return rel, cos


def evaluate(
    model: torch.nn.Module,
    configs: Iterable[tuple[str, ToMAConfig]],
    inputs: Sequence[Sample],
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Rows per config: mean/std/max relative error and mean/min cosine over ``inputs``.

    The reference is ``model`` unpatched. Each merged forward is a fresh generation (state reset),
    so selection runs on that input. ``model`` is left unpatched. A config ``apply`` refuses (a
    method without an adapter for this family, no matched site) gets a row with ``refused``: why.
    """
    with torch.inference_mode():
        refs = [first(model(**s.kwargs)).clone() for s in inputs]
    if progress:
        progress(len(inputs))
    rows = []
    for label, cfg in configs:
        errs, coss = [], []
        try:
            toma_export.apply(model, cfg)
            if model_family(model) == "transformer":  # the graph hook captures at the first call
                with torch.inference_mode():
                    model(**inputs[0].kwargs)
        except ToMAError as exc:  # e.g. ToMeSD on a transformer without an adapter: a row saying why
            toma_export.remove(model)
            rows.append(dict(variant=label, method=cfg.method, ratio=cfg.ratio, refused=str(exc), n=0))
            if progress:
                progress(len(inputs))
            continue
        try:
            with torch.inference_mode():
                for s, ref in zip(inputs, refs):
                    toma_export.reset(model)
                    rel, cos = compare(first(model(**s.kwargs)), ref)
                    errs.append(rel)
                    coss.append(cos)
                    if progress:
                        progress(1)
        finally:
            toma_export.remove(model)
        e, c = np.array(errs), np.array(coss)
        rows.append(dict(
            variant=label, method=cfg.method, ratio=cfg.ratio, rel_error=float(e.mean()), rel_error_std=float(e.std()),
            rel_error_max=float(e.max()), cosine=float(c.mean()), cosine_min=float(c.min()), n=len(errs),
            per_timestep={int(t): float(np.mean([x for x, s in zip(errs, inputs) if s.timestep == t]))
                          for t in dict.fromkeys(s.timestep for s in inputs)},
        ))
    return rows


def frontier_points(fidelity_rows: list[dict[str, Any]], bench_rows: list[dict[str, Any]],
                    workload: str | None = None, backend: str = "eager") -> list[dict[str, Any]]:
    """Join fidelity rows with a bench's speed-ups on (variant or method, ratio).

    ``workload``: which bench workload's speed-ups to use (default: the first one in the file).
    """
    rows = [r for r in bench_rows if r.get("backend") == backend and r.get("speedup")]
    if workload is None and rows:
        workload = rows[0]["workload"]
    speed = {((r.get("variant") or r["method"]), round(r["ratio"], 6)): r["speedup"]
             for r in rows if r["workload"] == workload}
    points = []
    for f in fidelity_rows:
        sp = speed.get((f["variant"], round(f["ratio"], 6)))
        if sp is not None and not f.get("refused"):
            points.append(dict(f, speedup=sp, method=f["variant"], workload=workload))
    return points
