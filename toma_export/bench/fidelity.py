"""Fidelity of merged models against the unmerged model on real images at latent scale.

There are no VAE weights here, so images are "encoded" by a fixed, deterministic stand-in:
centre-crop to the target aspect, resize to the pixel size, average-pool by 8 (the VAE factor)
and map RGB to the latent channels with a fixed 3->C matrix (seeded, unit-norm rows), then scale
to unit variance, laid out as the model's own example latents are (:func:`photo_latents`: 4-D,
video 5-D, or packed 2x2 into tokens as Flux, FLUX.2 and Qwen-Image pipelines pack them; per element of a
per-sample list, Z-Image's ``x``). The latent input is found by its shape (:func:`latent_key`), not its name.
Noise is mixed in at several timesteps: DDPM ``sqrt(abar)·x0 + sqrt(1-abar)·eps`` with SD's scaled-linear
betas for UNets, flow matching ``(1-s)·x0 + s·eps`` (s = t/1000) for transformers, the timestep passed on
the model's own scale (:func:`model_timestep`). Text conditioning is a fixed random embedding (no text
encoder). Each merged model's output is compared to the unmerged model's on the same input: relative L2
error and cosine similarity of the main output (:func:`~toma_export.models.outputs.first_output`).
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
from toma_export.graph.provenance import TEXT_INPUT_PREFIX
from toma_export.models.inputs import VAE_FACTOR, example_inputs
from toma_export.models.outputs import first_output as first
from toma_export.models.spec import spec_for

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


#: A latent input: one batched tensor, or a per-sample list of tensors without the batch axis (Z-Image's ``x``).
Latents = torch.Tensor | list[torch.Tensor]

#: Names a denoiser's forward gives its timestep (diffusers: ``timestep``; Z-Image: ``t``).
TIMESTEP_KEYS = ("timestep", "t")

def _layout(shape: tuple[int, ...], height: int, width: int) -> str | None:
    """How a batched latent of ``shape`` carries a ``height x width`` image: ``"image"`` ``(B, C, H/8, W/8)``,
    ``"video"`` ``(B, C, F, H/8, W/8)``, ``"packed"`` ``(B, (H/16)(W/16), 4C)`` (2x2 per token), else None."""
    h, w = height // VAE_FACTOR, width // VAE_FACTOR
    if len(shape) == 4 and shape[2:] == (h, w):
        return "image"
    if len(shape) == 5 and shape[3:] == (h, w):
        return "video"
    if len(shape) == 3 and shape[1] == (h // 2) * (w // 2) and shape[2] % 4 == 0:
        return "packed"
    return None


def _batched(value: Latents) -> list[torch.Tensor]:
    """A latent as batched tensors: the tensor itself, or each per-sample list element with a batch axis of 1."""
    return [value] if isinstance(value, torch.Tensor) else [v.unsqueeze(0) for v in value]


def _like(value: Latents, parts: list[torch.Tensor]) -> Latents:
    """``parts`` (from :func:`_batched`) back in the container of ``value``."""
    return parts[0] if isinstance(value, torch.Tensor) else [p.squeeze(0) for p in parts]


def _tensors(value: Any) -> list[torch.Tensor] | None:
    """An input's tensors if it is a tensor or a non-empty list/tuple of tensors, else None."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return list(value)
    return None


def _describe(template: dict[str, Any]) -> str:
    """Each input's name and shape(s), so an error says what the model was given."""

    def one(v: Any) -> str:
        ts = _tensors(v)
        if ts is None:
            return type(v).__name__
        shapes = ", ".join(str(tuple(t.shape)) for t in ts)
        return shapes if isinstance(v, torch.Tensor) else f"[{shapes}]"

    return ", ".join(f"{k}: {one(v)}" for k, v in template.items())


def latent_key(template: dict[str, Any], height: int, width: int, in_channels: int | None = None) -> str:
    """The example inputs' latent argument, found by shape rather than name (``sample``, ``hidden_states``,
    Z-Image's ``x``): the floating-point input (a tensor, or a per-sample list of them) that carries the
    ``height x width`` image as one of :func:`_layout`'s layouts. Text inputs are never latents, by the
    rule the grid discovery uses (``encoder_hidden_states*``). Where text features happen to fit a layout
    too (Z-Image's per-sample ``cap_feats`` ``(L, D)`` when L equals the packed token count), the
    input as wide as the model's ``in_channels`` wins: latents carry it, text does not."""
    found: dict[str, int] = {}
    for key, value in template.items():
        ts = _tensors(value)
        if key.startswith(TEXT_INPUT_PREFIX) or ts is None or not all(t.is_floating_point() for t in ts):
            continue
        batched = _batched(value)
        kinds = {_layout(tuple(b.shape), height, width) for b in batched}
        if len(kinds) == 1 and (kind := kinds.pop()) is not None:
            found[key] = int(batched[0].shape[2 if kind == "packed" else 1])
    if len(found) > 1 and in_channels is not None:
        found = {k: c for k, c in found.items() if c == in_channels} or found
    if len(found) == 1:
        return next(iter(found))
    why = f"several ({', '.join(found)})" if found else "none"
    raise ValueError(
        f"no single latent input at {height}x{width} px: {why} of the inputs ({_describe(template)}) is laid out as "
        f"(B, C, {height // VAE_FACTOR}, {width // VAE_FACTOR}), (B, C, F, {height // VAE_FACTOR}, {width // VAE_FACTOR}) "
        "or 2x2-packed (B, N, 4C) (or a per-sample list of those without B), so the stand-in encoder cannot place a photo."
    )


