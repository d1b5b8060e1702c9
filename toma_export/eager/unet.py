"""Where the hooks go on a diffusers UNet (SDXL, SD1.5): each transformer block's sub-layers.

Sites are the inputs of ``attn1`` (self-attention), ``attn2`` (cross-attention: queries only) and
``ff``: the block's normalised hidden states. The site hook merges them and unmerges the
sub-layer's output before the residual add, so any attention processor works unchanged; gates
applied after the sub-layer are per-channel, which commutes with the (convex) unmerge. With ToMA
(``keep_tile_order``) the block itself runs on tile-major tokens (``TileOrderHook``), so the sites'
tile splits and joins are views and the block pays one permutation in and one out.
ToMeSD runs as the ``tomesd`` package's own patch.
"""

from __future__ import annotations

from typing import Any

import torch

from toma_export import methods
from toma_export.config import SubLayer, ToMAConfig
from toma_export.eager.hooks import (
    SITE_HOOK,
    STEP_HOOK,
    TILE_ORDER_HOOK,
    BlockSite,
    Installed,
    SiteHook,
    StepHook,
    TileOrderHook,
)
from toma_export.eager.state import MergeContext
from toma_export.errors import UnsupportedModelError

#: A UNet transformer block's sub-layer module for each merge site.
SUBLAYER_MODULES = {SubLayer.ATTN: "attn1", SubLayer.CROSS: "attn2", SubLayer.MLP: "ff"}


def auto_max_downsample(unet: Any) -> int:
    """Downsampling factor of the UNet's highest-resolution level that has attention."""
    for i, kind in enumerate(getattr(unet.config, "down_block_types", ())):
        if "Attn" in kind:
            return 2**i
    raise UnsupportedModelError(f"{type(unet).__name__} has no attention blocks, so there is nothing to merge.")


def attention_factors(unet: Any) -> frozenset[int]:
    """Downsampling factors of the UNet levels with attention: the only grids whose destinations a
    step reserves (a level without sites would hold a buffer no site writes)."""
    cfg = unet.config
    down = list(getattr(cfg, "down_block_types", ()) or ())
    up = list(getattr(cfg, "up_block_types", ()) or ())
    out = {2**i for i, kind in enumerate(down) if "Attn" in kind}
    out |= {2 ** (len(up) - 1 - j) for j, kind in enumerate(up) if "Attn" in kind}
    if down and "Attn" in str(getattr(cfg, "mid_block_type", "") or ""):
        out.add(2 ** (len(down) - 1))
    return frozenset(out)


def transformer_blocks(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The UNet's transformer blocks: modules with self-attention, a feed-forward and a norm."""
    return [(n, m) for n, m in unet.named_modules() if all(hasattr(m, a) for a in ("attn1", "ff", "norm1"))]


def wanted_sublayers(block: torch.nn.Module, config: ToMAConfig, keys_only: bool) -> list[SubLayer]:
    if keys_only:  # ToDo downsamples self-attention keys/values only
        return [SubLayer.ATTN]
    subs = [s for s in config.sublayers if getattr(block, SUBLAYER_MODULES[s], None) is not None]
    if getattr(block, "_chunk_size", None) is not None and SubLayer.MLP in subs:
        subs.remove(SubLayer.MLP)  # a chunked feed-forward sees token chunks, not the whole grid
    return subs


def validate(unet: Any, config: ToMAConfig, max_downsample: int) -> None:
    """Refuse, before patching, a tile that cannot divide the model's native grids (remainder='error')."""
    size = getattr(unet.config, "sample_size", None)
    if config.remainder != "error" or not config.active or not isinstance(size, int):
        return
    ctx = MergeContext(config)
    side, factor = size, 1
    while factor <= max_downsample:
        ctx.layout_for(side, side)  # raises ToMAConfigError naming `tile` and the fix
        side, factor = -(-side // 2), factor * 2


def install(unet: torch.nn.Module, config: ToMAConfig, installed: Installed | None = None, max_downsample: int | None = None) -> Installed:
    """Register the step hook and the site hooks; ``max_downsample`` defaults to the config's or auto."""
    limit = max_downsample or config.max_downsample or auto_max_downsample(unet)
    validate(unet, config, limit)
    tomesd_patch = config.active and methods.get(config.method).unet_package_patch

    def read_grid(ctx: MergeContext, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        ctx.latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
        if tomesd_patch:
            unet._tome_info["size"] = ctx.latent_hw  # type: ignore[index, operator, assignment]

    factors = attention_factors(unet)
    root = StepHook(config, read_grid, lambda ctx: ctx.unet_grids(limit, factors))
    inst = installed or Installed(unet, root)
    inst.add(unet, root, STEP_HOOK)
    if not config.active:
        return inst
    if tomesd_patch:
        _install_tomesd(unet, config, limit, inst)
        return inst
    grid_of = lambda ctx, n: ctx.unet_grid(n, limit)  # noqa: E731
    for name, block in transformer_blocks(unet):
        site = BlockSite(root, name, grid_of)
        subs = wanted_sublayers(block, config, root.method.keys_only)
        for i, sub in enumerate(subs):
            inst.add(getattr(block, SUBLAYER_MODULES[sub]), SiteHook(site, sub, first=i == 0), SITE_HOOK)
        if subs and config.keep_tile_order and root.method.tile_order and getattr(block, "pos_embed", None) is None:
            inst.add(block, TileOrderHook(site), TILE_ORDER_HOOK)
    inst.invalidate()
    return inst


def _install_tomesd(unet: Any, config: ToMAConfig, limit: int, inst: Installed) -> None:
    import tomesd

    tomesd.apply_patch(
        unet,
        ratio=config.ratio,
        max_downsample=limit,
        use_rand=config.seed is not None,
        merge_attn=config.merge_attn,
        merge_crossattn=config.merge_cross,
        merge_mlp=config.merge_mlp,
    )
    # tomesd's own size hook reads only a positional sample; the step hook sets the size instead.
    for hook in unet._tome_info["hooks"]:
        hook.remove()
    unet._tome_info["hooks"].clear()
    # tomesd forks its generator on the first call; forked now, that call traces without a graph break.
    from tomesd.utils import init_generator

    unet._tome_info["args"]["generator"] = init_generator(unet.device)
    inst.cleanup.append(lambda: tomesd.remove_patch(unet))
