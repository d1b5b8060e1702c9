"""Try the ToMA graph pass on current diffusers transformer classes (tiny random configs, CPU).

For each class: build a tiny config, make inputs as its pipeline does, ``rewrite`` at ratio 0.5, and
print the merged sites by kind, the skipped ones, or the ``ToMAError`` reason. Any other exception
is a bug (printed as RAW). Usage: ``python scripts/try_architectures.py [--size 64] [NAME ...]``.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter
from typing import Any, Callable

import torch

import toma_export
from toma_export.errors import ToMAError
from toma_export.models.architectures import ARCHITECTURES, example_inputs_for


def _g(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


def _named(name: str, size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    m = ARCHITECTURES[name][2]()
    return m, example_inputs_for(m, 1, size, size, frames=5)


def chroma(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import ChromaTransformer2DModel

    from toma_export.models.inputs import flux_image_ids

    m = ChromaTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                 num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6),
                                 approximator_num_channels=8, approximator_hidden_dim=32, approximator_layers=1)
    h = w = size // 16
    L = 8
    kw = dict(hidden_states=_g(1, h * w, 16), encoder_hidden_states=_g(1, L, 32), timestep=torch.full((1,), 0.5),
              img_ids=flux_image_ids(h, w), txt_ids=torch.zeros(L, 3),
              attention_mask=torch.ones(1, L + h * w, dtype=torch.bool))
    return m, kw


def hunyuan_image(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import HunyuanImageTransformer2DModel

    m = HunyuanImageTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                                       num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=(1, 1),
                                       text_embed_dim=32, rope_axes_dim=(8, 8))
    s = size // 16  # HunyuanImage-2.1's VAE downsamples 32x; a 16x16-pixel token is close enough for a trial
    kw = dict(hidden_states=_g(1, 4, s, s), timestep=torch.full((1,), 500.0), encoder_hidden_states=_g(1, 8, 32),
              encoder_attention_mask=torch.ones(1, 8, dtype=torch.long))
    return m, kw


def ltx(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import LTXVideoTransformer3DModel

    m = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16,
                                   cross_attention_dim=32, num_layers=1, caption_channels=16)
    f, h, w = 2, size // 32, size // 32
    kw = dict(hidden_states=_g(1, f * h * w, 8), encoder_hidden_states=_g(1, 8, 16), timestep=torch.full((1,), 500.0),
              encoder_attention_mask=torch.ones(1, 8, dtype=torch.long), num_frames=f, height=h, width=w)
    return m, kw


def cogview4(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import CogView4Transformer2DModel

    m = CogView4Transformer2DModel(patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=16,
                                   num_attention_heads=2, text_embed_dim=32, time_embed_dim=32, condition_dim=16,
                                   rope_axes_dim=(8, 8))
    s = size // 8
    sz = torch.tensor([[size, size]], dtype=torch.float32)
    kw = dict(hidden_states=_g(1, 4, s, s), encoder_hidden_states=_g(1, 8, 32), timestep=torch.full((1,), 500.0),
              original_size=sz, target_size=sz, crop_coords=torch.zeros(1, 2))
    return m, kw


def sana(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import SanaTransformer2DModel

    m = SanaTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
                               num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32,
                               caption_channels=32, sample_size=size // 32, patch_size=1)
    s = size // 32  # Sana's DC-AE: 32x
    kw = dict(hidden_states=_g(1, 4, s, s), encoder_hidden_states=_g(1, 8, 32), timestep=torch.full((1,), 500.0))
    return m, kw


def lumina2(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import Lumina2Transformer2DModel

    m = Lumina2Transformer2DModel(sample_size=size // 8, patch_size=2, in_channels=4, hidden_size=32, num_layers=1,
                                  num_refiner_layers=1, num_attention_heads=2, num_kv_heads=1, multiple_of=16,
                                  axes_dim_rope=(4, 6, 6), axes_lens=(64, 64, 64), cap_feat_dim=32)
    s = size // 8
    kw = dict(hidden_states=_g(1, 4, s, s), timestep=torch.full((1,), 0.5), encoder_hidden_states=_g(1, 8, 32),
              encoder_attention_mask=torch.ones(1, 8, dtype=torch.bool))
    return m, kw


def pixart(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import PixArtTransformer2DModel

    m = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=1,
                                 cross_attention_dim=32, sample_size=size // 8, patch_size=2, norm_type="ada_norm_single",
                                 caption_channels=24, use_additional_conditions=False)
    kw = dict(hidden_states=_g(1, 4, size // 8, size // 8), encoder_hidden_states=_g(1, 8, 24),
              timestep=torch.full((1,), 500.0), added_cond_kwargs={"resolution": None, "aspect_ratio": None})
    return m, kw


def sd3(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import SD3Transformer2DModel

    m = SD3Transformer2DModel(sample_size=size // 8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=16,
                              num_attention_heads=2, joint_attention_dim=24, caption_projection_dim=32,
                              pooled_projection_dim=16, out_channels=4, pos_embed_max_size=32)
    kw = dict(hidden_states=_g(1, 4, size // 8, size // 8), encoder_hidden_states=_g(1, 8, 24),
              pooled_projections=_g(1, 16), timestep=torch.full((1,), 500.0))
    return m, kw


def dit(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import DiTTransformer2DModel

    m = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, num_layers=1,
                              sample_size=size // 8, patch_size=2, num_embeds_ada_norm=1000)
    kw = dict(hidden_states=_g(1, 4, size // 8, size // 8), timestep=torch.full((1,), 500).long(),
              class_labels=torch.tensor([3]))
    return m, kw


def _latent_frames(pixel_frames: int, temporal: int) -> int:
    """Latent frames a causal video VAE with this temporal factor makes of ``pixel_frames`` (1 + k*t -> 1 + k)."""
    return (pixel_frames - 1) // temporal + 1


def flux3(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import Flux3Transformer2DModel

    m = Flux3Transformer2DModel(in_channels=16, cond_in_channels=16, num_layers=1, num_single_layers=1,
                                attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                timestep_channels=32, axes_dims_rope=(4, 4, 4, 4))
    h = w = size // 16  # VAE 8x, latents packed 2x2; ids (t, h, w, l) with h/w scaled by 0.5 (image_rope_scale)
    L = 8
    img = torch.cartesian_prod(torch.arange(1), torch.arange(h), torch.arange(w), torch.arange(1)).float()
    img[:, 1:3] *= 0.5
    txt = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(L)).float()
    kw = dict(hidden_states=_g(1, h * w, 16), encoder_hidden_states=_g(1, L, 32), timestep=torch.full((1,), 0.5),
              img_ids=img, txt_ids=txt)
    return m, kw


def qwen_image21(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import QwenImage21Transformer2DModel

    m = QwenImage21Transformer2DModel(patch_size=1, in_channels=16, out_channels=16, num_layers=1, attention_head_dim=16,
                                      num_attention_heads=2, context_in_dim=32, axes_dims_rope=(4, 6, 6))
    h = w = size // 16  # vae_scale_factor 16, latents unpatched (a plain flatten)
    L = 8
    # text-to-image: no image slots in the prompt; the pipeline appends one slot per 2x2 target tokens
    img_mask = torch.cat([torch.zeros(1, L, dtype=torch.bool), torch.ones(1, h * w // 4, dtype=torch.bool)], dim=1)
    kw = dict(hidden_states=_g(1, h * w, 16), encoder_hidden_states=_g(1, L, 32), timestep=torch.full((1,), 0.5),
              img_shapes=[[(1, h, w)]], img_mask=img_mask, encoder_hidden_states_mask=torch.ones(1, L, dtype=torch.bool))
    return m, kw


def hunyuan_video(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import HunyuanVideoTransformer3DModel

    m = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                                       num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=2,
                                       patch_size_t=1, text_embed_dim=32, pooled_projection_dim=16,
                                       rope_axes_dim=(4, 6, 6))
    f, s, L = _latent_frames(5, 4), size // 8, 8
    kw = dict(hidden_states=_g(1, 4, f, s, s), timestep=torch.full((1,), 500.0), encoder_hidden_states=_g(1, L, 32),
              encoder_attention_mask=torch.ones(1, L), pooled_projections=_g(1, 16),
              guidance=torch.full((1,), 6000.0))
    return m, kw


def hunyuan_video15(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import HunyuanVideo15Transformer3DModel

    m = HunyuanVideo15Transformer3DModel(in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                                         num_layers=1, num_refiner_layers=1, text_embed_dim=32, text_embed_2_dim=16,
                                         image_embed_dim=16, rope_axes_dim=(4, 6, 6), task_type="t2v")
    f, s, L = _latent_frames(5, 4), size // 16, 8  # its VAE: 16x spatial, 4x temporal
    # latents, zero condition latents and a zero mask concatenated on channels; zero image embeddings for t2v
    x = torch.cat([_g(1, 4, f, s, s), torch.zeros(1, 5, f, s, s)], dim=1)
    kw = dict(hidden_states=x, timestep=torch.full((1,), 500.0), encoder_hidden_states=_g(1, L, 32),
              encoder_attention_mask=torch.ones(1, L, dtype=torch.long), encoder_hidden_states_2=_g(1, 4, 16),
              encoder_attention_mask_2=torch.ones(1, 4, dtype=torch.long), image_embeds=torch.zeros(1, 9, 16))
    return m, kw


def cogvideox(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import CogVideoXTransformer3DModel

    s, f = size // 8, _latent_frames(9, 4)
    m = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                    time_embed_dim=32, text_embed_dim=32, num_layers=1, sample_width=s, sample_height=s,
                                    sample_frames=9, max_text_seq_length=8)
    # CogVideoX latents are (B, F, C, H, W)
    kw = dict(hidden_states=_g(1, f, 4, s, s), encoder_hidden_states=_g(1, 8, 32), timestep=torch.tensor([500]))
    return m, kw


def mochi(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import MochiTransformer3DModel

    m = MochiTransformer3DModel(patch_size=2, num_attention_heads=2, attention_head_dim=16, num_layers=1,
                                pooled_projection_dim=16, in_channels=4, text_embed_dim=32, time_embed_dim=16,
                                max_sequence_length=8)
    f, s = _latent_frames(7, 6), size // 8  # Mochi's VAE: 6x temporal
    kw = dict(hidden_states=_g(1, 4, f, s, s), encoder_hidden_states=_g(1, 8, 32), timestep=torch.full((1,), 500.0),
              encoder_attention_mask=torch.ones(1, 8, dtype=torch.bool))
    return m, kw


def auraflow(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import AuraFlowTransformer2DModel

    s = size // 8
    m = AuraFlowTransformer2DModel(sample_size=s, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=1,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                   caption_projection_dim=32, out_channels=4, pos_embed_max_size=256)
    kw = dict(hidden_states=_g(1, 4, s, s), encoder_hidden_states=_g(1, 8, 32), timestep=torch.full((1,), 0.5))
    return m, kw


def hidream(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import HiDreamImageTransformer2DModel

    m = HiDreamImageTransformer2DModel(patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1,
                                       attention_head_dim=16, num_attention_heads=2, caption_channels=[32, 24],
                                       text_emb_dim=16, num_routed_experts=2, num_activated_experts=1,
                                       axes_dims_rope=(4, 6, 6), max_resolution=(16, 16), llama_layers=[0, 1])
    s = size // 8
    # the pipeline stacks the Llama hidden states of every layer: (layers, B, L, D)
    kw = dict(hidden_states=_g(1, 4, s, s), timesteps=torch.full((1,), 500.0), encoder_hidden_states_t5=_g(1, 8, 32),
              encoder_hidden_states_llama3=_g(2, 1, 8, 24), pooled_embeds=_g(1, 16))
    return m, kw


def z_image(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import ZImageTransformer2DModel

    m = ZImageTransformer2DModel(in_channels=4, dim=32, n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2,
                                 cap_feat_dim=32, axes_dims=[4, 6, 6], axes_lens=[64, 32, 32])
    s = size // 8
    # lists of per-sample tensors: latents (C, 1, H, W), caption features (L, D)
    kw = dict(x=[_g(4, 1, s, s)], t=torch.full((1,), 0.5), cap_feats=[_g(8, 32)])
    return m, kw


def skyreels_v2(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import SkyReelsV2Transformer3DModel

    m = SkyReelsV2Transformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                     text_dim=32, freq_dim=32, ffn_dim=64, num_layers=1, rope_max_seq_len=64)
    f, s = _latent_frames(5, 4), size // 8
    kw = dict(hidden_states=_g(1, 4, f, s, s), timestep=torch.full((1,), 500.0), encoder_hidden_states=_g(1, 8, 32))
    return m, kw


def ltx2(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import LTX2VideoTransformer3DModel

    m = LTX2VideoTransformer3DModel(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16,
                                    cross_attention_dim=32, audio_in_channels=8, audio_out_channels=8,
                                    audio_num_attention_heads=2, audio_attention_head_dim=8,
                                    audio_cross_attention_dim=16, num_layers=1, caption_channels=16)
    f, h, w, L, A = _latent_frames(9, 8), size // 32, size // 32, 8, 4  # its VAE: 32x spatial, 8x temporal
    kw = dict(hidden_states=_g(1, f * h * w, 8), audio_hidden_states=_g(1, A, 8), encoder_hidden_states=_g(1, L, 16),
              audio_encoder_hidden_states=_g(1, L, 16), timestep=torch.full((1,), 0.5), sigma=torch.full((1,), 0.5),
              encoder_attention_mask=torch.ones(1, L, dtype=torch.long),
              audio_encoder_attention_mask=torch.ones(1, L, dtype=torch.long), num_frames=f, height=h, width=w,
              fps=24.0, audio_num_frames=A)
    return m, kw


def cosmos(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import CosmosTransformer3DModel

    m = CosmosTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                                 num_layers=1, text_embed_dim=32, adaln_lora_dim=8, max_size=(16, 32, 32),
                                 concat_padding_mask=False)  # True needs torchvision (not installed) to resize it
    f, s = _latent_frames(9, 8), size // 8  # Cosmos' VAE: 8x temporal
    kw = dict(hidden_states=_g(1, 4, f, s, s), timestep=torch.full((1,), 0.5), encoder_hidden_states=_g(1, 8, 32),
              fps=30, padding_mask=torch.zeros(1, 1, size, size))
    return m, kw


def omnigen(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import OmniGenTransformer2DModel

    m = OmniGenTransformer2DModel(in_channels=4, patch_size=2, hidden_size=32, num_attention_heads=2,
                                  num_key_value_heads=2, intermediate_size=64, num_layers=1, vocab_size=64,
                                  pad_token_id=0, max_position_embeddings=512, original_max_position_embeddings=512,
                                  pos_embed_max_size=32, time_step_dim=32,
                                  rope_scaling={"short_factor": [1.0] * 8, "long_factor": [1.0] * 8})  # Phi-3 "su" RoPE
    s, L = size // 8, 8
    n = L + 1 + (s // 2) ** 2  # text, the time token, image tokens
    # the processor's causal mask over text + time token, full attention among the image tokens
    mask = torch.tril(torch.ones(n, n))
    mask[L:, L:] = 1
    kw = dict(hidden_states=_g(1, 4, s, s), timestep=torch.full((1,), 0.5), input_ids=torch.arange(1, L + 1)[None],
              input_img_latents=[], input_image_sizes={}, attention_mask=mask[None],
              position_ids=torch.arange(n)[None])
    return m, kw


def allegro(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from types import SimpleNamespace

    from diffusers import AllegroPipeline, AllegroTransformer3DModel

    s, f = size // 8, _latent_frames(9, 4)
    # head dim 12: its 3-D RoPE splits a head in three even parts
    m = AllegroTransformer3DModel(patch_size=2, num_attention_heads=2, attention_head_dim=12, in_channels=4,
                                  out_channels=4, num_layers=1, cross_attention_dim=24, sample_height=s,
                                  sample_width=s, sample_frames=f, caption_channels=16)
    # the pipeline's own rotary-embedding helper, on a stand-in for the pipeline
    stub = SimpleNamespace(vae_scale_factor_spatial=8, transformer=m)
    rope = AllegroPipeline._prepare_rotary_positional_embeddings(stub, 1, size, size, f, torch.device("cpu"))
    kw = dict(hidden_states=_g(1, 4, f, s, s), encoder_hidden_states=_g(1, 8, 16), timestep=torch.full((1,), 500.0),
              encoder_attention_mask=torch.ones(1, 8), image_rotary_emb=rope)
    return m, kw


def sana_video(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import SanaVideoTransformer3DModel

    m = SanaVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                                    num_layers=1, num_cross_attention_heads=2, cross_attention_head_dim=16,
                                    cross_attention_dim=32, caption_channels=16, sample_size=size // 8,
                                    rope_max_seq_len=64)
    f, s = _latent_frames(5, 4), size // 8  # Wan's VAE
    kw = dict(hidden_states=_g(1, 4, f, s, s), encoder_hidden_states=_g(1, 8, 16), timestep=torch.full((1,), 500.0),
              encoder_attention_mask=torch.ones(1, 8))
    return m, kw


def bria(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import BriaTransformer2DModel

    from toma_export.models.inputs import flux_image_ids

    m = BriaTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                               num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=[4, 6, 6])
    h = w = size // 16
    kw = dict(hidden_states=_g(1, h * w, 16), encoder_hidden_states=_g(1, 8, 32), timestep=torch.full((1,), 500.0),
              img_ids=flux_image_ids(h, w), txt_ids=torch.zeros(8, 3))
    return m, kw


def kandinsky5(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import Kandinsky5Transformer3DModel

    m = Kandinsky5Transformer3DModel(in_visual_dim=4, in_text_dim=32, in_text_dim2=16, time_dim=32, out_visual_dim=4,
                                     model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=1, axes_dims=(4, 6, 6))
    f, s, L = _latent_frames(5, 4), size // 8, 8
    # latents (B, F, H, W, C); rope positions per axis over the 2x2-patched grid
    kw = dict(hidden_states=_g(1, f, s, s, 4), encoder_hidden_states=_g(1, L, 32), timestep=torch.full((1,), 500.0),
              pooled_projections=_g(1, 16), visual_rope_pos=[torch.arange(f), torch.arange(s // 2), torch.arange(s // 2)],
              text_rope_pos=torch.arange(L), scale_factor=(1.0, 1.0, 1.0))
    return m, kw


def wan_vace(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import WanVACETransformer3DModel

    m = WanVACETransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                  text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, rope_max_seq_len=64,
                                  vace_layers=[0], vace_in_channels=72)
    f, s = _latent_frames(5, 4), size // 8
    # control: video latents (inactive + reactive, 2 x 4 channels) and the 8x8-unshuffled mask (64 channels)
    kw = dict(hidden_states=_g(1, 4, f, s, s), timestep=torch.full((1,), 500.0), encoder_hidden_states=_g(1, 8, 32),
              control_hidden_states=_g(1, 72, f, s, s), control_hidden_states_scale=torch.ones(1))
    return m, kw


TRIALS: dict[str, tuple[str, Callable[[int], tuple[torch.nn.Module, dict[str, Any]]]]] = {
    **{n: (ARCHITECTURES[n][2].__name__, (lambda n: lambda size: _named(n, size))(n)) for n in ARCHITECTURES if n.endswith("-tiny")},
    "chroma": ("ChromaTransformer2DModel", chroma),
    "hunyuan-image": ("HunyuanImageTransformer2DModel", hunyuan_image),
    "ltx-video": ("LTXVideoTransformer3DModel", ltx),
    "cogview4": ("CogView4Transformer2DModel", cogview4),
    "sana": ("SanaTransformer2DModel", sana),
    "lumina2": ("Lumina2Transformer2DModel", lumina2),
    "pixart": ("PixArtTransformer2DModel", pixart),
    "sd3": ("SD3Transformer2DModel", sd3),
    "dit": ("DiTTransformer2DModel", dit),
    "flux3": ("Flux3Transformer2DModel", flux3),
    "qwen-image21": ("QwenImage21Transformer2DModel", qwen_image21),
    "hunyuan-video": ("HunyuanVideoTransformer3DModel", hunyuan_video),
    "hunyuan-video15": ("HunyuanVideo15Transformer3DModel", hunyuan_video15),
    "cogvideox": ("CogVideoXTransformer3DModel", cogvideox),
    "mochi": ("MochiTransformer3DModel", mochi),
    "auraflow": ("AuraFlowTransformer2DModel", auraflow),
    "hidream": ("HiDreamImageTransformer2DModel", hidream),
    "z-image": ("ZImageTransformer2DModel", z_image),
    "skyreels-v2": ("SkyReelsV2Transformer3DModel", skyreels_v2),
    "ltx2": ("LTX2VideoTransformer3DModel", ltx2),
    "cosmos": ("CosmosTransformer3DModel", cosmos),
    "omnigen": ("OmniGenTransformer2DModel", omnigen),
    "allegro": ("AllegroTransformer3DModel", allegro),
    "sana-video": ("SanaVideoTransformer3DModel", sana_video),
    "bria": ("BriaTransformer2DModel", bria),
    "kandinsky5": ("Kandinsky5Transformer3DModel", kandinsky5),
    "wan-vace": ("WanVACETransformer3DModel", wan_vace),
}


def try_one(name: str, size: int) -> str:
    cls, build = TRIALS[name]
    try:
        torch.manual_seed(0)
        model, kw = build(size)
        model.eval()
        cls = type(model).__name__
    except Exception as e:  # noqa: BLE001 - a class we could not build tiny is reported, not tried
        return f"{name:<16} {cls:<34} not constructed tiny: {type(e).__name__}: {str(e)[:120]}"
    try:
        program = toma_export.rewrite(model, kw, toma_export.ToMAConfig(ratio=0.5))
        with torch.no_grad():
            out = program(**kw)
        first = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
        while isinstance(first, (tuple, list)):  # per-sample lists (Z-Image)
            first = first[0]
        finite = bool(torch.isfinite(first).all())
    except ToMAError as e:
        return f"{name:<16} {cls:<34} ToMAError: {str(e).splitlines()[0][:200]}"
    except Exception as e:  # noqa: BLE001 - the point of this script: any raw exception is a bug
        return f"{name:<16} {cls:<34} RAW {type(e).__name__}: {str(e)[:200]}"
    eager = _try_apply(model, kw)
    if not program.sites and not program.skipped:
        return (f"{name:<16} {cls:<34} no merge sites found (no norm -> linears -> SDPA / MLP region over an image "
                f"grid; runs unmerged) finite={finite}; apply: {eager}")
    merged = Counter(s.kind for s in program.sites)
    skipped = Counter(s.kind for s in program.skipped)
    reasons = sorted({s.reason.split(":")[0][:60] for s in program.skipped})
    grid = program.sites[0].grid if program.sites else (program.skipped[0].grid if program.skipped else None)
    return (f"{name:<16} {cls:<34} merged {dict(merged) or '{}'} skipped {dict(skipped) or '{}'} grid {grid} "
            f"finite={finite}; apply: {eager}" + (f" [{'; '.join(reasons)}]" if reasons else ""))


def _try_apply(model: torch.nn.Module, kw: dict[str, Any]) -> str:
    """Eager ``apply`` and one call: "merged" or the ToMAError's first words; RAW is a bug."""
    try:
        toma_export.apply(model, toma_export.ToMAConfig(ratio=0.5))
        try:
            with torch.no_grad():
                model(**kw)
            return "merged"
        finally:
            toma_export.remove(model)
    except ToMAError as e:
        return f"ToMAError ({str(e).splitlines()[0][:80]})"
    except Exception as e:  # noqa: BLE001 - any raw exception is a bug
        return f"RAW {type(e).__name__}: {str(e)[:120]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("names", nargs="*", default=list(TRIALS))
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    args = ap.parse_args()
    logging.getLogger("torch._subclasses.fake_tensor").setLevel(logging.CRITICAL)
    torch.set_num_threads(1)
    print(f"diffusers transformer classes through toma_export.rewrite and eager apply at ratio 0.5, "
          f"{args.size}x{args.size} px")
    for name in args.names:
        t = time.perf_counter()
        line = try_one(name, args.size)
        print(f"{line}  ({time.perf_counter() - t:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
