"""The trial table: current diffusers transformer classes at toy width, inputs as their pipelines pass them.

``scripts/try_architectures.py`` runs every row through the graph pass and eager ``apply``. Rows are data
(:class:`~toma_export.models.trials.Trial`: class, config, inputs over named sizes); the embedded ``-tiny``
architectures are read from :data:`toma_export.models.architectures.ARCHITECTURES` (their one home) and
take the one example-input builder of their family, as do other classes of a known family (``sd3``,
``z-image``). The few functions below compute what a pipeline computes with code (position ids, masks,
set-up a parent model does), and rows call them by name.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from toma_export.models.architectures import ARCHITECTURES
from toma_export.models.inputs import flux_image_ids
from toma_export.models.spec import spec_for_config
from toma_export.models.trials import (
    MODEL,
    Arange,
    Call,
    Cat,
    D,
    Fill,
    PrefixMask,
    Randn,
    Tensor,
    Trial,
    imported,
    ones,
    resolve,
    zeros,
)

CPU = torch.device("cpu")
BOOL, LONG = torch.bool, torch.long


def _flux3_ids(h: int, text_len: int, part: str) -> torch.Tensor:
    """Flux3's float ids ``(t, h, w, l)``: image rows/cols scaled by 0.5 (``image_rope_scale``), text on ``l``."""
    if part == "img":
        img = torch.cartesian_prod(torch.arange(1), torch.arange(h), torch.arange(h), torch.arange(1)).float()
        img[:, 1:3] *= 0.5
        return img
    return torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(text_len)).float()


def _omnigen_mask(text_len: int, n: int) -> torch.Tensor:
    """OmniGen's processor mask: causal over text + the time token, full attention among the image tokens."""
    mask = torch.tril(torch.ones(n, n))
    mask[text_len:, text_len:] = 1
    return mask[None]


def _pipeline_method(path: str, model: torch.nn.Module, *args: Any) -> Any:
    """A pipeline's helper (``Pipeline._prepare_rotary_positional_embeddings``) on a stand-in for the pipeline."""
    return imported(path)(SimpleNamespace(vae_scale_factor_spatial=8, transformer=model), *args)


def _glm_prior(side: int) -> torch.Tensor:
    """The AR prior's image tokens: a 32-px grid upsampled 2x (nearest) onto the 2x2-patched latent grid."""
    prior = torch.randint(0, 64, (1, 1, side, side), generator=torch.Generator().manual_seed(0))
    return torch.nn.functional.interpolate(prior.float(), scale_factor=2, mode="nearest").long().view(1, -1)


def _diagonal_text_ids(text_len: int) -> torch.Tensor:
    """Text ids on the diagonal ``(0, i, i)``."""
    return torch.arange(text_len).float()[:, None] * torch.tensor([0.0, 1.0, 1.0])


def _first_frame_masked(x: torch.Tensor) -> torch.Tensor:
    """Wan I2V channels ``[latents | 4-channel mask | condition]``: the mask marks the first latent frame."""
    x[:, 4:8, 0] = 1
    return x


def _static_camera(frames: int, size: int, key: str) -> torch.Tensor:
    """Sana-WM's camera inputs for a static camera (identity poses, centred intrinsics), batch of 1."""
    import numpy as np
    from diffusers.pipelines.sana_wm.cam_utils import prepare_camera

    cam = prepare_camera(np.tile(np.eye(4, dtype=np.float32), (frames, 1, 1)),
                         np.tile(np.array([[size, size, size / 2, size / 2]], dtype=np.float32), (frames, 1)),
                         target_size=(size, size), vae_stride=(8, 32, 32))
    return cam[key][None]


def _minimax_h3_inputs(s: int, text_len: int) -> dict[str, Any]:
    """Text-to-video+audio: one packed sequence ``[text | audio (channel-major) | video]`` scattered in by
    ``index_copy``; video rows come pre-patchified ``(B, F*H*W/4, 4*C)``; one distinct timestep per row."""
    from diffusers.modular_pipelines.minimax_h3.before_denoise import MiniMaxH3PrepareLayoutStep
    from diffusers.modular_pipelines.minimax_h3.modular_pipeline import (
        MINIMAX_H3_AUDIO_CHANNELS,
        MINIMAX_H3_AUDIO_TAG,
        MINIMAX_H3_VIDEO_TAG,
        audio_latent_num_frames,
        video_latent_num_frames,
    )

    n = 5  # pixel frames 17k + 5; its VAE: 16x spatial, 17 frames -> 5 latents per chunk
    frames, audio = video_latent_num_frames(n, 17, 5), audio_latent_num_frames(n)
    pos, tags, vid, aud, txt, _, _ = MiniMaxH3PrepareLayoutStep.build_packed_sequence(
        torch.ones(text_len, dtype=torch.long), frames, s, s, audio, (1, 2, 2), MINIMAX_H3_AUDIO_CHANNELS,
        MINIMAX_H3_AUDIO_TAG, MINIMAX_H3_VIDEO_TAG)

    def g(*shape: int) -> torch.Tensor:
        return resolve(Randn(shape), {})

    return dict(hidden_states=g(1, vid.numel(), 16), audio_hidden_states=g(1, aud.numel(), 8),
                encoder_hidden_states=g(1, text_len, 32), timestep=torch.tensor([0.5]),
                timestep_indices=torch.zeros(pos.shape[0], dtype=torch.long), token_tags=tags, position_ids=pos,
                video_indices=vid, audio_indices=aud, text_indices=txt)


