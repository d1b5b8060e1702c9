"""The SDXL highest-resolution transformer block at real dimensions, patchable by the eager harness.

The block is built exactly as SDXL's UNet builds it (``Transformer2DModel`` of the second down
level: 640 channels, 10 heads of 64, GEGLU MLP, 2048-wide cross-attention) and its first
``BasicTransformerBlock`` is taken. :class:`BlockModel` feeds it a ``(B, C, H, W)`` feature map as
``H*W`` tokens; because the hooks read the grid from the model input's last two dimensions, the
block's own grid is the "latent" and merging happens at downsample factor 1. Methods are
installed with the eager UNet hooks (``eager.unet.install``, the same site machinery ``toma_export.apply`` uses on a
UNet, ToMeSD through the ``tomesd`` package), so no merge code is duplicated here.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from toma_export.config import ToMAConfig
from toma_export.eager.unet import install

CHANNELS = 640
HEADS = 10
HEAD_DIM = 64
GRID = (64, 64)  # 1024 px / 8 (VAE) / 2 (first downsample) = 4096 tokens
CONTEXT = (77, 2048)


def sdxl_block(seed: int = 0) -> torch.nn.Module:
    """SDXL's level-1 ``BasicTransformerBlock`` with seeded random weights."""
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        t2d = Transformer2DModel(
            num_attention_heads=HEADS,
            attention_head_dim=HEAD_DIM,
            in_channels=CHANNELS,
            num_layers=1,
            cross_attention_dim=CONTEXT[1],
            norm_num_groups=32,
            use_linear_projection=True,
        )
    return t2d.transformer_blocks[0].eval()


class BlockModel(ModelMixin, ConfigMixin):  # type: ignore[misc]  # diffusers' own mixin pair
    """``sample`` ``(B, C, H, W)`` -> the block's output tokens ``(B, H*W, C)``.

    A diffusers ``ModelMixin`` so that ``tomesd`` accepts it as a diffusers model, with a
    ``sample_size`` config (the grid side) like a UNet's, which the eager patch validates tiles against.
    """

    @register_to_config
    def __init__(self, sample_size: int = GRID[0], seed: int = 0):
        super().__init__()
        self.block = sdxl_block(seed)

    def forward(self, sample: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        tokens = sample.flatten(2).transpose(1, 2)
        return self.block(tokens, encoder_hidden_states=encoder_hidden_states)


def block_inputs(
    batch: int = 1, grid: tuple[int, int] = GRID, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Random hidden states on ``grid`` and a 77x2048 text context."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        sample=torch.randn(batch, CHANNELS, *grid, generator=g).to(dtype),
        encoder_hidden_states=torch.randn(batch, *CONTEXT, generator=g).to(dtype),
    )


class BlockPatch:
    """A method installed on a :class:`BlockModel` through the eager UNet hooks.

    The block has no ``down_block_types`` to derive the merged levels from; its own grid is level 1.
    """

    def __init__(self, model: BlockModel, config: ToMAConfig):
        self.config = config
        self.installed = install(model, config, max_downsample=config.max_downsample or 1)

    def reset(self) -> None:
        self.installed.root.reset_state(self.installed.model)

    def remove(self) -> None:
        self.installed.remove()

    @property
    def state(self) -> Any:
        return self.installed.root.active
