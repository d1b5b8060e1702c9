"""Current diffusers transformer architectures at toy width, and their inputs as their pipelines build them.

Tiny random-weight configs for tests (built in code, nothing downloaded):

- ``flux2-tiny``: ``Flux2TransformerModel`` (FLUX.2): 4-axis int64 position ids ``(B, N, 4)``
  ``(t, h, w, l)``, shared adaLN modulation, SwiGLU MLPs, one fused QKV+MLP linear in the single blocks.
- ``qwen-image-tiny``: ``QwenImageTransformer2DModel``: 2x2-packed latents whose grid arrives as plain
  ints (``img_shapes``), a text mask ``(B, L)``, RMSNorm q/k norms, a joint dual-stream attention.
- ``sd35-tiny``: ``SD3Transformer2DModel`` with SD3.5's q/k RMSNorm and a dual-attention layer (MMDiT-X).
- ``wan-tiny``: ``WanTransformer3DModel`` (Wan 2.x video): 5-D latents ``(B, C, F, H, W)``, patch
  (1, 2, 2), FP32LayerNorm, per-token modulation when timesteps are per token.
- ``z-image-tiny``: ``ZImageTransformer2DModel`` (Z-Image): per-sample lists of latents ``(C, 1, H, W)``
  and caption features, one unified ``[image; text]`` sequence, RoPE inside a disabled-autocast
  block, SwiGLU as two parallel first linears.

Real width with reduced depth, for CPU benchmarks: ``sd35-medium-d2``, ``qwen-image-d2``, ``wan-1.3b-d2``,
``flux2-dev-d1``, ``flux2-klein-d2``, ``z-image-d2`` (their configs below say what was cut).

Their inputs, as each pipeline builds them, come from :func:`toma_export.models.inputs.example_inputs`
(the family is the class's :class:`~toma_export.models.spec.ModelSpec`). :func:`latent_frames` is the one
rule for which frame counts a model takes (Wan: ``(frames - 1) // 4 + 1`` latent frames).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from toma_export.errors import ToMAConfigError

from toma_export.models.spec import SPECS_BY_FAMILY, ModelSpec

FLUX2_TINY: dict[str, Any] = dict(
    patch_size=1,
    in_channels=32,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    timestep_guidance_channels=32,
    mlp_ratio=3.0,
    axes_dims_rope=(4, 4, 4, 4),
    guidance_embeds=True,
)

QWEN_IMAGE_TINY: dict[str, Any] = dict(
    patch_size=2,
    in_channels=16,
    out_channels=4,
    num_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    axes_dims_rope=(4, 6, 6),
)

SD35_TINY: dict[str, Any] = dict(
    sample_size=32,
    patch_size=2,
    in_channels=4,
    num_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    caption_projection_dim=32,
    pooled_projection_dim=16,
    out_channels=4,
    pos_embed_max_size=32,
    dual_attention_layers=(0,),
    qk_norm="rms_norm",
)

WAN_TINY: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=4,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=64,
)


#: SD3.5 Medium's width (24 heads x 64 = 1536, qk RMSNorm, dual attention in the first layers,
#: position table 384) with the depth reduced to 2 layers (24 in the real model) for CPU benchmarks.
SD35_MEDIUM_D2: dict[str, Any] = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=2,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=384,
    dual_attention_layers=(0,),
    qk_norm="rms_norm",
)


#: Wan 2.1 T2V 1.3B's width (12 heads x 128 = 1536, FFN 8960, umT5 text 4096) with the depth reduced
#: to 2 layers (30 in the real model) for CPU benchmarks.
WAN_1_3B_D2: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)


#: Qwen-Image's width (24 heads x 128 = 3072, Qwen2.5-VL text 3584, real RoPE axes) with the depth
#: reduced to 2 layers (60 in the real model) for CPU benchmarks.
QWEN_IMAGE_D2: dict[str, Any] = dict(
    patch_size=2,
    in_channels=64,
    out_channels=16,
    num_layers=2,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=3584,
    axes_dims_rope=(16, 56, 56),
)


#: FLUX.2 [dev]'s width (48 heads x 128 = 6144, SwiGLU MLP ratio 3, Mistral text 15360, 4-axis RoPE)
#: with the depth reduced to 1 double + 1 single block (8 + 48 in the real model): 2.3 B parameters,
#: about 40 s per 1024² forward on 2 CPU cores.
FLUX2_DEV_D1: dict[str, Any] = dict(
    patch_size=1,
    in_channels=128,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=128,
    num_attention_heads=48,
    joint_attention_dim=15360,
    timestep_guidance_channels=256,
    mlp_ratio=3.0,
    axes_dims_rope=(32, 32, 32, 32),
    guidance_embeds=True,
)

#: FLUX.2 [klein] 4B width (3072, 24 heads of 128, SwiGLU ratio 3, Qwen3-4B features 3 x 2560 = 7680,
#: step-distilled: no guidance embedding) with 2 of its 5 double and 4 of its 20 single blocks: about 1 B
#: parameters (4 GB fp32), so an unmerged, a select, a reuse and an ideal ONNX Runtime session fit in
#: 24 GiB with one shared copy of the weights; the [dev] width (``flux2-dev-d1``, 9 GB) does not.
FLUX2_KLEIN_D2: dict[str, Any] = dict(
    FLUX2_DEV_D1, num_layers=2, num_single_layers=4, num_attention_heads=24, joint_attention_dim=7680,
    guidance_embeds=False,
)


Z_IMAGE_TINY: dict[str, Any] = dict(
    in_channels=4,
    dim=32,
    n_layers=2,
    n_refiner_layers=1,
    n_heads=2,
    n_kv_heads=2,
    cap_feat_dim=32,
    axes_dims=[4, 6, 6],
    axes_lens=[64, 32, 32],
)

#: Z-Image-Turbo's width (30 heads x 128 = 3840, SwiGLU 10240, Qwen3 text 2560; the class defaults)
#: with the depth reduced to 2 layers and 1 noise + 1 context refiner layer (30 and 2 + 2 in the real
#: model): 0.75 B parameters.
Z_IMAGE_D2: dict[str, Any] = dict(n_layers=2, n_refiner_layers=1)


def _builder(cls_name: str, cfg: dict[str, Any]) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        import diffusers

        model: Any = getattr(diffusers, cls_name)(**cfg)  # weights from the caller's seed (load_model seeds)
        return model.eval()

    return build


#: name -> (diffusers class name, config, builder); entries of the embedded-model table
#: (:data:`toma_export.models.registry.EMBEDDED_MODELS`). The family is the class's
#: :class:`~toma_export.models.spec.ModelSpec`.
ARCHITECTURES: dict[str, tuple[str, dict[str, Any], Callable[[], torch.nn.Module]]] = {
    name: (cls, cfg, _builder(cls, cfg))
    for name, cls, cfg in (
        ("flux2-tiny", "Flux2Transformer2DModel", FLUX2_TINY),
        ("qwen-image-tiny", "QwenImageTransformer2DModel", QWEN_IMAGE_TINY),
        ("sd35-tiny", "SD3Transformer2DModel", SD35_TINY),
        ("wan-tiny", "WanTransformer3DModel", WAN_TINY),
        ("z-image-tiny", "ZImageTransformer2DModel", Z_IMAGE_TINY),
        ("sd35-medium-d2", "SD3Transformer2DModel", SD35_MEDIUM_D2),
        ("qwen-image-d2", "QwenImageTransformer2DModel", QWEN_IMAGE_D2),
        ("wan-1.3b-d2", "WanTransformer3DModel", WAN_1_3B_D2),
        ("flux2-dev-d1", "Flux2Transformer2DModel", FLUX2_DEV_D1),
        ("flux2-klein-d2", "Flux2Transformer2DModel", FLUX2_KLEIN_D2),
        ("z-image-d2", "ZImageTransformer2DModel", Z_IMAGE_D2),
    )
}


#: Wan's video VAE keeps the first pixel frame as one latent frame and packs every further 4 into one:
#: 4k+1 pixel frames -> k+1 latent frames (diffusers ``AutoencoderKLWan``: 2 ** sum(temperal_downsample)).
WAN_VAE_TEMPORAL_FACTOR = 4


def latent_frames(spec: ModelSpec | str | None, frames: Any, *, patch_size: Any = None, model: str = "this model") -> int:
    """Latent frames of a clip of ``frames`` pixel frames for a denoiser of ``spec`` (a spec or a family name;
    None, an unknown name or an image family: an image model): the one rule behind ``--frames``.

    Image models take one frame. Wan: its VAE turns ``4k + 1`` pixel frames into ``k + 1`` latent frames
    (:data:`WAN_VAE_TEMPORAL_FACTOR`), and its patch embedding packs ``patch_size[0]`` latent frames into
    one token frame, so ``k + 1`` must be a multiple of ``patch_size[0]`` (1 in Wan 2.x). Anything else
    raises :class:`ToMAConfigError` naming the frame counts that work.
    """
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ToMAConfigError(
            f"--frames {frames!r} must be a positive number of pixel frames: 1 for an image, e.g. 17 for a clip."
        )
    if isinstance(spec, str):
        spec = SPECS_BY_FAMILY.get(spec)
    if spec is None or not spec.video:
        if frames != 1:
            raise ToMAConfigError(
                f"--frames {frames}: {model} is an image model (one frame); drop --frames (or use --frames 1), or "
                "pick a video model (e.g. wan-tiny)."
            )
        return 1
    t = WAN_VAE_TEMPORAL_FACTOR
    pt = int(patch_size[0]) if isinstance(patch_size, (list, tuple)) and patch_size else 1
    latent = (frames - 1) // t + 1
    if (frames - 1) % t == 0 and latent % pt == 0:
        return latent

    def valid(j: int) -> int:  # the j-th frame count that works (j >= 1): k + 1 = j * pt latent frames
        return t * (j * pt - 1) + 1

    j = max(1, latent // pt)
    lo, hi = valid(j), valid(j + 1)
    rule = f"{t}k+1 pixel frames (its VAE makes k+1 latent frames of them" + (
        f", and its temporal patch {pt} needs k+1 to be a multiple of {pt})" if pt > 1 else ")")
    raise ToMAConfigError(f"--frames {frames}: {model} takes {rule}; use e.g. --frames {lo} or {hi}.")