def _gqa_processors(model: torch.nn.Module) -> None:
    """DreamLite's UNet installs its GQA-aware processor (the default one fails with one KV head)."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.unets.unet_dreamlite import DreamLiteAttnProcessor2_0

    for a in model.modules():
        if isinstance(a, Attention):
            processor: Any = DreamLiteAttnProcessor2_0()  # diffusers types set_processor by its own classes
            a.set_processor(processor)


def _init_experts(model: torch.nn.Module) -> None:
    """The experts' packed weights are left as ``torch.empty`` (set by loading)."""
    for n, p in model.named_parameters():
        if n.endswith(("gate_up_proj", "down_proj")):
            torch.nn.init.normal_(p, std=0.02)


def _embedded(name: str) -> Trial:
    """An embedded architecture (its config's one home is ``architectures.py``) with its family's inputs."""
    cls, cfg, _ = ARCHITECTURES[name]
    return Trial(name, cls, cfg, frames=5 if spec_for_config({"_class_name": cls, **cfg}).video else 1)


# Inputs shared by rows.
_T500, _T05 = Fill((1,), 500.0), Fill((1,), 0.5)
_FLUX_IDS = dict(img_ids=Call(flux_image_ids, (D("s16"), D("s16"))), txt_ids=zeros("L", 3))
_COGVIEW = dict(hidden_states=Randn((1, 4, "s8", "s8")), encoder_hidden_states=Randn((1, "L", 32)), timestep=_T500,
                original_size=Tensor([[D("size"), D("size")]], torch.float32),
                target_size=Tensor([[D("size"), D("size")]], torch.float32), crop_coords=zeros(1, 2))
_WAN_F = {"f": "lat(5, 4)"}  # Wan's VAE (4x temporal) on 5 pixel frames
_WAN_SMALL = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, text_dim=32,
                  freq_dim=32, ffn_dim=64)
_FLUX_SMALL = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                   num_attention_heads=2, joint_attention_dim=32)

