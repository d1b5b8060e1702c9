"""Example forward inputs for every denoiser family, at an image resolution in pixels: the one builder.

Each family's inputs are built as its pipeline builds them (the family: the model's
:class:`~toma_export.models.spec.ModelSpec`). Latents are at 1/8 of the image side (the VAE factor);
Flux, FLUX.2 and Qwen-Image pack 2x2 latents, so one image token per 16x16 pixels; Wan takes latent
frames (:func:`~toma_export.models.architectures.latent_frames`). Text conditioning is random prompt
embeddings (no tokenizer needed).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from toma_export.models.architectures import latent_frames
from toma_export.models.spec import PACKED_TOKEN_PIXELS, VAE_FACTOR, ModelSpec, spec_for

__all__ = ["VAE_FACTOR", "example_inputs", "flux2_ids", "flux_image_ids"]


def flux_image_ids(h: int, w: int) -> torch.Tensor:
    """Flux's row-major image position ids ``(h*w, 3)``: (0, row, col)."""
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).float()


def flux2_ids(h: int, w: int, batch: int, text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FLUX.2's int64 position ids as its pipeline builds them: image ``(B, h*w, 4)`` = (t=0, row, col, l=0)
    (``torch.cartesian_prod``), text ``(B, L, 4)`` = (0, 0, 0, l)."""
    img = torch.cartesian_prod(torch.arange(1), torch.arange(h), torch.arange(w), torch.arange(1))
    txt = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(text_len))
    return img.unsqueeze(0).expand(batch, -1, -1), txt.unsqueeze(0).expand(batch, -1, -1)


def example_inputs(
    model: torch.nn.Module,
    *,
    batch: int = 1,
    height: int = 256,
    width: int = 256,
    text_len: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    frames: int = 1,
) -> dict[str, Any]:
    """Keyword arguments for ``model(**kwargs)`` at ``height x width`` pixels; ``frames``: pixel frames of the
    clip for video models (:func:`~toma_export.models.architectures.latent_frames` says which counts fit;
    image models take 1). A side the family cannot take is a ValueError naming the multiple."""
    spec = spec_for(model)
    latent_frames(spec, frames, patch_size=getattr(model.config, "patch_size", None), model=type(model).__name__)
    multiple = spec.pixel_multiple
    if height % multiple or width % multiple:
        raise ValueError(f"height and width must be multiples of {multiple} pixels, got {height}x{width}")
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    def full(v: float) -> torch.Tensor:
        return torch.full((batch,), v, dtype=dtype, device=device)

    make = _BUILDERS[spec.family]
    return make(_Ctx(model, spec, batch, height, width, frames, text_len or spec.text_len, dtype, device, randn, full))


class _Ctx:
    """What a family's builder needs: the model, the request, and seeded tensor makers."""

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, batch: int, height: int, width: int, frames: int,
                 text_len: int, dtype: torch.dtype, device: torch.device | str,
                 randn: Callable[..., torch.Tensor], full: Callable[[float], torch.Tensor]):
        self.model, self.spec, self.batch, self.frames, self.text_len = model, spec, batch, frames, text_len
        self.height, self.width, self.dtype, self.device, self.randn, self.full = height, width, dtype, device, randn, full
        self.cfg: Any = model.config
        #: The latent grid (packed families: the token grid).
        side = PACKED_TOKEN_PIXELS if spec.packed else VAE_FACTOR
        self.h, self.w = height // side, width // side


def _unet(c: _Ctx) -> dict[str, Any]:
    cfg = c.cfg
    kwargs: dict[str, Any] = dict(
        sample=c.randn(c.batch, cfg.in_channels, c.h, c.w),
        timestep=torch.tensor(500.0, device=c.device),
        encoder_hidden_states=c.randn(c.batch, c.text_len, cfg.cross_attention_dim),
    )
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        time_ids = torch.tensor([c.height, c.width, 0, 0, c.height, c.width], dtype=c.dtype, device=c.device)
        kwargs["added_cond_kwargs"] = dict(text_embeds=c.randn(c.batch, pooled), time_ids=time_ids.repeat(c.batch, 1))
    return kwargs


