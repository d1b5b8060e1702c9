"""Full diffusers pipelines around a denoiser, assembled in code for the embedded models.

The embedded pipelines have a tiny random VAE (8x spatial factor, like the real ones), a real
scheduler, and no text encoders: callers pass prompt embeddings (see :func:`prompt_embeddings` and
:func:`prompt_embeddings_for`, which maps a prompt string to them deterministically), so no
tokenizer or encoder weights are needed. A local pipeline folder loads as it is.
:func:`tiny_sdxl_pipeline` builds a complete tiny SDXL pipeline (VAE, two CLIP text encoders and
tokenizers, scheduler), offline, for tests of the user's-own-pipeline path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from toma_export.errors import UnsupportedModelError
from toma_export.models.registry import EMBEDDED_MODELS, load_model
from toma_export.models.spec import spec_for
from toma_export.quiet import library_noise


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
    with library_noise():  # these modules import transformers' image processors, which log a torchvision fallback
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
    embedded = spec_for(denoiser).embedded_pipeline
    if embedded is None:
        raise UnsupportedModelError(
            f"{type(denoiser).__name__}: toma-export embeds encoder-free SDXL and Flux pipelines only; build from "
            "this model's diffusers pipeline (a local folder with model_index.json, or a Hub pipeline id) so that "
            "its own pipeline runs it."
        )
    if embedded == "flux":
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
    spec = spec_for(pipe)
    cfg = getattr(pipe, spec.denoiser_attribute).config
    n = text_len or spec.text_len
    if spec.embedded_pipeline is None:
        raise UnsupportedModelError(
            f"{type(getattr(pipe, spec.denoiser_attribute)).__name__}: stand-in prompt embeddings exist for SDXL and "
            "Flux pipelines only; give this pipeline its text encoders (a pipeline folder or Hub id that has them)."
        )
    if spec.embedded_pipeline == "flux":
        return dict(
            prompt_embeds=torch.randn(batch, n, cfg.joint_attention_dim, generator=g),
            pooled_prompt_embeds=torch.randn(batch, cfg.pooled_projection_dim, generator=g),
        )
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    pe = torch.randn(batch, n, cfg.cross_attention_dim, generator=g)
    pp = torch.randn(batch, pooled, generator=g)
    return dict(
        prompt_embeds=pe,
        pooled_prompt_embeds=pp,
        negative_prompt_embeds=torch.zeros_like(pe),
        negative_pooled_prompt_embeds=torch.zeros_like(pp),
    )


def prompt_seed(prompt: str) -> int:
    """The seed a prompt string stands for: the first 8 bytes of SHA-256 of its UTF-8, as an int63.

    Stable across processes, machines and Python versions (unlike ``hash``), so a prompt gives the same
    embeddings in ``run``, in tests and in serving.
    """
    return int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def has_text_encoders(pipe: Any) -> bool:
    """Whether ``pipe`` encodes prompt strings itself (its first tokenizer and text encoder are set)."""
    return getattr(pipe, "text_encoder", None) is not None and getattr(pipe, "tokenizer", None) is not None


def prompt_embeddings_for(pipe: Any, prompt: str, negative_prompt: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``pipe(...)`` that condition one image on ``prompt`` (and ``negative_prompt``).

    - A pipeline with its own text encoders and tokenizers (a saved or Hub pipeline) encodes the strings
      itself: the result is ``{"prompt": ..., "negative_prompt": ...}``.
    - The embedded, encoder-free pipelines (no tokenizer, no encoder weights) get deterministic
      stand-in embeddings: ``prompt_embeddings(pipe, batch=1, seed=prompt_seed(prompt))`` — random
      normal embeddings drawn from a CPU ``torch.Generator`` seeded with the first 8 bytes of the
      SHA-256 of the prompt's UTF-8 (:func:`prompt_seed`), 77 tokens of ``cross_attention_dim`` for
      SDXL UNets, 16 tokens of ``joint_attention_dim`` for Flux, and a pooled vector from the same
      generator. The negative embeddings (SDXL's classifier-free guidance) are zeros when
      ``negative_prompt`` is None — what SDXL's ``force_zeros_for_empty_prompt`` gives an empty one —
      else the positive embeddings of ``negative_prompt`` by the same rule; Flux gets
      ``negative_prompt_embeds``/``negative_pooled_prompt_embeds`` only when one is given (they
      take effect with ``true_cfg_scale > 1``).

    The same prompt always gives the same tensors, in ``toma-export run`` and in serving.
    """
    if not isinstance(prompt, str) or not (negative_prompt is None or isinstance(negative_prompt, str)):
        raise UnsupportedModelError("prompt and negative_prompt must be strings.")
    if has_text_encoders(pipe):
        out: dict[str, Any] = {"prompt": prompt}
        if negative_prompt is not None:
            out["negative_prompt"] = negative_prompt
        return out
    embeds = prompt_embeddings(pipe, batch=1, seed=prompt_seed(prompt))
    if negative_prompt is not None:
        neg = prompt_embeddings(pipe, batch=1, seed=prompt_seed(negative_prompt))
        embeds["negative_prompt_embeds"] = neg["prompt_embeds"]
        embeds["negative_pooled_prompt_embeds"] = neg["pooled_prompt_embeds"]
    return embeds


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (byte-level BPE's alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def tiny_clip_tokenizer(max_length: int = 77) -> Any:
    """A CLIP tokenizer built offline: one token per byte (no merges), plus CLIP's start/end tokens."""
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_sdxl_pipeline(*, seed: int = 0) -> Any:
    """A complete SDXL pipeline at toy width, built in code with no download: the ``sdxl-tiny`` UNet, the
    tiny VAE, two CLIP text encoders (16 wide each, so their concatenation is the UNet's 32-wide
    cross-attention; the second projects to the 32-wide pooled embedding) and byte-level tokenizers.
    ``save_pretrained`` it to get a pipeline folder like a user's."""
    with library_noise():  # as in build_pipeline
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny_clip_tokenizer()
    unet: Any = load_model("sdxl-tiny", seed=seed)
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    text = dict(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        encoder = CLIPTextModel(CLIPTextConfig(**text)).eval()
        encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text, projection_dim=pooled)).eval()
    object.__delattr__(unet, "_toma_source")  # a component of this pipeline, not the embedded model
    return StableDiffusionXLPipeline(
        vae=tiny_vae(seed=seed),
        text_encoder=encoder,
        text_encoder_2=encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tiny_clip_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(),
    )
