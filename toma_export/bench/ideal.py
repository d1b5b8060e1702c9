"""The "ideal" reference: the merged sub-layers run on (1 - r)·N tokens with no merge cost.

For a lone block or a transformer whose every block is merged (Flux) the ideal is simply the same
model on fewer tokens. In a UNet only some levels are merged, so shrinking the latent would also
shrink the convolutions and the unmerged levels; instead :class:`IdealSites` hooks the same
sub-layers the eager patch would merge and gives them the first ``(1 - r)·N`` tokens (a view:
no similarity, no selection, no weights) and zero-pads their output back to ``N`` tokens (one
copy, cheaper than any unmerge). Everything else runs at full size, exactly as in the merged model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from toma_export.config import ToMAConfig
from toma_export.core.tiles import unet_level
from toma_export.eager.unet import SUBLAYER_MODULES, auto_max_downsample, transformer_blocks


def kept_tokens(n: int, ratio: float) -> int:
    """Tokens left when ``ratio`` of ``n`` are removed (at least one)."""
    return max(1, n - int(round(n * ratio)))


class IdealSites:
    """Slice-and-pad hooks on the sub-layers of every UNet transformer block a config would merge."""

    def __init__(self, unet: torch.nn.Module, config: ToMAConfig):
        self.ratio = float(config.ratio)
        self.max_downsample = config.max_downsample or auto_max_downsample(unet)
        self.latent_hw: tuple[int, int] | None = None
        self.handles: list[Any] = [unet.register_forward_pre_hook(self._begin, with_kwargs=True)]
        self._pending: dict[int, int] = {}
        for _, block in transformer_blocks(unet):
            for kind in config.sublayers:
                sub = getattr(block, SUBLAYER_MODULES[kind], None)
                if sub is not None:
                    self.handles.append(sub.register_forward_pre_hook(self._pre, with_kwargs=True))
                    self.handles.append(sub.register_forward_hook(self._post))

    def _begin(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        self.latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))

    def _merged(self, n: int) -> bool:
        if self.latent_hw is None:
            return False
        level = unet_level(n, *self.latent_hw)
        return level is not None and level[2] <= self.max_downsample

    def _pre(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        x = args[0] if args else kwargs.get("hidden_states")
        if x is None or x.ndim != 3 or not self._merged(x.shape[1]):
            return None
        self._pending[id(module)] = x.shape[1]
        x = x[:, : kept_tokens(x.shape[1], self.ratio)]
        return ((x, *args[1:]), kwargs) if args else (args, dict(kwargs, hidden_states=x))

    def _post(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        n = self._pending.pop(id(module), None)
        return None if n is None else F.pad(output, (0, 0, 0, n - output.shape[1]))

    def reset(self) -> None:
        """Nothing to reset: the ideal keeps no per-step state (the handle protocol asks for it)."""

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
