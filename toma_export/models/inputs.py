"""Example forward inputs for the denoisers, at an image resolution in pixels.

UNets see latents at 1/8 of the image side (the VAE factor); Flux sees 2x2-packed latents, so one
image token per 16x16 pixels. Text conditioning is random prompt embeddings (no tokenizer needed).
"""

from __future__ import annotations

from typing import Any

import torch

from toma_export.models.registry import model_family

VAE_FACTOR = 8
FLUX_TOKEN_PIXELS = 16


def flux_image_ids(h: int, w: int) -> torch.Tensor:
    """Flux's row-major image position ids ``(h*w, 3)``: (0, row, col)."""
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).float()


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
    image models take 1)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    from toma_export.models.architectures import architecture_family, example_inputs_for, latent_frames

    if architecture_family(model) is not None:  # FLUX.2, Qwen-Image, SD3.5, Wan: as their pipelines build them
        return example_inputs_for(
            model, batch, height, width, frames=frames, text_len=text_len, seed=seed, dtype=dtype, device=device
        )
    latent_frames(None, frames, model=type(model).__name__)  # UNets and Flux.1 take images: frames must be 1
    cfg: Any = model.config
    if model_family(model) == "unet":
        if height % VAE_FACTOR or width % VAE_FACTOR:
            raise ValueError(f"height and width must be multiples of {VAE_FACTOR} pixels, got {height}x{width}")
        text_len = text_len or 77
        kwargs: dict[str, Any] = dict(
            sample=randn(batch, cfg.in_channels, height // VAE_FACTOR, width // VAE_FACTOR),
            timestep=torch.tensor(500.0, device=device),
            encoder_hidden_states=randn(batch, text_len, cfg.cross_attention_dim),
        )
        if cfg.addition_embed_type == "text_time":
            pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            time_ids = torch.tensor([height, width, 0, 0, height, width], dtype=dtype, device=device)
            kwargs["added_cond_kwargs"] = dict(text_embeds=randn(batch, pooled), time_ids=time_ids.repeat(batch, 1))
        return kwargs
    if height % FLUX_TOKEN_PIXELS or width % FLUX_TOKEN_PIXELS:
        raise ValueError(f"height and width must be multiples of {FLUX_TOKEN_PIXELS} pixels for Flux, got {height}x{width}")
    h, w = height // FLUX_TOKEN_PIXELS, width // FLUX_TOKEN_PIXELS
    text_len = text_len or 16
    kwargs = dict(
        hidden_states=randn(batch, h * w, cfg.in_channels),
        encoder_hidden_states=randn(batch, text_len, cfg.joint_attention_dim),
        pooled_projections=randn(batch, cfg.pooled_projection_dim),
        timestep=torch.full((batch,), 0.5, dtype=dtype, device=device),
        img_ids=flux_image_ids(h, w).to(device),
        txt_ids=torch.zeros(text_len, 3, device=device),
    )
    if cfg.guidance_embeds:
        kwargs["guidance"] = torch.full((batch,), 3.5, dtype=dtype, device=device)
    return kwargs