#: name -> trial, in the order the script runs them.
TRIALS: dict[str, Trial] = {t.name: t for t in (
    *(_embedded(n) for n in ARCHITECTURES if n.endswith("-tiny")),
    Trial("chroma", "ChromaTransformer2DModel",
          dict(_FLUX_SMALL, axes_dims_rope=(4, 6, 6), approximator_num_channels=8, approximator_hidden_dim=32,
               approximator_layers=1),
          dict(hidden_states=Randn((1, "s16 * s16", 16)), encoder_hidden_states=Randn((1, "L", 32)), timestep=_T05,
               **_FLUX_IDS, attention_mask=ones(1, "L + s16 * s16", dtype=BOOL))),
    # HunyuanImage-2.1's VAE downsamples 32x; a 16x16-pixel token is close enough for a trial
    Trial("hunyuan-image", "HunyuanImageTransformer2DModel",
          dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
               num_single_layers=1, num_refiner_layers=1, patch_size=(1, 1), text_embed_dim=32, rope_axes_dim=(8, 8)),
          dict(hidden_states=Randn((1, 4, "s16", "s16")), timestep=_T500, encoder_hidden_states=Randn((1, 8, 32)),
               encoder_attention_mask=ones(1, 8, dtype=LONG))),
    Trial("ltx-video", "LTXVideoTransformer3DModel",
          dict(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
               num_layers=1, caption_channels=16),
          dict(hidden_states=Randn((1, "2 * s32 * s32", 8)), encoder_hidden_states=Randn((1, 8, 16)), timestep=_T500,
               encoder_attention_mask=ones(1, 8, dtype=LONG), num_frames=2, height=D("s32"), width=D("s32"))),
    # CogView3Plus / CogView4: 4-D latents and SDXL-style size conditioning
    Trial("cogview4", "CogView4Transformer2DModel",
          dict(patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=2,
               text_embed_dim=32, time_embed_dim=32, condition_dim=16, rope_axes_dim=(8, 8)),
          _COGVIEW),
    Trial("sana", "SanaTransformer2DModel",  # Sana's DC-AE: 32x
          dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
               num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32, caption_channels=32,
               sample_size=D("s32"), patch_size=1),
          dict(hidden_states=Randn((1, 4, "s32", "s32")), encoder_hidden_states=Randn((1, 8, 32)), timestep=_T500)),
    Trial("lumina2", "Lumina2Transformer2DModel",
          dict(sample_size=D("s8"), patch_size=2, in_channels=4, hidden_size=32, num_layers=1, num_refiner_layers=1,
               num_attention_heads=2, num_kv_heads=1, multiple_of=16, axes_dim_rope=(4, 6, 6), axes_lens=(64, 64, 64),
               cap_feat_dim=32),
          dict(hidden_states=Randn((1, 4, "s8", "s8")), timestep=_T05, encoder_hidden_states=Randn((1, 8, 32)),
               encoder_attention_mask=ones(1, 8, dtype=BOOL))),
    Trial("pixart", "PixArtTransformer2DModel",
          dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=1,
               cross_attention_dim=32, sample_size=D("s8"), patch_size=2, norm_type="ada_norm_single",
               caption_channels=24, use_additional_conditions=False),
          dict(hidden_states=Randn((1, 4, "s8", "s8")), encoder_hidden_states=Randn((1, 8, 24)), timestep=_T500,
               added_cond_kwargs={"resolution": None, "aspect_ratio": None})),
    Trial("sd3", "SD3Transformer2DModel",
          dict(sample_size=D("s8"), patch_size=2, in_channels=4, num_layers=1, attention_head_dim=16,
               num_attention_heads=2, joint_attention_dim=24, caption_projection_dim=32, pooled_projection_dim=16,
               out_channels=4, pos_embed_max_size=32)),
    Trial("dit", "DiTTransformer2DModel",
          dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, num_layers=1, sample_size=D("s8"),
               patch_size=2, num_embeds_ada_norm=1000),
          dict(hidden_states=Randn((1, 4, "s8", "s8")), timestep=Fill((1,), 500), class_labels=Tensor([3]))),
    # VAE 8x, latents packed 2x2; ids (t, h, w, l) with h/w scaled by 0.5 (image_rope_scale)
    Trial("flux3", "Flux3Transformer2DModel",
          dict(in_channels=16, cond_in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
               num_attention_heads=2, joint_attention_dim=32, timestep_channels=32, axes_dims_rope=(4, 4, 4, 4)),
          dict(hidden_states=Randn((1, "s16 * s16", 16)), encoder_hidden_states=Randn((1, "L", 32)), timestep=_T05,
               img_ids=Call(_flux3_ids, (D("s16"), D("L"), "img")), txt_ids=Call(_flux3_ids, (D("s16"), D("L"), "txt")))),
    # vae_scale_factor 16, latents unpatched (a plain flatten); text-to-image: no image slots in the prompt, the
    # pipeline appends one slot per 2x2 target tokens
    Trial("qwen-image21", "QwenImage21Transformer2DModel",
          dict(patch_size=1, in_channels=16, out_channels=16, num_layers=1, attention_head_dim=16,
               num_attention_heads=2, context_in_dim=32, axes_dims_rope=(4, 6, 6)),
          dict(hidden_states=Randn((1, "s16 * s16", 16)), encoder_hidden_states=Randn((1, "L", 32)), timestep=_T05,
               img_shapes=[[(1, D("s16"), D("s16"))]],
               img_mask=Cat((zeros(1, "L", dtype=BOOL), ones(1, "s16 * s16 // 4", dtype=BOOL)), 1),
               encoder_hidden_states_mask=ones(1, "L", dtype=BOOL))),
    Trial("hunyuan-video", "HunyuanVideoTransformer3DModel",
          dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
               num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=32,
               pooled_projection_dim=16, rope_axes_dim=(4, 6, 6)),
          dict(hidden_states=Randn((1, 4, "f", "s8", "s8")), timestep=_T500, encoder_hidden_states=Randn((1, "L", 32)),
               encoder_attention_mask=ones(1, "L"), pooled_projections=Randn((1, 16)), guidance=Fill((1,), 6000.0)),
          _WAN_F),
    # its VAE: 16x spatial, 4x temporal; latents, zero condition latents and a zero mask concatenated on
    # channels; zero image embeddings for t2v
    Trial("hunyuan-video15", "HunyuanVideo15Transformer3DModel",
          dict(in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
               num_refiner_layers=1, text_embed_dim=32, text_embed_2_dim=16, image_embed_dim=16,
               rope_axes_dim=(4, 6, 6), task_type="t2v"),
          dict(hidden_states=Cat((Randn((1, 4, "f", "s16", "s16")), zeros(1, 5, "f", "s16", "s16")), 1),
               timestep=_T500, encoder_hidden_states=Randn((1, "L", 32)),
               encoder_attention_mask=ones(1, "L", dtype=LONG), encoder_hidden_states_2=Randn((1, 4, 16)),
               encoder_attention_mask_2=ones(1, 4, dtype=LONG), image_embeds=zeros(1, 9, 16)),
          _WAN_F),
    # CogVideoX latents are (B, F, C, H, W)
    Trial("cogvideox", "CogVideoXTransformer3DModel",
          dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=32,
               text_embed_dim=32, num_layers=1, sample_width=D("s8"), sample_height=D("s8"), sample_frames=9,
               max_text_seq_length=8),
          dict(hidden_states=Randn((1, "f", 4, "s8", "s8")), encoder_hidden_states=Randn((1, 8, 32)),
               timestep=Tensor([500])),
          {"f": "lat(9, 4)"}),
    Trial("mochi", "MochiTransformer3DModel",  # Mochi's VAE: 6x temporal
          dict(patch_size=2, num_attention_heads=2, attention_head_dim=16, num_layers=1, pooled_projection_dim=16,
               in_channels=4, text_embed_dim=32, time_embed_dim=16, max_sequence_length=8),
          dict(hidden_states=Randn((1, 4, "f", "s8", "s8")), encoder_hidden_states=Randn((1, 8, 32)), timestep=_T500,
               encoder_attention_mask=ones(1, 8, dtype=BOOL)),
          {"f": "lat(7, 6)"}),
    Trial("auraflow", "AuraFlowTransformer2DModel",
          dict(sample_size=D("s8"), patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=1,
               attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32,
               out_channels=4, pos_embed_max_size=256),
          dict(hidden_states=Randn((1, 4, "s8", "s8")), encoder_hidden_states=Randn((1, 8, 32)), timestep=_T05)),
    # the pipeline stacks the Llama hidden states of every layer: (layers, B, L, D)
    Trial("hidream", "HiDreamImageTransformer2DModel",
          dict(patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
               num_attention_heads=2, caption_channels=[32, 24], text_emb_dim=16, num_routed_experts=2,
               num_activated_experts=1, axes_dims_rope=(4, 6, 6), max_resolution=(16, 16), llama_layers=[0, 1]),
          dict(hidden_states=Randn((1, 4, "s8", "s8")), timesteps=_T500, encoder_hidden_states_t5=Randn((1, 8, 32)),
               encoder_hidden_states_llama3=Randn((2, 1, 8, 24)), pooled_embeds=Randn((1, 16)))),
    Trial("z-image", "ZImageTransformer2DModel",
          dict(in_channels=4, dim=32, n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=32,
               axes_dims=[4, 6, 6], axes_lens=[64, 32, 32])),
    Trial("skyreels-v2", "SkyReelsV2Transformer3DModel",
          dict(_WAN_SMALL, num_layers=1, rope_max_seq_len=64),
          dict(hidden_states=Randn((1, 4, "f", "s8", "s8")), timestep=_T500, encoder_hidden_states=Randn((1, 8, 32))),
          _WAN_F),
    # its VAE: 32x spatial, 8x temporal
    Trial("ltx2", "LTX2VideoTransformer3DModel",
          dict(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
               audio_in_channels=8, audio_out_channels=8, audio_num_attention_heads=2, audio_attention_head_dim=8,
               audio_cross_attention_dim=16, num_layers=1, caption_channels=16),
          dict(hidden_states=Randn((1, "f * s32 * s32", 8)), audio_hidden_states=Randn((1, "A", 8)),
               encoder_hidden_states=Randn((1, "L", 16)), audio_encoder_hidden_states=Randn((1, "L", 16)),
               timestep=_T05, sigma=_T05, encoder_attention_mask=ones(1, "L", dtype=LONG),
               audio_encoder_attention_mask=ones(1, "L", dtype=LONG), num_frames=D("f"), height=D("s32"),
               width=D("s32"), fps=24.0, audio_num_frames=D("A")),
          {"f": "lat(9, 8)", "A": "4"}),
    # Cosmos' VAE: 8x temporal; concat_padding_mask=True needs torchvision (not installed) to resize it
    Trial("cosmos", "CosmosTransformer3DModel",
          dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
               text_embed_dim=32, adaln_lora_dim=8, max_size=(16, 32, 32), concat_padding_mask=False),
          dict(hidden_states=Randn((1, 4, "f", "s8", "s8")), timestep=_T05, encoder_hidden_states=Randn((1, 8, 32)),
               fps=30, padding_mask=zeros(1, 1, "size", "size")),
          {"f": "lat(9, 8)"}),
    # Phi-3 "su" RoPE; the processor's mask: causal over text + the time token, full among image tokens
    Trial("omnigen", "OmniGenTransformer2DModel",
          dict(in_channels=4, patch_size=2, hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
               intermediate_size=64, num_layers=1, vocab_size=64, pad_token_id=0, max_position_embeddings=512,
               original_max_position_embeddings=512, pos_embed_max_size=32, time_step_dim=32,
               rope_scaling={"short_factor": [1.0] * 8, "long_factor": [1.0] * 8}),
          dict(hidden_states=Randn((1, 4, "s8", "s8")), timestep=_T05, input_ids=Arange("L + 1", 1, batch=True),
               input_img_latents=[], input_image_sizes={}, attention_mask=Call(_omnigen_mask, (D("L"), D("n"))),
               position_ids=Arange("n", batch=True)),
          {"n": "L + 1 + (s8 // 2) * (s8 // 2)"}),  # text, the time token, image tokens
    # head dim 12: its 3-D RoPE splits a head in three even parts; the pipeline's own rotary-embedding helper
    Trial("allegro", "AllegroTransformer3DModel",
          dict(patch_size=2, num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
               num_layers=1, cross_attention_dim=24, sample_height=D("s8"), sample_width=D("s8"),
               sample_frames=D("f"), caption_channels=16),
          dict(hidden_states=Randn((1, 4, "f", "s8", "s8")), encoder_hidden_states=Randn((1, 8, 16)), timestep=_T500,
               encoder_attention_mask=ones(1, 8),
               image_rotary_emb=Call(_pipeline_method, ("diffusers:AllegroPipeline._prepare_rotary_positional_embeddings",
                                                        MODEL, 1, D("size"), D("size"), D("f"), CPU))),
          {"f": "lat(9, 4)"}),
    Trial("sana-video", "SanaVideoTransformer3DModel",  # Wan's VAE
          dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
               num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32, caption_channels=16,
               sample_size=D("s8"), rope_max_seq_len=64),
          dict(hidden_states=Randn((1, 4, "f", "s8", "s8")), encoder_hidden_states=Randn((1, 8, 16)), timestep=_T500,
               encoder_attention_mask=ones(1, 8)),
          _WAN_F),
    Trial("bria", "BriaTransformer2DModel",
          dict(_FLUX_SMALL, axes_dims_rope=[4, 6, 6]),
          dict(hidden_states=Randn((1, "s16 * s16", 16)), encoder_hidden_states=Randn((1, 8, 32)), timestep=_T500,
               **_FLUX_IDS)),
    # latents (B, F, H, W, C); rope positions per axis over the 2x2-patched grid
    Trial("kandinsky5", "Kandinsky5Transformer3DModel",
          dict(in_visual_dim=4, in_text_dim=32, in_text_dim2=16, time_dim=32, out_visual_dim=4, model_dim=32,
               ff_dim=64, num_text_blocks=1, num_visual_blocks=1, axes_dims=(4, 6, 6)),
          dict(hidden_states=Randn((1, "f", "s8", "s8", 4)), encoder_hidden_states=Randn((1, "L", 32)),
               timestep=_T500, pooled_projections=Randn((1, 16)),
               visual_rope_pos=[Arange("f"), Arange("s8 // 2"), Arange("s8 // 2")], text_rope_pos=Arange("L"),
               scale_factor=(1.0, 1.0, 1.0)),
          _WAN_F),
    # control: video latents (inactive + reactive, 2 x 4 channels) and the 8x8-unshuffled mask (64 channels)
    Trial("wan-vace", "WanVACETransformer3DModel",
          dict(_WAN_SMALL, num_layers=2, rope_max_seq_len=64, vace_layers=[0], vace_in_channels=72),
          dict(hidden_states=Randn((1, 4, "f", "s8", "s8")), timestep=_T500, encoder_hidden_states=Randn((1, 8, 32)),
               control_hidden_states=Randn((1, 72, "f", "s8", "s8")), control_hidden_states_scale=ones(1)),
          _WAN_F),
    # Wan-2.2 VAE (16x), latents not patched (a plain flatten); prompt embeds: the text encoder's last two
    # hidden states concatenated; plus one hidden state per block
    Trial("bria-fibo", "BriaFiboTransformer2DModel",
          dict(_FLUX_SMALL, axes_dims_rope=[4, 6, 6], text_encoder_dim=16),
          dict(hidden_states=Randn((1, "s16 * s16", 16)), encoder_hidden_states=Randn((1, "L", 32)),
               text_encoder_layers=[Randn((1, "L", 16)), Call(torch.add, (Randn((1, "L", 16)), 1))],
               timestep=_T500, **_FLUX_IDS)),
    # latents (B, C, H, W), patchified inside; text: (B, 1 + injection blocks, L, D) stacked Qwen3-VL layer bundles
    Trial("bria-fibo2", "BriaFibo2Transformer2DModel",
          dict(in_channels=4, patch_size=2, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2, cap_feat_dim=24,
               injection_layer_ids=(1,), perceiver_num_layers=1, min_num_gist_tokens=4, max_num_gist_tokens=8,
               gist_step=4, gist_min_text_len=4, gist_max_text_len=16, axes_dims=(8, 4, 4), axes_lens=(64, 32, 32)),
          dict(hidden_states=Randn((1, 4, "s8", "s8")), timestep=_T05, encoder_hidden_states=Randn((1, 2, "L", 24)),
               encoder_attention_mask=ones(1, "L", dtype=BOOL))),
    Trial("cogview3plus", "CogView3PlusTransformer2DModel",
          dict(patch_size=2, in_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=2, out_channels=4,
               text_embed_dim=32, time_embed_dim=32, condition_dim=16, pos_embed_max_size=32, sample_size=D("s8")),
          _COGVIEW),
    # a block of DreamLiteUNetModel (its defaults: GQA with one KV head, RMS qk-norm, ff_mult 6, conv proj_in);
    # self-attention only in the UNet's third down block and the mirrored up block: latents (VAE 8x) downsampled 4x
    Trial("dreamlite", "DreamLiteTransformer2DModel",
          dict(num_attention_heads=2, attention_head_dim=16, in_channels=32, num_layers=1, norm_num_groups=8,
               cross_attention_dim=24, qk_norm="rms_norm", num_kv_heads=1, ff_mult=6),
          dict(hidden_states=Randn((1, 32, "s32", "s32")), encoder_hidden_states=Randn((1, 8, 24))),
          prepare=_gqa_processors),
    # VAE 8x, latents 2x2-patchified to channels by the pipeline; tokens sequence-first inside
    Trial("ernie-image", "ErnieImageTransformer2DModel",
          dict(hidden_size=32, num_attention_heads=2, num_layers=1, ffn_hidden_size=64, in_channels=16,
               out_channels=16, text_in_dim=24, rope_axes_dim=(4, 6, 6)),
          dict(hidden_states=Randn((1, 16, "s16", "s16")), timestep=_T500, text_bth=Randn((1, "L", 24)),
               text_lens=Tensor([D("L")]))),
    # text-to-image: the pipeline's KV cache, never set to a mode
    Trial("glm-image", "GlmImageTransformer2DModel",
          dict(patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=2,
               text_embed_dim=32, time_embed_dim=32, condition_dim=16, prior_vq_quantizer_codebook_size=64),
          dict(hidden_states=Randn((1, 4, "s8", "s8")), encoder_hidden_states=Randn((1, "L", 32)),
               prior_token_id=Call(_glm_prior, (D("s32"),)), prior_token_drop=zeros(1, "(2 * s32) * (2 * s32)", dtype=BOOL),
               timestep=Fill((1,), 499.0), target_size=Tensor([[D("size"), D("size")]], torch.float32),
               crop_coords=zeros(1, 2),
               kv_caches=Call("diffusers.models.transformers.transformer_glm_image:GlmImageKVCache",
                              kwargs={"num_layers": 1}))),
    # VAE 8x, latents 2x2-patchified to channels; the conditional pass: one packed sequence
    # [left pad][text][image], 6 text tokens left-padded to L
    Trial("ideogram4", "Ideogram4Transformer2DModel",
          dict(in_channels=16, num_layers=1, attention_head_dim=16, num_attention_heads=2, intermediate_size=64,
               adaln_dim=16, llm_features_dim=24, mrope_section=(4, 2, 2)),
          dict(hidden_states=Cat((zeros(1, "L", 16), Randn((1, "s16 * s16", 16))), 1), timestep=_T05,
               encoder_hidden_states=Cat((zeros(1, "L - 6", 24), Randn((1, 6, 24)), zeros(1, "s16 * s16", 24)), 1),
               **{k: Call("diffusers:Ideogram4Pipeline._prepare_ids", ([6], D("s16"), D("s16"), D("L"), CPU), item=i)
                  for i, k in enumerate(("position_ids", "segment_ids", "indicator"))})),
    # Wan VAE 8x, latents packed 2x2; text padded to max_sequence_length, per token a stack of tapped
    # text-encoder layers (B, L, layers, D)
    Trial("krea2", "Krea2Transformer2DModel",
          dict(in_channels=16, num_layers=1, attention_head_dim=16, num_attention_heads=2, num_key_value_heads=1,
               intermediate_size=64, timestep_embed_dim=32, text_hidden_dim=32, num_text_layers=3,
               text_num_attention_heads=2, text_num_key_value_heads=2, text_intermediate_size=64,
               num_layerwise_text_blocks=1, num_refiner_text_blocks=1, axes_dims_rope=(4, 6, 6)),
          dict(hidden_states=Randn((1, "s16 * s16", 16)), encoder_hidden_states=Randn((1, "L", 3, 32)), timestep=_T05,
               position_ids=Call("diffusers:Krea2Pipeline.prepare_position_ids", (D("L"), D("s16"), D("s16"), CPU)),
               encoder_attention_mask=PrefixMask("L", 6))),
    # ids (modality, row, col): text on the diagonal (i, i); image rows/cols offset by the tokenizer max length 512
    Trial("longcat-image", "LongCatImageTransformer2DModel",
          dict(_FLUX_SMALL, pooled_projection_dim=32, axes_dims_rope=[4, 6, 6]),
          dict(hidden_states=Randn((1, "s16 * s16", 16)), encoder_hidden_states=Randn((1, "L", 32)), timestep=_T05,
               img_ids=Call("diffusers.pipelines.longcat_image.pipeline_longcat_image:prepare_pos_ids",
                            kwargs=dict(modality_id=1, type="image", start=(512, 512), height=D("s16"),
                                        width=D("s16"))),
               txt_ids=Call("diffusers.pipelines.longcat_image.pipeline_longcat_image:prepare_pos_ids",
                            kwargs=dict(modality_id=0, type="text", start=(0, 0), num_token=D("L"))))),
    # one dense block, one expert-choice MoE block; Wan VAE 8x, latents packed 2x2; one prompt pads to its
    # own length: the pipeline drops the all-true mask
    Trial("nucleus-moe", "NucleusMoEImageTransformer2DModel",
          dict(patch_size=2, in_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=2,
               num_key_value_heads=1, joint_attention_dim=32, axes_dims_rope=(4, 6, 6),
               dense_moe_strategy="leave_first_block_dense", num_experts=4, moe_intermediate_dim=32,
               capacity_factors=2.0),
          dict(hidden_states=Randn((1, "s16 * s16", 16)), img_shapes=[(1, D("s16"), D("s16"))],
               encoder_hidden_states=Randn((1, 8, 32)), timestep=_T05),
          prepare=_init_experts),
    Trial("ovis-image", "OvisImageTransformer2DModel",
          dict(_FLUX_SMALL, out_channels=16, axes_dims_rope=(4, 6, 6)),
          dict(hidden_states=Randn((1, "s16 * s16", 16)), encoder_hidden_states=Randn((1, "L", 32)), timestep=_T05,
               img_ids=_FLUX_IDS["img_ids"], txt_ids=Call(_diagonal_text_ids, (D("L"),)))),
    # the Flux-VAE variant (8x); the model patchifies 2x2 itself; text padded to max_length
    Trial("prx", "PRXTransformer2DModel",
          dict(in_channels=4, patch_size=2, context_in_dim=24, hidden_size=32, mlp_ratio=2.0, num_heads=2, depth=1,
               axes_dim=[8, 8]),
          dict(hidden_states=Randn((1, 4, "s8", "s8")), timestep=_T05, encoder_hidden_states=Randn((1, "L", 24)),
               attention_mask=PrefixMask("L", 6))),
    # Wan I2V layout: latents, a 4-channel first-frame mask and the image-condition latents concatenated on
    # channels; CLIP image tokens (here 4 of width 16) are prepended to the text tokens inside the model
    Trial("chronoedit", "ChronoEditTransformer3DModel",
          dict(_WAN_SMALL, in_channels=12, num_layers=1, image_dim=16, rope_max_seq_len=64),
          dict(hidden_states=Call(_first_frame_masked, (Cat((Randn((1, 4, "f", "s8", "s8")),
                                                             zeros(1, 4, "f", "s8", "s8"),
                                                             Randn((1, 4, "f", "s8", "s8"))), 1),)),
               timestep=_T500, encoder_hidden_states=Randn((1, 8, 32)), encoder_hidden_states_image=Randn((1, 4, 16))),
          _WAN_F),
    # 3 heads of 16: the face cross-attention's key width is 2/3 of the model width (2048 of 3072 in the
    # release); CogVideoX layout (B, F, C, H, W): noise and the first-frame image latents (zeros after)
    # concatenated on channels; face identity: an insightface vector and one scale of EVA-CLIP hidden states
    Trial("consisid", "ConsisIDTransformer3DModel",
          dict(num_attention_heads=3, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=32,
               text_embed_dim=32, num_layers=1, sample_width=D("s8"), sample_height=D("s8"), sample_frames=9,
               max_text_seq_length=8, use_rotary_positional_embeddings=True, is_train_face=True, is_kps=False,
               cross_attn_interval=1, cross_attn_dim_head=8, cross_attn_num_heads=2, LFE_id_dim=16, LFE_vit_dim=16,
               LFE_depth=1, LFE_dim_head=8, LFE_num_heads=2, LFE_num_id_token=2, LFE_num_querie=4,
               LFE_output_dim=32, LFE_ff_mult=2, LFE_num_scale=1),
          dict(hidden_states=Cat((Randn((1, "f", 4, "s8", "s8")),
                                  Cat((Randn((1, 1, 4, "s8", "s8")), zeros(1, "f - 1", 4, "s8", "s8")), 1)), 2),
               encoder_hidden_states=Randn((1, 8, 32)), timestep=Tensor([500]),
               # the top-level pipeline name needs opencv
               image_rotary_emb=Call(_pipeline_method, (
                   "diffusers.pipelines.consisid.pipeline_consisid:ConsisIDPipeline."
                   "_prepare_rotary_positional_embeddings", MODEL, D("size"), D("size"), D("f"), CPU)),
               id_cond=Randn((1, 16)), id_vit_hidden=[Randn((1, 5, 16))]),
          {"f": "lat(9, 4)"}),
    # text-to-video pipeline: Qwen2-VL hidden states only, no T5 stream, no inpaint/control latents
    Trial("easyanimate", "EasyAnimateTransformer3DModel",
          dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, patch_size=2,
               sample_width=D("s8"), sample_height=D("s8"), num_layers=1, mmdit_layers=1, time_embed_dim=32,
               text_embed_dim=32),
          dict(hidden_states=Randn((1, 4, "f", "s8", "s8")), timestep=_T500, encoder_hidden_states=Randn((1, 8, 32))),
          _WAN_F),
    # first chunk of text-to-video (Wan's VAE; the chunk's 3 latent frames differ from the short history's 2):
    # zero history; frame indices [prefix 0 | long 1-16 | mid 17-18 | short 19 | chunk 20..] (the pipeline's
    # history_sizes 16, 2, 1, keep_first_frame); the model prepends (long 4x8x8-, mid 2x4x4-, short
    # 1x2x2-patched) history tokens to the chunk's tokens, so the chunk's grid is the sequence's suffix
    Trial("helios", "HeliosTransformer3DModel",
          dict(_WAN_SMALL, num_layers=1, rope_dim=(4, 6, 6)),
          dict(hidden_states=Randn((1, 4, "f", "s8", "s8")), timestep=_T500, encoder_hidden_states=Randn((1, 8, 32)),
               indices_hidden_states=Arange("20 + f", 20, batch=True),
               indices_latents_history_short=Tensor([[0, 19]]),
               indices_latents_history_mid=Arange(19, 17, batch=True),
               indices_latents_history_long=Arange(17, 1, batch=True),
               latents_history_short=zeros(1, 4, 2, "s8", "s8"), latents_history_mid=zeros(1, 4, 2, "s8", "s8"),
               latents_history_long=zeros(1, 4, 16, "s8", "s8")),
          {"f": "lat(9, 4)"}),
    # the section's latent window (3 frames; 9 in the release); inverted anti-drifting sampling (the default),
    # first and only section: frame indices [prefix 0 | window 1..f | 1x f+1 | 2x f+2, f+3 | 4x f+4..f+19]; the
    # model prepends clean (image + 1x history, 2x2), 2x- (4x4) and 4x- (8x8-patched) history tokens to the
    # window's tokens; history is zeros before any section is generated; 1-D frame indices, unlike Helios
    Trial("hunyuan-framepack", "HunyuanVideoFramepackTransformer3DModel",
          dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
               num_single_layers=1, num_refiner_layers=1, patch_size=2, text_embed_dim=32, pooled_projection_dim=16,
               rope_axes_dim=(4, 6, 6), has_image_proj=True, image_proj_dim=16, has_clean_x_embedder=True),
          dict(hidden_states=Randn((1, 4, "f", "s8", "s8")), timestep=_T500, encoder_hidden_states=Randn((1, "L", 32)),
               encoder_attention_mask=ones(1, "L", dtype=LONG), pooled_projections=Randn((1, 16)),
               image_embeds=Randn((1, 4, 16)), indices_latents=Arange("1 + f", 1), guidance=Fill((1,), 10000.0),
               latents_clean=Cat((Randn((1, 4, 1, "s8", "s8")), zeros(1, 4, 1, "s8", "s8")), 2),
               indices_latents_clean=Cat((Arange(1), Arange("2 + f", "1 + f"))),
               latents_history_2x=zeros(1, 4, 2, "s8", "s8"), indices_latents_history_2x=Arange("4 + f", "2 + f"),
               latents_history_4x=zeros(1, 4, 16, "s8", "s8"), indices_latents_history_4x=Arange("20 + f", "4 + f")),
          {"f": "lat(9, 4)"}),
    # 6-D multi-item latents (B, items, C, T, H, W): the reference image's latents, then the noise (one frame
    # each); the model moves the noise item first and stacks the items as frames
    Trial("joyimage-edit", "JoyImageEditTransformer3DModel",
          dict(in_channels=4, hidden_size=32, num_attention_heads=2, text_dim=32, num_layers=1, rope_dim_list=[4, 6, 6]),
          dict(hidden_states=Randn((1, 2, 4, 1, "s8", "s8")), timestep=_T500, encoder_hidden_states=Randn((1, 8, 32)))),
    # image+text to video+audio: latents (B, F, H, W, C) with the reference frame appended as a tail frame (token
    # type 1, temporal rope position 0); channels [latent | zero cond latent | mask]; audio latents (B, A, C)
    Trial("kandinsky6", "Kandinsky6Transformer3DModel",
          dict(in_visual_dim=4, out_visual_dim=4, in_text_dim=32, in_text_dim2=16, time_dim=32, model_dim=32,
               ff_dim=64, num_text_blocks=1, num_visual_blocks=1, axes_dims=(4, 6, 6), in_audio_dim=8,
               out_audio_dim=8, visual_token_type_num_embeddings=2),
          dict(hidden_states=Cat((Cat((Randn((1, "f", "s8", "s8", 4)), Randn((1, 1, "s8", "s8", 4))), 1),
                                  zeros(1, "f + 1", "s8", "s8", 4),
                                  Cat((zeros(1, "f", "s8", "s8", 1), ones(1, 1, "s8", "s8", 1)), 1)), -1),
               encoder_hidden_states=Randn((1, "L", 32)), pooled_projections=Randn((1, 16)), timestep=_T500,
               audio_hidden_states=Randn((1, 6, 8)),
               visual_rope_pos=(Cat((Arange("f"), zeros(1, dtype=LONG))), Arange("s8 // 2"), Arange("s8 // 2")),
               encoder_attention_mask=ones(1, "L", dtype=BOOL),
               visual_token_type_ids=Cat((zeros(1, "f", dtype=LONG), ones(1, 1, dtype=LONG)), 1)),
          _WAN_F),
    # an image VAE per frame: no temporal compression; spatial blocks attend within a frame (batch B*F),
    # temporal blocks across frames (batch B*H*W)
    Trial("latte", "LatteTransformer3DModel",
          dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=1,
               cross_attention_dim=32, sample_size=D("s8"), patch_size=2, norm_type="ada_norm_single",
               caption_channels=16, video_length=5),
          dict(hidden_states=Randn((1, 4, 5, "s8", "s8")), encoder_hidden_states=Randn((1, 8, 16)), timestep=_T500,
               enable_temporal_attentions=True)),
    # text-to-video: latents, zero condition latents and a zero 1-channel mask concatenated on channels
    Trial("motif-video", "MotifVideoTransformer3DModel",
          dict(in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
               num_single_layers=1, text_embed_dim=32, rope_axes_dim=(4, 6, 6)),
          dict(hidden_states=Cat((Randn((1, 4, "f", "s8", "s8")), zeros(1, 5, "f", "s8", "s8")), 1), timestep=_T500,
               encoder_hidden_states=Randn((1, "L", 32)), encoder_attention_mask=ones(1, "L", dtype=BOOL)),
          _WAN_F),
    # layer 0 linear attention, layer 1 softmax attention (softmax_every_n=2); Plucker channels 6 x temporal
    # stride 8; 9 pixel frames (8k+1: LTX-2's VAE, 32x spatial, 8x temporal); the first latent frame is the
    # clean image, its per-frame timestep pinned to 0; text (B, 1, L, D); a static camera
    Trial("sana-wm", "SanaWMTransformer3DModel",
          dict(in_channels=4, num_layers=2, hidden_size=32, num_attention_heads=2, softmax_every_n=2,
               linear_head_dim=16, chunk_plucker_channels=48, chunk_plucker_post_attn_blocks=2, image_size=D("size"),
               caption_channels=32),
          dict(hidden_states=Randn((1, 4, "f", "s32", "s32")),
               timestep=Cat((zeros(1, 1, 1), Fill((1, 1, "f - 1"), 500.0)), 2),
               encoder_hidden_states=Randn((1, 1, "L", 32)), mask=ones(1, "L", dtype=LONG),
               data_info={"img_hw": Tensor([[D("size"), D("size")]], torch.float32)},
               camera_conditions=Call(_static_camera, (9, D("size"), "raymap")),
               chunk_plucker=Call(_static_camera, (9, D("size"), "chunk_plucker"))),
          {"f": "lat(9, 8)"}),
    # animate mode (5 pixel frames of the segment; Wan's VAE): the reference image's latent frame comes first,
    # so latents have f + 1 frames; channels [noise | 4-channel mask | reference + previous-segment condition
    # latents]; pose latents cover the f generated frames; face crops are pixels (B, 3, frames, 16, 16) at the
    # motion encoder's size
    Trial("wan-animate", "WanAnimateTransformer3DModel",
          dict(_WAN_SMALL, in_channels=12, latent_channels=4, num_layers=1, image_dim=16, rope_max_seq_len=64,
               motion_encoder_channel_sizes={"16": 8, "8": 8, "4": 8}, motion_encoder_size=16, motion_style_dim=16,
               motion_dim=4, motion_encoder_dim=16, face_encoder_hidden_dim=32, face_encoder_num_heads=2,
               inject_face_latents_blocks=1, motion_encoder_batch_size=8),
          dict(hidden_states=Call(_first_frame_masked, (Cat((Randn((1, 4, "f + 1", "s8", "s8")),
                                                             zeros(1, 4, "f + 1", "s8", "s8"),
                                                             Randn((1, 4, "f + 1", "s8", "s8"))), 1),)),
               timestep=_T500, encoder_hidden_states=Randn((1, 8, 32)), encoder_hidden_states_image=Randn((1, 4, 16)),
               pose_hidden_states=Randn((1, 4, "f", "s8", "s8")),
               face_pixel_values=Call(torch.clamp, (Randn((1, 3, 5, 16, 16)), -1, 1))),
          _WAN_F),
    # latents (B, F, C, H, W); per-frame flow-map timesteps t and r (B, F), r < t with mean velocity
    Trial("anyflow", "AnyFlowTransformer3DModel",
          dict(_WAN_SMALL, num_layers=1, rope_max_seq_len=64),
          dict(hidden_states=Randn((1, "f", 4, "s8", "s8")), timestep=Fill((1, "f"), 750.0),
               r_timestep=Fill((1, "f"), 500.0), encoder_hidden_states=Randn((1, 8, 32))),
          _WAN_F),
    Trial("minimax-h3", "MiniMaxH3Transformer3DModel",
          dict(num_attention_heads=2, attention_head_dim=16, hidden_size=32, num_layers=1, num_refiner_layers=1,
               ffn_dim=64, in_channels=4, audio_in_channels=8, text_dim=32, freq_dim=32, time_embed_hidden_dim=32,
               time_embed_dim=16, rope_freq_dim=2),
          Call(_minimax_h3_inputs, (D("s16"), D("L")))),
    # 2 layers: one sliding-window, one full attention (the default alternation); T audio latent frames (no
    # image grid; size is ignored); context: source latents (the tiled silence latent for text-to-music) and
    # the chunk mask concatenated on channels
    Trial("ace-step", "AceStepTransformer1DModel",
          dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
               head_dim=16, in_channels=24, audio_acoustic_hidden_dim=8, sliding_window=8),
          dict(hidden_states=Randn((1, 32, 8)), timestep=_T05, timestep_r=_T05, encoder_hidden_states=Randn((1, "L", 32)),
               context_latents=Cat((Randn((1, 32, 8)), ones(1, 32, 8)), -1))),
    # latents (B, C, T), T = 32 audio latent frames (no image grid; size is ignored); the condition is
    # frame-aligned with them (B, T, D); flow-matching time in [0, 1]
    Trial("minimax-music3", "MiniMaxMusic3Transformer1DModel",
          dict(in_channels=8, condition_dim=16, num_layers=1, num_attention_heads=2, attention_head_dim=16,
               ff_inner_dim=64, rotary_dim=8, fourier_embedding_dim=16),
          dict(hidden_states=Randn((1, 8, 32)), timestep=_T05, encoder_hidden_states=Randn((1, 32, 16)))),
)}