def _flux(c: _Ctx) -> dict[str, Any]:
    cfg = c.cfg
    kwargs = dict(
        hidden_states=c.randn(c.batch, c.h * c.w, cfg.in_channels),
        encoder_hidden_states=c.randn(c.batch, c.text_len, cfg.joint_attention_dim),
        pooled_projections=c.randn(c.batch, cfg.pooled_projection_dim),
        timestep=c.full(0.5),
        img_ids=flux_image_ids(c.h, c.w).to(c.device),
        txt_ids=torch.zeros(c.text_len, 3, device=c.device),
    )
    if cfg.guidance_embeds:
        kwargs["guidance"] = c.full(3.5)
    return kwargs


def _flux2(c: _Ctx) -> dict[str, Any]:
    cfg = c.cfg
    img_ids, txt_ids = flux2_ids(c.h, c.w, c.batch, c.text_len)
    kw: dict[str, Any] = dict(
        hidden_states=c.randn(c.batch, c.h * c.w, cfg.in_channels),
        encoder_hidden_states=c.randn(c.batch, c.text_len, cfg.joint_attention_dim),
        timestep=c.full(0.5),
        img_ids=img_ids.to(c.device),
        txt_ids=txt_ids.to(c.device),
    )
    if cfg.guidance_embeds:
        kw["guidance"] = c.full(4.0)
    return kw


def _qwen_image(c: _Ctx) -> dict[str, Any]:
    cfg = c.cfg
    return dict(
        hidden_states=c.randn(c.batch, c.h * c.w, cfg.in_channels),
        encoder_hidden_states=c.randn(c.batch, c.text_len, cfg.joint_attention_dim),
        encoder_hidden_states_mask=torch.ones(c.batch, c.text_len, dtype=torch.long, device=c.device),
        timestep=c.full(0.5),
        img_shapes=[[(1, c.h, c.w)]] * c.batch,
    )


def _z_image(c: _Ctx) -> dict[str, Any]:
    if c.h % 2 or c.w % 2:
        raise ValueError(f"height and width must be multiples of 16 pixels (2x2 patches), got {c.height}x{c.width}")
    # per-sample lists, as ZImagePipeline passes them: latents (C, 1 frame, H/8, W/8) and caption
    # features (L, D) (unpadded; the model pads both to multiples of 32); t = (1000 - timestep) / 1000
    return dict(
        x=[c.randn(c.cfg.in_channels, 1, c.h, c.w) for _ in range(c.batch)],
        t=c.full(0.5),
        cap_feats=[c.randn(c.text_len, c.cfg.cap_feat_dim) for _ in range(c.batch)],
    )


def _sd35(c: _Ctx) -> dict[str, Any]:
    cfg = c.cfg
    return dict(
        hidden_states=c.randn(c.batch, cfg.in_channels, c.h, c.w),
        encoder_hidden_states=c.randn(c.batch, c.text_len, cfg.joint_attention_dim),
        pooled_projections=c.randn(c.batch, cfg.pooled_projection_dim),
        timestep=c.full(500.0),
    )


def _wan(c: _Ctx) -> dict[str, Any]:
    # (B, C, latent frames, H/8, W/8), latent frames as the pipeline's VAE makes them (latent_frames)
    cfg = c.cfg
    f = latent_frames(c.spec, c.frames, patch_size=cfg.patch_size, model=type(c.model).__name__)
    return dict(
        hidden_states=c.randn(c.batch, cfg.in_channels, f, c.h, c.w),
        timestep=c.full(500.0),
        encoder_hidden_states=c.randn(c.batch, c.text_len, cfg.text_dim),
    )


#: ModelSpec.family -> its builder.
_BUILDERS: dict[str, Callable[[_Ctx], dict[str, Any]]] = {
    "unet": _unet, "flux": _flux, "flux2": _flux2, "qwen-image": _qwen_image, "z-image": _z_image, "sd35": _sd35,
    "wan": _wan,
}