def timestep_key(template: dict[str, Any]) -> str:
    """The example inputs' timestep argument (one of :data:`TIMESTEP_KEYS`)."""
    key = next((k for k in TIMESTEP_KEYS if isinstance(template.get(k), torch.Tensor)), None)
    if key is None:
        raise ValueError(f"no timestep input ({' / '.join(TIMESTEP_KEYS)}) among the inputs ({_describe(template)})")
    return key


def photo_latents(pixels: torch.Tensor, like: Latents, height: int, width: int) -> Latents:
    """``(1, 3, H, W)`` pixels as latents in the layout of ``like`` (the model's example latents), so one
    stand-in encoder serves every family: ``(B, C, h, w)`` maps to C channels at 1/8 scale (UNets,
    SD3); ``(B, C, F, h, w)`` is a still clip of F latent frames (video); ``(B, N, D)`` with N =
    (H/16)(W/16) tokens is D/4 channels packed 2x2 per token (Flux, FLUX.2, Qwen-Image). A per-sample
    list (Z-Image's ``(C, F, h, w)`` elements) gets the photo in each element."""
    parts = []
    for b in _batched(like):
        kind = _layout(tuple(b.shape), height, width)
        if kind == "image":
            parts.append(encode(pixels, b.shape[1]))
        elif kind == "video":
            parts.append(encode(pixels, b.shape[1]).unsqueeze(2).expand(-1, -1, b.shape[2], -1, -1).contiguous())
        elif kind == "packed":
            parts.append(pack_flux(encode(pixels, b.shape[2] // 4)))
        else:
            raise ValueError(
                f"latents shaped {tuple(b.shape)} at {height}x{width} px are none of (B, C, h, w), (B, C, F, h, w) or "
                "2x2-packed (B, N, 4C): the stand-in encoder cannot lay a photo out for this model."
            )
    return _like(like, parts)


def model_timestep(model: torch.nn.Module, example: torch.Tensor, t: int) -> float:
    """Step ``t`` of 1000 on ``model``'s own timestep scale (:attr:`ModelSpec.timestep`). DDPM (UNets):
    ``t``. Flow matching: noise level s = t/1000, reversed where the spec says so (Z-Image), else s itself
    where the example timestep is at most 1 (Flux, FLUX.2, Qwen-Image pipelines pass it so) and 1000 s
    otherwise (SD3, Wan)."""
    convention = spec_for(model).timestep
    if convention == "ddpm":
        return float(t)
    s = t / 1000
    if convention == "flow-reversed":
        return 1.0 - s
    return s if float(example.max()) <= 1.0 else 1000.0 * s


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

    UNets get DDPM noise; transformers are flow-matching models, ``(1-s)·x0 + s·eps`` with s = t/1000.
    The timestep reaches the model on its own scale (:func:`model_timestep`)."""
    unet = spec_for(model).timestep == "ddpm"
    base = example_inputs(model, batch=1, height=height, width=width, seed=seed, frames=frames)
    key = latent_key(base, height, width, getattr(model.config, "in_channels", None))
    tkey = timestep_key(base)
    out = []
    for i, name in enumerate(images):
        pixels = load_image(name, height, width).unsqueeze(0)
        g = torch.Generator().manual_seed(seed + 1 + i)
        x0 = _batched(photo_latents(pixels, base[key], height, width))
        eps = [torch.randn(x.shape, generator=g) for x in x0]
        for t in timesteps:
            if unet:
                ab = alpha_bar(t)
                a, b = math.sqrt(ab), math.sqrt(1 - ab)
            else:
                a, b = 1 - t / 1000, t / 1000
            noisy = _like(base[key], [a * x + b * e for x, e in zip(x0, eps)])
            step = torch.full_like(base[tkey], model_timestep(model, base[tkey], t))
            out.append(Sample(name, t, dict(base, return_dict=False, **{key: noisy, tkey: step})))
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
    trajectory: bool = False,
) -> list[dict[str, Any]]:
    """Rows per config: mean/std/max relative error and mean/min cosine over ``inputs``.

    ``trajectory``: one generation per image instead of per input: an image's inputs run as
    consecutive steps in the order given (timesteps descending, as a sampler runs them), so steps
    after the first reuse destinations (and kept weights, ``weights="period"``) within the config's
    ``recompute_every``. Each step is still compared with the unmerged model on the same input.

    Outputs are compared by :func:`~toma_export.models.outputs.first_output`: for a per-sample list
    output (Z-Image) that is the first sample's tensor, which is the whole output since :func:`samples`
    builds batch 1. The reference is ``model`` unpatched. Each merged forward is a fresh generation (state reset),
    so selection runs on that input, unless ``trajectory``. ``model`` is left unpatched. A config ``apply`` refuses (a
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
            if spec_for(model).adapter is None:  # the graph hook captures at the first call
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
                for i, (s, ref) in enumerate(zip(inputs, refs)):
                    if not trajectory or i == 0 or inputs[i - 1].image != s.image:
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
