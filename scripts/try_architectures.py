"""Try the ToMA graph pass on current diffusers transformer classes (tiny random configs, CPU).

For each class: build a tiny config, make inputs as its pipeline does, ``rewrite`` at ratio 0.5 and
format its ``inspect`` report, and print the merged sites by kind, the skipped ones, or the
``ToMAError`` reason; then eager ``apply``; with ``--build``, also export the rewritten model to ONNX
and run it on ONNX Runtime as ``toma-export build`` does, against the rewritten program's output. Any
other exception is a bug (printed as RAW). Usage:
``python scripts/try_architectures.py [--size 128] [--build] [NAME ...]``.
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
from toma_export.graph.inspect import report_for
from toma_export.models.architectures import ARCHITECTURES
from toma_export.models.inputs import example_inputs
from toma_export.models.spec import spec_for


def _g(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


def _named(name: str, size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    m = ARCHITECTURES[name][2]()
    return m, example_inputs(m, batch=1, height=size, width=size, frames=5 if spec_for(m).video else 1)


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


def _cogview_inputs(size: int) -> dict[str, Any]:
    """CogView3Plus / CogView4 inputs: 4-D latents and SDXL-style size conditioning, as their pipelines pass them."""
    s = size // 8
    sz = torch.tensor([[size, size]], dtype=torch.float32)
    return dict(hidden_states=_g(1, 4, s, s), encoder_hidden_states=_g(1, 8, 32), timestep=torch.full((1,), 500.0),
                original_size=sz, target_size=sz, crop_coords=torch.zeros(1, 2))


def cogview4(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import CogView4Transformer2DModel

    m = CogView4Transformer2DModel(patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=16,
                                   num_attention_heads=2, text_embed_dim=32, time_embed_dim=32, condition_dim=16,
                                   rope_axes_dim=(8, 8))
    return m, _cogview_inputs(size)


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


def bria_fibo(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import BriaFiboTransformer2DModel

    from toma_export.models.inputs import flux_image_ids

    m = BriaFiboTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                   axes_dims_rope=[4, 6, 6], text_encoder_dim=16)
    h = w = size // 16  # Wan-2.2 VAE (16x), latents not patched (a plain flatten)
    L = 8
    # prompt embeds: the text encoder's last two hidden states concatenated; plus one hidden state per block
    kw = dict(hidden_states=_g(1, h * w, 16), encoder_hidden_states=_g(1, L, 32),
              text_encoder_layers=[_g(1, L, 16), _g(1, L, 16) + 1], timestep=torch.full((1,), 500.0),
              img_ids=flux_image_ids(h, w), txt_ids=torch.zeros(L, 3))
    return m, kw


def bria_fibo2(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import BriaFibo2Transformer2DModel

    m = BriaFibo2Transformer2DModel(in_channels=4, patch_size=2, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2,
                                    cap_feat_dim=24, injection_layer_ids=(1,), perceiver_num_layers=1,
                                    min_num_gist_tokens=4, max_num_gist_tokens=8, gist_step=4, gist_min_text_len=4,
                                    gist_max_text_len=16, axes_dims=(8, 4, 4), axes_lens=(64, 32, 32))
    s, L = size // 8, 8
    # latents (B, C, H, W), patchified inside; text: (B, 1 + injection blocks, L, D) stacked Qwen3-VL layer bundles
    kw = dict(hidden_states=_g(1, 4, s, s), timestep=torch.full((1,), 0.5), encoder_hidden_states=_g(1, 2, L, 24),
              encoder_attention_mask=torch.ones(1, L, dtype=torch.bool))
    return m, kw


def cogview3plus(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import CogView3PlusTransformer2DModel

    m = CogView3PlusTransformer2DModel(patch_size=2, in_channels=4, num_layers=1, attention_head_dim=16,
                                       num_attention_heads=2, out_channels=4, text_embed_dim=32, time_embed_dim=32,
                                       condition_dim=16, pos_embed_max_size=32, sample_size=size // 8)
    return m, _cogview_inputs(size)


def dreamlite(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import DreamLiteTransformer2DModel
    from diffusers.models.attention_processor import Attention
    from diffusers.models.unets.unet_dreamlite import DreamLiteAttnProcessor2_0

    # a block of DreamLiteUNetModel (its defaults: GQA with one KV head, RMS qk-norm, ff_mult 6, conv proj_in)
    m = DreamLiteTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=32, num_layers=1,
                                    norm_num_groups=8, cross_attention_dim=24, qk_norm="rms_norm", num_kv_heads=1,
                                    ff_mult=6)
    for a in m.modules():  # the UNet installs its GQA-aware processor (the default one fails with one KV head)
        if isinstance(a, Attention):
            a.set_processor(DreamLiteAttnProcessor2_0())
    # self-attention only in the UNet's third down block and the mirrored up block: latents (VAE 8x) downsampled 4x
    s = size // 32
    kw = dict(hidden_states=_g(1, 32, s, s), encoder_hidden_states=_g(1, 8, 24))
    return m, kw


def ernie_image(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import ErnieImageTransformer2DModel

    m = ErnieImageTransformer2DModel(hidden_size=32, num_attention_heads=2, num_layers=1, ffn_hidden_size=64,
                                     in_channels=16, out_channels=16, text_in_dim=24, rope_axes_dim=(4, 6, 6))
    s, L = size // 16, 8  # VAE 8x, latents 2x2-patchified to channels by the pipeline; tokens sequence-first inside
    kw = dict(hidden_states=_g(1, 16, s, s), timestep=torch.full((1,), 500.0), text_bth=_g(1, L, 24),
              text_lens=torch.tensor([L]))
    return m, kw


def glm_image(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import GlmImageTransformer2DModel
    from diffusers.models.transformers.transformer_glm_image import GlmImageKVCache

    m = GlmImageTransformer2DModel(patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=16,
                                   num_attention_heads=2, text_embed_dim=32, time_embed_dim=32, condition_dim=16,
                                   prior_vq_quantizer_codebook_size=64)
    s, L = size // 8, 8
    # the AR prior's image tokens: a 32-px grid upsampled 2x (nearest) onto the 2x2-patched latent grid
    prior = torch.randint(0, 64, (1, 1, size // 32, size // 32), generator=torch.Generator().manual_seed(0))
    prior = torch.nn.functional.interpolate(prior.float(), scale_factor=2, mode="nearest").long().view(1, -1)
    kw = dict(hidden_states=_g(1, 4, s, s), encoder_hidden_states=_g(1, L, 32), prior_token_id=prior,
              prior_token_drop=torch.zeros_like(prior, dtype=torch.bool), timestep=torch.full((1,), 499.0),
              target_size=torch.tensor([[size, size]], dtype=torch.float32), crop_coords=torch.zeros(1, 2),
              kv_caches=GlmImageKVCache(num_layers=1))  # text-to-image: the pipeline's cache, never set to a mode
    return m, kw


def ideogram4(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import Ideogram4Pipeline, Ideogram4Transformer2DModel

    m = Ideogram4Transformer2DModel(in_channels=16, num_layers=1, attention_head_dim=16, num_attention_heads=2,
                                    intermediate_size=64, adaln_dim=16, llm_features_dim=24, mrope_section=(4, 2, 2))
    h = w = size // 16  # VAE 8x, latents 2x2-patchified to channels
    L, n = 8, 6  # the conditional pass: one packed sequence [left pad][text][image], text left-padded to L
    pos, seg, ind = Ideogram4Pipeline._prepare_ids([n], h, w, L, torch.device("cpu"))
    text = torch.cat([torch.zeros(1, L - n, 24), _g(1, n, 24), torch.zeros(1, h * w, 24)], dim=1)
    kw = dict(hidden_states=torch.cat([torch.zeros(1, L, 16), _g(1, h * w, 16)], dim=1), timestep=torch.full((1,), 0.5),
              encoder_hidden_states=text, position_ids=pos, segment_ids=seg, indicator=ind)
    return m, kw


def krea2(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import Krea2Pipeline, Krea2Transformer2DModel

    m = Krea2Transformer2DModel(in_channels=16, num_layers=1, attention_head_dim=16, num_attention_heads=2,
                                num_key_value_heads=1, intermediate_size=64, timestep_embed_dim=32, text_hidden_dim=32,
                                num_text_layers=3, text_num_attention_heads=2, text_num_key_value_heads=2,
                                text_intermediate_size=64, num_layerwise_text_blocks=1, num_refiner_text_blocks=1,
                                axes_dims_rope=(4, 6, 6))
    h = w = size // 16  # Wan VAE 8x, latents packed 2x2
    L = 8  # padded to max_sequence_length; per token a stack of tapped text-encoder layers (B, L, layers, D)
    mask = torch.arange(L)[None] < 6
    kw = dict(hidden_states=_g(1, h * w, 16), encoder_hidden_states=_g(1, L, 3, 32), timestep=torch.full((1,), 0.5),
              position_ids=Krea2Pipeline.prepare_position_ids(L, h, w, torch.device("cpu")),
              encoder_attention_mask=mask)
    return m, kw


def longcat_image(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import LongCatImageTransformer2DModel
    from diffusers.pipelines.longcat_image.pipeline_longcat_image import prepare_pos_ids

    m = LongCatImageTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                       attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                       pooled_projection_dim=32, axes_dims_rope=[4, 6, 6])
    h = w = size // 16
    L = 8
    # ids (modality, row, col): text on the diagonal (i, i); image rows/cols offset by the tokenizer max length 512
    kw = dict(hidden_states=_g(1, h * w, 16), encoder_hidden_states=_g(1, L, 32), timestep=torch.full((1,), 0.5),
              img_ids=prepare_pos_ids(modality_id=1, type="image", start=(512, 512), height=h, width=w),
              txt_ids=prepare_pos_ids(modality_id=0, type="text", start=(0, 0), num_token=L))
    return m, kw


def nucleus_moe(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import NucleusMoEImageTransformer2DModel

    # one dense block, one expert-choice MoE block
    m = NucleusMoEImageTransformer2DModel(patch_size=2, in_channels=16, num_layers=2, attention_head_dim=16,
                                          num_attention_heads=2, num_key_value_heads=1, joint_attention_dim=32,
                                          axes_dims_rope=(4, 6, 6), dense_moe_strategy="leave_first_block_dense",
                                          num_experts=4, moe_intermediate_dim=32, capacity_factors=2.0)
    for n, p in m.named_parameters():  # the experts' packed weights are left as torch.empty (set by loading)
        if n.endswith(("gate_up_proj", "down_proj")):
            torch.nn.init.normal_(p, std=0.02)
    h = w = size // 16  # Wan VAE 8x, latents packed 2x2
    # one prompt pads to its own length: the pipeline drops the all-true mask
    kw = dict(hidden_states=_g(1, h * w, 16), img_shapes=[(1, h, w)], encoder_hidden_states=_g(1, 8, 32),
              timestep=torch.full((1,), 0.5))
    return m, kw


def ovis_image(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import OvisImageTransformer2DModel

    from toma_export.models.inputs import flux_image_ids

    m = OvisImageTransformer2DModel(patch_size=1, in_channels=16, out_channels=16, num_layers=1, num_single_layers=1,
                                    attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                    axes_dims_rope=(4, 6, 6))
    h = w = size // 16
    L = 8
    txt = torch.arange(L).float()[:, None] * torch.tensor([0.0, 1.0, 1.0])  # text ids on the diagonal (0, i, i)
    kw = dict(hidden_states=_g(1, h * w, 16), encoder_hidden_states=_g(1, L, 32), timestep=torch.full((1,), 0.5),
              img_ids=flux_image_ids(h, w), txt_ids=txt)
    return m, kw


def prx(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import PRXTransformer2DModel

    m = PRXTransformer2DModel(in_channels=4, patch_size=2, context_in_dim=24, hidden_size=32, mlp_ratio=2.0,
                              num_heads=2, depth=1, axes_dim=[8, 8])
    s, L = size // 8, 8  # the Flux-VAE variant (8x); the model patchifies 2x2 itself
    # text padded to max_length: bool mask of the real tokens
    kw = dict(hidden_states=_g(1, 4, s, s), timestep=torch.full((1,), 0.5), encoder_hidden_states=_g(1, L, 24),
              attention_mask=torch.arange(L)[None] < 6)
    return m, kw


def chronoedit(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import ChronoEditTransformer3DModel

    m = ChronoEditTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=12, out_channels=4,
                                     text_dim=32, freq_dim=32, ffn_dim=64, num_layers=1, image_dim=16,
                                     rope_max_seq_len=64)
    f, s = _latent_frames(5, 4), size // 8  # Wan's VAE
    # Wan I2V layout: latents, a 4-channel first-frame mask and the image-condition latents concatenated on channels;
    # CLIP image tokens (here 4 of width 16) are prepended to the text tokens inside the model
    x = torch.cat([_g(1, 4, f, s, s), torch.zeros(1, 4, f, s, s), _g(1, 4, f, s, s)], dim=1)
    x[:, 4:8, 0] = 1
    kw = dict(hidden_states=x, timestep=torch.full((1,), 500.0), encoder_hidden_states=_g(1, 8, 32),
              encoder_hidden_states_image=_g(1, 4, 16))
    return m, kw


def consisid(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from types import SimpleNamespace

    from diffusers import ConsisIDTransformer3DModel
    from diffusers.pipelines.consisid.pipeline_consisid import ConsisIDPipeline  # the top-level name needs opencv

    s, f = size // 8, _latent_frames(9, 4)
    # 3 heads of 16: the face cross-attention's key width is 2/3 of the model width (2048 of 3072 in the release)
    m = ConsisIDTransformer3DModel(num_attention_heads=3, attention_head_dim=16, in_channels=8, out_channels=4,
                                   time_embed_dim=32, text_embed_dim=32, num_layers=1, sample_width=s, sample_height=s,
                                   sample_frames=9, max_text_seq_length=8, use_rotary_positional_embeddings=True,
                                   is_train_face=True, is_kps=False, cross_attn_interval=1, cross_attn_dim_head=8,
                                   cross_attn_num_heads=2, LFE_id_dim=16, LFE_vit_dim=16, LFE_depth=1, LFE_dim_head=8,
                                   LFE_num_heads=2, LFE_num_id_token=2, LFE_num_querie=4, LFE_output_dim=32,
                                   LFE_ff_mult=2, LFE_num_scale=1)
    stub = SimpleNamespace(vae_scale_factor_spatial=8, transformer=m)
    rope = ConsisIDPipeline._prepare_rotary_positional_embeddings(stub, size, size, f, torch.device("cpu"))
    # CogVideoX layout (B, F, C, H, W): noise and the first-frame image latents (zeros after) concatenated on channels;
    # face identity: an insightface vector and one scale of EVA-CLIP hidden states
    image = torch.cat([_g(1, 1, 4, s, s), torch.zeros(1, f - 1, 4, s, s)], dim=1)
    kw = dict(hidden_states=torch.cat([_g(1, f, 4, s, s), image], dim=2), encoder_hidden_states=_g(1, 8, 32),
              timestep=torch.tensor([500]), image_rotary_emb=rope, id_cond=_g(1, 16), id_vit_hidden=[_g(1, 5, 16)])
    return m, kw


def easyanimate(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import EasyAnimateTransformer3DModel

    s, f = size // 8, _latent_frames(5, 4)
    m = EasyAnimateTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                      patch_size=2, sample_width=s, sample_height=s, num_layers=1, mmdit_layers=1,
                                      time_embed_dim=32, text_embed_dim=32)
    # text-to-video pipeline: Qwen2-VL hidden states only, no T5 stream, no inpaint/control latents
    kw = dict(hidden_states=_g(1, 4, f, s, s), timestep=torch.full((1,), 500.0), encoder_hidden_states=_g(1, 8, 32))
    return m, kw


def helios(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import HeliosTransformer3DModel

    m = HeliosTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                 text_dim=32, freq_dim=32, ffn_dim=64, num_layers=1, rope_dim=(4, 6, 6))
    f, s = _latent_frames(9, 4), size // 8  # Wan's VAE; the chunk's 3 latent frames differ from the short history's 2
    hist = [16, 2, 1]  # the pipeline's history_sizes (long, mid, 1x), keep_first_frame=True
    prefix, long, mid, short1x, cur = torch.arange(sum([1, *hist, f])).split([1, *hist, f])
    # first chunk of text-to-video: zero history; the model prepends (long 4x8x8-, mid 2x4x4-, short 1x2x2-patched)
    # history tokens to the chunk's tokens, so the chunk's grid is the sequence's suffix
    kw = dict(hidden_states=_g(1, 4, f, s, s), timestep=torch.full((1,), 500.0), encoder_hidden_states=_g(1, 8, 32),
              indices_hidden_states=cur[None], indices_latents_history_short=torch.cat([prefix, short1x])[None],
              indices_latents_history_mid=mid[None], indices_latents_history_long=long[None],
              latents_history_short=torch.zeros(1, 4, 1 + hist[2], s, s),
              latents_history_mid=torch.zeros(1, 4, hist[1], s, s),
              latents_history_long=torch.zeros(1, 4, hist[0], s, s))
    return m, kw


def hunyuan_framepack(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    m = HunyuanVideoFramepackTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2,
                                                attention_head_dim=16, num_layers=1, num_single_layers=1,
                                                num_refiner_layers=1, patch_size=2, text_embed_dim=32,
                                                pooled_projection_dim=16, rope_axes_dim=(4, 6, 6),
                                                has_image_proj=True, image_proj_dim=16, has_clean_x_embedder=True)
    f, s, L = _latent_frames(9, 4), size // 8, 8  # the section's latent window (3 frames; 9 in the release)
    hist = [1, 2, 16]  # inverted anti-drifting sampling (the default), first and only section: no padding
    prefix, _, cur, h1, h2, h4 = torch.arange(sum([1, 0, f, *hist])).split([1, 0, f, *hist])
    # the model prepends clean (image + 1x history, 2x2), 2x- (4x4) and 4x- (8x8-patched) history tokens to the
    # window's tokens; history is zeros before any section is generated
    kw = dict(hidden_states=_g(1, 4, f, s, s), timestep=torch.full((1,), 500.0), encoder_hidden_states=_g(1, L, 32),
              encoder_attention_mask=torch.ones(1, L, dtype=torch.long), pooled_projections=_g(1, 16),
              image_embeds=_g(1, 4, 16), indices_latents=cur, guidance=torch.full((1,), 10000.0),
              latents_clean=torch.cat([_g(1, 4, 1, s, s), torch.zeros(1, 4, hist[0], s, s)], dim=2),
              indices_latents_clean=torch.cat([prefix, h1]), latents_history_2x=torch.zeros(1, 4, hist[1], s, s),
              indices_latents_history_2x=h2, latents_history_4x=torch.zeros(1, 4, hist[2], s, s),
              indices_latents_history_4x=h4)  # 1-D frame indices, unlike Helios
    return m, kw


def joyimage_edit(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import JoyImageEditTransformer3DModel

    m = JoyImageEditTransformer3DModel(in_channels=4, hidden_size=32, num_attention_heads=2, text_dim=32,
                                       num_layers=1, rope_dim_list=[4, 6, 6])
    s = size // 8
    # 6-D multi-item latents (B, items, C, T, H, W): the reference image's latents, then the noise (one frame each);
    # the model moves the noise item first and stacks the items as frames
    kw = dict(hidden_states=_g(1, 2, 4, 1, s, s), timestep=torch.full((1,), 500.0), encoder_hidden_states=_g(1, 8, 32))
    return m, kw


def kandinsky6(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import Kandinsky6Transformer3DModel

    m = Kandinsky6Transformer3DModel(in_visual_dim=4, out_visual_dim=4, in_text_dim=32, in_text_dim2=16, time_dim=32,
                                     model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=1,
                                     axes_dims=(4, 6, 6), in_audio_dim=8, out_audio_dim=8,
                                     visual_token_type_num_embeddings=2)
    f, s, L, A = _latent_frames(5, 4), size // 8, 8, 6
    # image+text to video+audio: latents (B, F, H, W, C) with the reference frame appended as a tail frame (token
    # type 1, temporal rope position 0); channels [latent | zero cond latent | mask]; audio latents (B, A, C)
    x = torch.cat([_g(1, f, s, s, 4), _g(1, 1, s, s, 4)], dim=1)
    mask = torch.zeros(1, f + 1, s, s, 1)
    mask[:, -1] = 1
    types = torch.zeros(1, f + 1, dtype=torch.long)
    types[:, -1] = 1
    kw = dict(hidden_states=torch.cat([x, torch.zeros_like(x), mask], dim=-1), encoder_hidden_states=_g(1, L, 32),
              pooled_projections=_g(1, 16), timestep=torch.full((1,), 500.0), audio_hidden_states=_g(1, A, 8),
              visual_rope_pos=(torch.cat([torch.arange(f), torch.zeros(1, dtype=torch.long)]), torch.arange(s // 2),
                               torch.arange(s // 2)),
              encoder_attention_mask=torch.ones(1, L, dtype=torch.bool), visual_token_type_ids=types)
    return m, kw


def latte(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import LatteTransformer3DModel

    f, s = 5, size // 8  # an image VAE per frame: no temporal compression
    m = LatteTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                                num_layers=1, cross_attention_dim=32, sample_size=s, patch_size=2,
                                norm_type="ada_norm_single", caption_channels=16, video_length=f)
    # spatial blocks attend within a frame (batch B*F), temporal blocks across frames (batch B*H*W)
    kw = dict(hidden_states=_g(1, 4, f, s, s), encoder_hidden_states=_g(1, 8, 16), timestep=torch.full((1,), 500.0),
              enable_temporal_attentions=True)
    return m, kw


def motif_video(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import MotifVideoTransformer3DModel

    m = MotifVideoTransformer3DModel(in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                                     num_layers=1, num_single_layers=1, text_embed_dim=32, rope_axes_dim=(4, 6, 6))
    f, s, L = _latent_frames(5, 4), size // 8, 8
    # text-to-video: latents, zero condition latents and a zero 1-channel mask concatenated on channels
    x = torch.cat([_g(1, 4, f, s, s), torch.zeros(1, 5, f, s, s)], dim=1)
    kw = dict(hidden_states=x, timestep=torch.full((1,), 500.0), encoder_hidden_states=_g(1, L, 32),
              encoder_attention_mask=torch.ones(1, L, dtype=torch.bool))
    return m, kw


def sana_wm(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    import numpy as np
    from diffusers import SanaWMTransformer3DModel
    from diffusers.pipelines.sana_wm.cam_utils import prepare_camera

    # layer 0 linear attention, layer 1 softmax attention (softmax_every_n=2); Plucker channels 6 x temporal stride 8
    m = SanaWMTransformer3DModel(in_channels=4, num_layers=2, hidden_size=32, num_attention_heads=2,
                                 softmax_every_n=2, linear_head_dim=16, chunk_plucker_channels=48,
                                 chunk_plucker_post_attn_blocks=2, image_size=size, caption_channels=32)
    n, L = 9, 8  # pixel frames (8k+1: LTX-2's VAE, 32x spatial, 8x temporal)
    f, s = _latent_frames(n, 8), size // 32
    cam = prepare_camera(np.tile(np.eye(4, dtype=np.float32), (n, 1, 1)),
                         np.tile(np.array([[size, size, size / 2, size / 2]], dtype=np.float32), (n, 1)),
                         target_size=(size, size), vae_stride=(8, 32, 32))  # a static camera
    # first latent frame is the clean image, its per-frame timestep pinned to 0; text (B, 1, L, D)
    kw = dict(hidden_states=_g(1, 4, f, s, s), timestep=torch.tensor([[[0.0] + [500.0] * (f - 1)]]),
              encoder_hidden_states=_g(1, 1, L, 32), mask=torch.ones(1, L, dtype=torch.long),
              data_info={"img_hw": torch.tensor([[size, size]], dtype=torch.float)},
              camera_conditions=cam["raymap"][None], chunk_plucker=cam["chunk_plucker"][None])
    return m, kw


def wan_animate(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import WanAnimateTransformer3DModel

    m = WanAnimateTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=12, latent_channels=4,
                                     out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=1, image_dim=16,
                                     rope_max_seq_len=64, motion_encoder_channel_sizes={"16": 8, "8": 8, "4": 8},
                                     motion_encoder_size=16, motion_style_dim=16, motion_dim=4,
                                     motion_encoder_dim=16, face_encoder_hidden_dim=32, face_encoder_num_heads=2,
                                     inject_face_latents_blocks=1, motion_encoder_batch_size=8)
    n, s = 5, size // 8  # pixel frames of the segment; Wan's VAE
    f = _latent_frames(n, 4)
    # animate mode: the reference image's latent frame comes first, so latents have f + 1 frames; channels
    # [noise | 4-channel mask | reference + previous-segment condition latents]; pose latents cover the f
    # generated frames; face crops are pixels (B, 3, frames, 16, 16) at the motion encoder's size
    x = torch.cat([_g(1, 4, f + 1, s, s), torch.zeros(1, 4, f + 1, s, s), _g(1, 4, f + 1, s, s)], dim=1)
    x[:, 4:8, 0] = 1
    kw = dict(hidden_states=x, timestep=torch.full((1,), 500.0), encoder_hidden_states=_g(1, 8, 32),
              encoder_hidden_states_image=_g(1, 4, 16), pose_hidden_states=_g(1, 4, f, s, s),
              face_pixel_values=_g(1, 3, n, 16, 16).clamp(-1, 1))
    return m, kw


def anyflow(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import AnyFlowTransformer3DModel

    m = AnyFlowTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                  text_dim=32, freq_dim=32, ffn_dim=64, num_layers=1, rope_max_seq_len=64)
    f, s = _latent_frames(5, 4), size // 8  # Wan's VAE
    # latents (B, F, C, H, W); per-frame flow-map timesteps t and r (B, F), r < t with mean velocity
    kw = dict(hidden_states=_g(1, f, 4, s, s), timestep=torch.full((1, f), 750.0), r_timestep=torch.full((1, f), 500.0),
              encoder_hidden_states=_g(1, 8, 32))
    return m, kw


def minimax_h3(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import MiniMaxH3Transformer3DModel
    from diffusers.modular_pipelines.minimax_h3.before_denoise import MiniMaxH3PrepareLayoutStep
    from diffusers.modular_pipelines.minimax_h3.modular_pipeline import (
        MINIMAX_H3_AUDIO_CHANNELS,
        MINIMAX_H3_AUDIO_TAG,
        MINIMAX_H3_VIDEO_TAG,
        audio_latent_num_frames,
        video_latent_num_frames,
    )

    m = MiniMaxH3Transformer3DModel(num_attention_heads=2, attention_head_dim=16, hidden_size=32, num_layers=1,
                                    num_refiner_layers=1, ffn_dim=64, in_channels=4, audio_in_channels=8, text_dim=32,
                                    freq_dim=32, time_embed_hidden_dim=32, time_embed_dim=16, rope_freq_dim=2)
    n, s, L = 5, size // 16, 8  # pixel frames 17k + 5; its VAE: 16x spatial, 17 frames -> 5 latents per chunk
    f, A = video_latent_num_frames(n, 17, 5), audio_latent_num_frames(n)
    pos, tags, vid, aud, txt, _, _ = MiniMaxH3PrepareLayoutStep.build_packed_sequence(
        torch.ones(L, dtype=torch.long), f, s, s, A, (1, 2, 2), MINIMAX_H3_AUDIO_CHANNELS, MINIMAX_H3_AUDIO_TAG,
        MINIMAX_H3_VIDEO_TAG)
    # text-to-video+audio: one packed sequence [text | audio (channel-major) | video], scattered in by index_copy;
    # video rows come pre-patchified (B, F*H*W/4, 4*C); one distinct timestep for every row
    kw = dict(hidden_states=_g(1, vid.numel(), 16), audio_hidden_states=_g(1, aud.numel(), 8),
              encoder_hidden_states=_g(1, L, 32), timestep=torch.tensor([0.5]),
              timestep_indices=torch.zeros(pos.shape[0], dtype=torch.long), token_tags=tags, position_ids=pos,
              video_indices=vid, audio_indices=aud, text_indices=txt)
    return m, kw


def ace_step(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import AceStepTransformer1DModel

    # 2 layers: one sliding-window, one full attention (the default alternation)
    m = AceStepTransformer1DModel(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  num_key_value_heads=1, head_dim=16, in_channels=24, audio_acoustic_hidden_dim=8,
                                  sliding_window=8)
    T, L = 32, 8  # audio latent frames (no image grid; size is ignored)
    # context: source latents (the tiled silence latent for text-to-music) and the chunk mask concatenated on channels
    ctx = torch.cat([_g(1, T, 8), torch.ones(1, T, 8)], dim=-1)
    kw = dict(hidden_states=_g(1, T, 8), timestep=torch.full((1,), 0.5), timestep_r=torch.full((1,), 0.5),
              encoder_hidden_states=_g(1, L, 32), context_latents=ctx)
    return m, kw


def minimax_music3(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import MiniMaxMusic3Transformer1DModel

    m = MiniMaxMusic3Transformer1DModel(in_channels=8, condition_dim=16, num_layers=1, num_attention_heads=2,
                                        attention_head_dim=16, ff_inner_dim=64, rotary_dim=8, fourier_embedding_dim=16)
    T = 32  # audio latent frames (no image grid; size is ignored)
    # latents (B, C, T); the condition is frame-aligned with them (B, T, D); flow-matching time in [0, 1]
    kw = dict(hidden_states=_g(1, 8, T), timestep=torch.full((1,), 0.5), encoder_hidden_states=_g(1, T, 16))
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
    "bria-fibo": ("BriaFiboTransformer2DModel", bria_fibo),
    "bria-fibo2": ("BriaFibo2Transformer2DModel", bria_fibo2),
    "cogview3plus": ("CogView3PlusTransformer2DModel", cogview3plus),
    "dreamlite": ("DreamLiteTransformer2DModel", dreamlite),
    "ernie-image": ("ErnieImageTransformer2DModel", ernie_image),
    "glm-image": ("GlmImageTransformer2DModel", glm_image),
    "ideogram4": ("Ideogram4Transformer2DModel", ideogram4),
    "krea2": ("Krea2Transformer2DModel", krea2),
    "longcat-image": ("LongCatImageTransformer2DModel", longcat_image),
    "nucleus-moe": ("NucleusMoEImageTransformer2DModel", nucleus_moe),
    "ovis-image": ("OvisImageTransformer2DModel", ovis_image),
    "prx": ("PRXTransformer2DModel", prx),
    "chronoedit": ("ChronoEditTransformer3DModel", chronoedit),
    "consisid": ("ConsisIDTransformer3DModel", consisid),
    "easyanimate": ("EasyAnimateTransformer3DModel", easyanimate),
    "helios": ("HeliosTransformer3DModel", helios),
    "hunyuan-framepack": ("HunyuanVideoFramepackTransformer3DModel", hunyuan_framepack),
    "joyimage-edit": ("JoyImageEditTransformer3DModel", joyimage_edit),
    "kandinsky6": ("Kandinsky6Transformer3DModel", kandinsky6),
    "latte": ("LatteTransformer3DModel", latte),
    "motif-video": ("MotifVideoTransformer3DModel", motif_video),
    "sana-wm": ("SanaWMTransformer3DModel", sana_wm),
    "wan-animate": ("WanAnimateTransformer3DModel", wan_animate),
    "anyflow": ("AnyFlowTransformer3DModel", anyflow),
    "minimax-h3": ("MiniMaxH3Transformer3DModel", minimax_h3),
    "ace-step": ("AceStepTransformer1DModel", ace_step),
    "minimax-music3": ("MiniMaxMusic3Transformer1DModel", minimax_music3),
}


def try_one(name: str, size: int, onnx: bool = False) -> str:
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
        report_for(program, cls, size, size).format()  # what `toma-export inspect` prints
    except ToMAError as e:
        return f"{name:<16} {cls:<34} ToMAError: {str(e).splitlines()[0][:200]}"
    except Exception as e:  # noqa: BLE001 - the point of this script: any raw exception is a bug
        return f"{name:<16} {cls:<34} RAW {type(e).__name__}: {str(e)[:200]}"
    eager = _try_apply(model, kw)
    if onnx:
        eager += f"; build: {_try_build(model, kw, first)}"
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


def _try_build(model: torch.nn.Module, kw: dict[str, Any], reference: torch.Tensor) -> str:
    """ONNX export and an ONNX Runtime call of the select variant (the bench's ``onnxruntime`` backend builds
    engines as ``toma-export build`` does): the max abs difference from the rewritten program, or the
    ToMAError's first words; RAW is a bug."""
    from toma_export.bench.backends import get_backend

    try:
        step = get_backend("onnxruntime")(model, toma_export.ToMAConfig(ratio=0.5), kw)
        with torch.no_grad():
            out = step(**kw)[0]
        while isinstance(out, (tuple, list)):
            out = out[0]
        return f"onnxruntime max|diff| {float((out.float() - reference.float()).abs().max()):.1e}"
    except ToMAError as e:
        return f"ToMAError ({str(e).splitlines()[0][:80]})"
    except Exception as e:  # noqa: BLE001 - any raw exception is a bug
        return f"RAW {type(e).__name__}: {str(e)[:120]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("names", nargs="*", default=list(TRIALS))
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--build", action="store_true",
                    help="also export to ONNX and run on ONNX Runtime (slower: one export per class)")
    args = ap.parse_args()
    logging.getLogger("torch._subclasses.fake_tensor").setLevel(logging.CRITICAL)
    torch.set_num_threads(1)
    print(f"diffusers transformer classes through toma_export.rewrite and eager apply at ratio 0.5, "
          f"{args.size}x{args.size} px")
    for name in args.names:
        t = time.perf_counter()
        line = try_one(name, args.size, args.build)
        print(f"{line}  ({time.perf_counter() - t:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
