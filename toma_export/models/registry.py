"""Embedded default models (random weights, real architectures) and local diffusers folders.

No weights are downloaded: names build a model from a config in code; a path loads a local
diffusers folder with ``local_files_only``. Embedded models are seeded, so a name always gives
the same weights.

- ``sdxl-tiny`` / ``flux-tiny``: seconds on CPU, the architecture at toy width; for tests.
- ``sdxl``: SDXL-base UNet config at full width and depth (2.6 B parameters).
- ``sdxl-lite``: ``sdxl`` with 2 transformer layers per attention level instead of (1, 2, 10):
  same widths and token counts, 0.9 B parameters, for compiled-engine benchmarks on 24 GiB.
- ``flux``: Flux.1 transformer at full width (3072, 24 heads of 128) and the real RoPE axes, but
  depth-reduced from 19 double + 38 single blocks to 2 + 4 to fit 24 GiB in fp32.
- ``sd15-tiny``: an SD1.5-style UNet (attention at full latent resolution), for generality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from toma_export.errors import UnsupportedModelError

SDXL_TINY: dict[str, Any] = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 2),
    attention_head_dim=(2, 4, 4),
    cross_attention_dim=32,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 32,
    norm_num_groups=32,
)

SDXL: dict[str, Any] = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)

#: SDXL widths and token counts with 2 transformer layers at each attention level (SDXL: 1, 2, 10):
#: 0.9 B parameters, so compiled engines (ONNX export, ONNX Runtime sessions) fit in 24 GiB.
SDXL_LITE: dict[str, Any] = dict(SDXL, transformer_layers_per_block=(1, 2, 2))

SD15_TINY: dict[str, Any] = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=4,
    cross_attention_dim=32,
    norm_num_groups=32,
)

FLUX_TINY: dict[str, Any] = dict(
    patch_size=1,
    in_channels=16,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    guidance_embeds=False,
    axes_dims_rope=(4, 6, 6),
)

FLUX: dict[str, Any] = dict(
    patch_size=1,
    in_channels=64,
    num_layers=2,
    num_single_layers=4,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)


def _unet(cfg: dict[str, Any]) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        from diffusers import UNet2DConditionModel

        model: Any = UNet2DConditionModel(**cfg)  # diffusers' ModelMixin is untyped for mypy
        return model

    return build


def _flux(cfg: dict[str, Any]) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        from diffusers import FluxTransformer2DModel

        model: Any = FluxTransformer2DModel(**cfg)
        return model

    return build


EMBEDDED_MODELS: dict[str, tuple[str, dict[str, Any], Callable[[], torch.nn.Module]]] = {
    "sdxl-tiny": ("sdxl", SDXL_TINY, _unet(SDXL_TINY)),
    "sdxl": ("sdxl", SDXL, _unet(SDXL)),
    "sdxl-lite": ("sdxl", SDXL_LITE, _unet(SDXL_LITE)),
    "sd15-tiny": ("sd15", SD15_TINY, _unet(SD15_TINY)),
    "flux-tiny": ("flux", FLUX_TINY, _flux(FLUX_TINY)),
    "flux": ("flux", FLUX, _flux(FLUX)),
}


def load_model(name_or_path: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """An embedded model by name (seeded random weights) or a local diffusers model folder."""
    key = str(name_or_path)
    if key in EMBEDDED_MODELS:
        _, _, build = EMBEDDED_MODELS[key]
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = build()
        return (model if dtype == torch.float32 else model.to(dtype)).eval()
    path = Path(key)
    if not path.exists():
        raise UnsupportedModelError(
            f"model {key!r} is neither an embedded model ({', '.join(EMBEDDED_MODELS)}) nor an existing "
            "local folder. Pass one of those names, or the path of a diffusers model folder "
            "(nothing is downloaded)."
        )
    return _load_local(path, dtype)


def _load_local(path: Path, dtype: torch.dtype) -> torch.nn.Module:
    import diffusers

    # A pipeline folder holds the denoiser in unet/ or transformer/.
    for sub in ("unet", "transformer"):
        if (path / "model_index.json").exists() and (path / sub / "config.json").exists():
            path = path / sub
            break
    config_file = path / "config.json"
    if not config_file.exists():
        raise UnsupportedModelError(f"{path} has no config.json: point at a diffusers model or pipeline folder.")
    import json

    class_name = json.loads(config_file.read_text()).get("_class_name", "")
    cls = getattr(diffusers, class_name, None)
    if cls is None or class_name not in ("UNet2DConditionModel", "FluxTransformer2DModel"):
        raise UnsupportedModelError(
            f"{path} holds a {class_name or 'model of unknown class'}; toma-export supports "
            "UNet2DConditionModel (SDXL, SD1.5) and FluxTransformer2DModel folders."
        )
    return cls.from_pretrained(path, local_files_only=True, torch_dtype=dtype).eval()


def model_family(model: torch.nn.Module) -> str:
    """'unet' or 'flux', from the module tree (duck-typed, not by an exact class)."""
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "down_block_types") and hasattr(model, "down_blocks"):
        return "unet"
    if hasattr(model, "transformer_blocks") and hasattr(model, "single_transformer_blocks"):
        return "flux"
    raise UnsupportedModelError(
        f"{type(model).__name__} is not supported: toma-export patches diffusers UNet2DConditionModel "
        "(SDXL/SD1.5) and FluxTransformer2DModel, or pipelines holding one as .unet/.transformer."
    )


def model_shell(name_or_path: str | Path) -> torch.nn.Module:
    """The model's architecture on the meta device: its config and attributes, no weights or memory."""
    import diffusers

    key = str(name_or_path)
    with torch.device("meta"):
        if key in EMBEDDED_MODELS:
            return EMBEDDED_MODELS[key][2]()
        path = Path(key)
        if (path / "model_index.json").exists():
            path = next((path / s for s in ("unet", "transformer") if (path / s / "config.json").exists()), path)
        import json

        config = json.loads((path / "config.json").read_text())
        cls = getattr(diffusers, config.get("_class_name", ""), None)
        if cls is None:
            raise UnsupportedModelError(f"{path} holds no diffusers model class toma-export knows.")
        shell: Any = cls.from_config(config)
        return shell
