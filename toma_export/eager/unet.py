"""Eager ToMA for diffusers UNets (SDXL, SD1.5): hooks on each transformer block's sub-layers.

Sites are the inputs of ``attn1`` (self-attention), ``attn2`` (cross-attention: queries only)
and ``ff``: the block's normalised hidden states. A pre-hook merges them, a post-hook unmerges
the sub-layer's output before the residual add, so any attention processor works unchanged.
Gates applied after the sub-layer are per-channel, which commutes with the (convex) unmerge.
"""

from __future__ import annotations

from typing import Any

import torch

from toma_export.baselines.todo import downsample_tokens
from toma_export.config import ToMAConfig
from toma_export.core.tiles import grid_for_tokens
from toma_export.eager.sites import Merger, merger_for
from toma_export.eager.merge_state import ToMAState
from toma_export.errors import UnsupportedModelError

SITE_KINDS = ("attn1", "attn2", "ff")


def auto_max_downsample(unet: Any) -> int:
    """Downsampling factor of the UNet's highest-resolution level that has attention."""
    for i, kind in enumerate(unet.config.down_block_types):
        if "CrossAttn" in kind or "Attn" in kind:
            return 2**i
    raise UnsupportedModelError(f"{type(unet).__name__} has no attention blocks, so there is nothing to merge.")


def _level(state: ToMAState, n: int) -> tuple[int, int, int] | None:
    """(h, w, downsample factor) of a UNet level with ``n`` tokens, from the current latent size."""
    if state.latent_hw is None:
        return None
    grid = grid_for_tokens(n, *state.latent_hw)
    if grid is None:
        return None
    h, w = grid
    factor = 1
    lh = state.latent_hw[0]
    while -(-lh // factor) > h:
        factor *= 2
    return h, w, factor


class UNetBlockSites:
    """The merge hooks of one ``BasicTransformerBlock``."""

    def __init__(self, state: ToMAState, block: torch.nn.Module, name: str, max_downsample: int):
        self.state = state
        self.name = name
        self.max_downsample = max_downsample
        cfg = state.config
        wanted = {"attn1": cfg.merge_attn, "attn2": cfg.merge_cross, "ff": cfg.merge_mlp}
        if cfg.method == "todo":  # ToDo downsamples self-attention keys/values only
            wanted = {"attn1": True, "attn2": False, "ff": False}
        if getattr(block, "_chunk_size", None) is not None:
            wanted["ff"] = False  # chunked feed-forward sees token chunks, not the whole grid
        self.kinds = [k for k in SITE_KINDS if wanted[k] and getattr(block, k, None) is not None]
        self._pending: dict[str, Merger] = {}
        self.handles: list[Any] = []
        for kind in self.kinds:
            module = getattr(block, kind)
            self.handles.append(module.register_forward_pre_hook(self._pre(kind), with_kwargs=True))
            self.handles.append(module.register_forward_hook(self._post(kind)))

    def _pre(self, kind: str):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            x = args[0] if args else kwargs.get("hidden_states")
            if x is None or x.ndim != 3:
                return None
            if kind == "attn1" and kwargs.get("attention_mask") is not None:
                return None  # a token mask cannot follow merged tokens
            level = _level(self.state, x.shape[1])
            if level is None or level[2] > self.max_downsample:
                return None
            h, w, _ = level
            if self.state.config.method == "todo":
                kwargs = dict(kwargs, encoder_hidden_states=downsample_tokens(x, h, w, self.state.config.ratio))
                return args, kwargs
            merger = merger_for(self.state, self.name, x, h, w, first_in_block=kind == self.kinds[0])
            if merger is None:
                return None
            self._pending[kind] = merger
            merged = merger.merge(x)
            if args:
                return (merged, *args[1:]), kwargs
            return args, dict(kwargs, hidden_states=merged)

        return hook

    def _post(self, kind: str):
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            merger = self._pending.pop(kind, None)
            return None if merger is None else merger.unmerge(output)

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


class UNetPatch:
    """ToMA (or ToDo, CA-ToMe) on every transformer block of a UNet; ToMeSD via ``tomesd``."""

    def __init__(self, unet: Any, config: ToMAConfig):
        self.unet = unet
        self.config = config
        self.state = ToMAState(config)
        self.max_downsample = config.max_downsample or auto_max_downsample(unet)
        self.blocks: list[UNetBlockSites] = []
        self.handles: list[Any] = []
        self._tomesd = False

    def validate(self) -> None:
        """Refuse, before patching, a tile that cannot divide the model's native grids (remainder='error')."""
        size = getattr(self.unet.config, "sample_size", None)
        if self.config.remainder != "error" or not self.config.active or not isinstance(size, int):
            return
        side, factor = size, 1
        while factor <= self.max_downsample:
            self.state.layout_for(side, side)  # raises ToMAConfigError naming `tile` and the fix
            side, factor = -(-side // 2), factor * 2

    def install(self) -> None:
        self.validate()
        self.handles.append(self.unet.register_forward_pre_hook(self._begin, with_kwargs=True))
        self.handles.append(self.unet.register_forward_hook(self._end))
        if not self.config.active:
            return
        if self.config.method == "tomesd":
            import tomesd

            tomesd.apply_patch(
                self.unet,
                ratio=self.config.ratio,
                max_downsample=self.max_downsample,
                use_rand=self.config.seed is not None,
                merge_attn=self.config.merge_attn,
                merge_crossattn=self.config.merge_cross,
                merge_mlp=self.config.merge_mlp,
            )
            # tomesd's own size hook reads only a positional sample; ours reads kwargs too.
            for hook in self.unet._tome_info["hooks"]:
                hook.remove()
            self.unet._tome_info["hooks"].clear()
            self._tomesd = True
            return
        for name, module in self.unet.named_modules():
            if hasattr(module, "attn1") and hasattr(module, "ff") and hasattr(module, "norm1"):
                self.blocks.append(UNetBlockSites(self.state, module, name, self.max_downsample))

    def _begin(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        self.state.begin_step((int(sample.shape[-2]), int(sample.shape[-1])))
        if self._tomesd:
            self.unet._tome_info["size"] = self.state.latent_hw

    def _end(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        self.state.end_step()

    def remove(self) -> None:
        for block in self.blocks:
            block.remove()
        self.blocks.clear()
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        if self._tomesd:
            import tomesd

            tomesd.remove_patch(self.unet)
            self._tomesd = False
