"""Full diffusers pipelines around a denoiser, assembled in code for the embedded models.

The embedded pipelines have a tiny random VAE (8x spatial factor, like the real ones), a real
scheduler, and no text encoders: callers pass prompt embeddings (see :func:`prompt_embeddings`),
so no tokenizer or encoder weights are needed. A local pipeline folder loads as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from toma_export.errors import UnsupportedModelError
from toma_export.models.registry import EMBEDDED_MODELS, load_model, model_family


def tiny_vae(*, flux: bool = False, seed: int = 0) -> Any:
    """A random AutoencoderKL with the real 8x factor (4 levels) at toy width."""
    from diffusers import AutoencoderKL

    extra: dict[str, Any] = dict(shift_factor=0.0, use_quant_conv=False, use_post_quant_conv=False) if flux else {}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae: Any = AutoencoderKL(
            block_out_channels=(8, 16, 32, 32),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            norm_num_groups=8,
            **extra,
        )
        return vae.eval()


def build_pipeline(model: str | Path | torch.nn.Module, *, seed: int = 0) -> Any:
    """A text-encoder-free SDXL or Flux pipeline around ``model`` (a name, folder or module)."""
    from diffusers import (
        DiffusionPipeline,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        StableDiffusionXLPipeline,
    )

    if isinstance(model, (str, Path)) and str(model) not in EMBEDDED_MODELS:
        path = Path(model)
        if (path / "model_index.json").exists():
            return DiffusionPipeline.from_pretrained(path, local_files_only=True)
    denoiser: Any = model if isinstance(model, torch.nn.Module) else load_model(model, seed=seed)
    family = model_family(denoiser)
    if family == "flux":
        if denoiser.config.in_channels != 16:
            raise UnsupportedModelError(
                f"the embedded Flux pipeline packs 4-channel latents (16 input channels); this transformer takes "
                f"{denoiser.config.in_channels}. Use a local pipeline folder for full-size Flux."
            )
        return FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=tiny_vae(flux=True, seed=seed),
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            transformer=denoiser,
        )
    if getattr(denoiser.config, "addition_embed_type", None) != "text_time":
        raise UnsupportedModelError("the embedded pipeline is SDXL's; this UNet lacks SDXL's text_time conditioning.")
    return StableDiffusionXLPipeline(
        vae=tiny_vae(seed=seed),
        text_encoder=None,
        text_encoder_2=None,
        tokenizer=None,
        tokenizer_2=None,
        unet=denoiser,
        scheduler=EulerDiscreteScheduler(),
    )


def prompt_embeddings(pipe: Any, *, batch: int = 1, seed: int = 0, text_len: int | None = None) -> dict[str, Any]:
    """Random prompt embeddings standing in for encoded prompts: keyword arguments for ``pipe(...)``."""
    g = torch.Generator().manual_seed(seed)
    denoiser = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    cfg = denoiser.config
    if hasattr(pipe, "transformer"):
        n = text_len or 16
        return dict(
            prompt_embeds=torch.randn(batch, n, cfg.joint_attention_dim, generator=g),
            pooled_prompt_embeds=torch.randn(batch, cfg.pooled_projection_dim, generator=g),
        )
    n = text_len or 77
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    pe = torch.randn(batch, n, cfg.cross_attention_dim, generator=g)
    pp = torch.randn(batch, pooled, generator=g)
    return dict(
        prompt_embeds=pe,
        pooled_prompt_embeds=pp,
        negative_prompt_embeds=torch.zeros_like(pe),
        negative_pooled_prompt_embeds=torch.zeros_like(pp),
    )
