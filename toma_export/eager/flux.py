"""Where the hooks go on a diffusers Flux transformer: double- and single-stream blocks.

Following the method's published Flux code: image tokens merge after the block's (Ada)LayerNorm,
text tokens never merge, merged tokens take their destination's RoPE row (a gather).

- Double-stream block: the joint attention merges its image ``hidden_states`` (RoPE rows follow)
  and unmerges its image output; the image feed-forward ``ff`` is its own site (``ff_context``,
  the text stream, is never touched).
- Single-stream block: the norm's output merges its image span, so attention and the parallel
  MLP both run on merged tokens; ``proj_out``'s output unmerges it.

No block forward is replaced: the blocks, their attention processors and backends, and any
diffusers cache hooks on the blocks run as they are.
"""

from __future__ import annotations

from typing import Any

import torch

from toma_export.config import SubLayer, ToMAConfig
from toma_export.eager.hooks import (
    ATTENTION_HOOK,
    ROPE_TABLE_HOOK,
    SITE_HOOK,
    SPAN_MERGE_HOOK,
    SPAN_UNMERGE_HOOK,
    STEP_HOOK,
    BlockSite,
    Installed,
    RopeAttentionHook,
    RopeTableHook,
    SiteHook,
    SpanMergeHook,
    SpanUnmergeHook,
    StepHook,
)
from toma_export.eager.state import MergeContext
from toma_export.errors import ToMAError, UnsupportedModelError

#: Sub-modules each block kind must have for its hooks, checked before anything is registered.
DOUBLE_PARTS = ("attn", "ff")
SINGLE_PARTS = ("norm", "attn", "proj_out")


def image_grid(img_ids: torch.Tensor) -> tuple[int, int] | None:
    """(rows, cols) of Flux's row-major image tokens from their position ids ``(N, 3)``.

    None when the ids are not a full row-major grid (then nothing is merged). A host sync: the
    step hook calls it once per id shape, and never where a pipeline told the grid.
    """
    ids = img_ids[0] if img_ids.ndim == 3 else img_ids
    rows, cols = ids[:, 1].round().long(), ids[:, 2].round().long()
    r0, c0 = int(rows.min()), int(cols.min())
    h, w = int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1
    if h * w != ids.shape[0]:
        return None
    expected = torch.arange(h * w, device=ids.device)
    if not torch.equal((rows - r0) * w + (cols - c0), expected):
        return None
    return h, w


class GridCache:
    """The image grid of a call, without reading id values on every call (host code, step hook).

    - Applied to a pipeline: the pipeline's own ``_prepare_latent_image_ids(batch, h, w, ...)`` tells
      the grid of every call (:func:`follow_pipeline`), looked up by token count.
    - Otherwise: read from the ids once per id shape and device, then cached by shape (a model
      called bare with two aspect ratios of the same token count must be applied to a pipeline, or
      told the grid with :meth:`remember`).
    - Ids whose values cannot be read (meta tensors) and no grid told: a clear error.
    """

    def __init__(self) -> None:
        self.told: dict[int, tuple[int, int]] = {}
        self.grids: dict[tuple, tuple[int, int] | None] = {}

    def remember(self, h: int, w: int) -> None:
        """The image grid of the coming calls with ``h * w`` image tokens (a pipeline's height and width)."""
        self.told[h * w] = (h, w)

    def __call__(self, ctx: MergeContext, args: tuple, kwargs: dict) -> None:
        img_ids = kwargs.get("img_ids", args[5] if len(args) > 5 else None)
        if not isinstance(img_ids, torch.Tensor):
            ctx.grid = None
            return
        n = int(img_ids.shape[-2])
        if n in self.told:
            ctx.grid = self.told[n]
            return
        key = (tuple(img_ids.shape), img_ids.device.type)
        if key not in self.grids:
            if img_ids.device.type == "meta" and image_grid is _read_ids:
                raise ToMAError(
                    f"the Flux image grid of {n} image tokens cannot be read from meta-device img_ids. Apply ToMA to "
                    "the pipeline (its height and width give the grid) or call "
                    "toma_export.apply(...)'s root hook .read_grid.remember(h, w) first."
                )
            self.grids[key] = image_grid(img_ids)
        ctx.grid = self.grids[key]


_read_ids = image_grid  # the module's own reader (``bench.ceiling`` answers meta ids with a known grid)


def follow_pipeline(pipe: Any, installed: Installed) -> None:
    """Tell ``installed``'s grid cache each call's image grid from ``pipe`` (a Flux-style pipeline):
    its ``_prepare_latent_image_ids(batch_size, height, width, ...)`` gets the latent grid of every
    call, latents given or not. Undone by ``remove``."""
    cache = getattr(installed.root, "read_grid", None)
    original = getattr(pipe, "_prepare_latent_image_ids", None)
    if not isinstance(cache, GridCache) or not callable(original):
        return

    def prepare(batch_size: int, height: int, width: int, *args: Any, **kwargs: Any) -> Any:
        cache.remember(int(height), int(width))
        return original(batch_size, height, width, *args, **kwargs)

    pipe.__dict__["_prepare_latent_image_ids"] = prepare
    installed.cleanup.append(lambda: pipe.__dict__.pop("_prepare_latent_image_ids", None))


def _check(blocks: list[torch.nn.Module], parts: tuple[str, ...], kind: str) -> None:
    for i, block in enumerate(blocks):
        missing = [p for p in parts if not isinstance(getattr(block, p, None), torch.nn.Module)]
        if missing:
            raise UnsupportedModelError(
                f"{kind} block {i} ({type(block).__name__}) has no {', '.join(missing)}: it is not a Flux-style block "
                "toma-export knows where to merge. Use toma_export.rewrite (the graph pass) for other architectures."
            )


def install(model: torch.nn.Module, config: ToMAConfig) -> Installed:
    double = list(getattr(model, "transformer_blocks", []))
    single = list(getattr(model, "single_transformer_blocks", []))
    _check(double, DOUBLE_PARTS, "double-stream")
    _check(single, SINGLE_PARTS, "single-stream")
    if any(getattr(b.attn, "fused_projections", False) for b in double):
        raise UnsupportedModelError(
            "this Flux transformer has fused QKV projections; call unfuse_qkv_projections() before apply()."
        )
    root = StepHook(config, GridCache(), lambda ctx: [ctx.grid] if ctx.grid is not None else [])
    inst = Installed(model, root)
    inst.add(model, root, STEP_HOOK)
    if not config.active:
        return inst
    grid_of = lambda ctx, n: ctx.image_grid(n)  # noqa: E731
    keys_only = root.method.keys_only
    pos_embed = getattr(model, "pos_embed", None)
    if isinstance(pos_embed, torch.nn.Module) and root.method.merger is not None and not keys_only:
        inst.add(pos_embed, RopeTableHook(root), ROPE_TABLE_HOOK)  # a reuse step's merged RoPE rows, once
    for i, block in enumerate(double):
        site = BlockSite(root, f"double.{i}", grid_of)
        if config.merge_attn or keys_only:
            inst.add(block.attn, RopeAttentionHook(site, merge=True, first=True), ATTENTION_HOOK)
        if config.merge_mlp and not keys_only:
            inst.add(block.ff, SiteHook(site, SubLayer.MLP, first=not config.merge_attn), SITE_HOOK)
    for i, block in enumerate(single):
        site = BlockSite(root, f"single.{i}", grid_of)
        # Attention and the parallel MLP share one token sequence, so merge_attn governs both here.
        if keys_only:
            inst.add(block.attn, RopeAttentionHook(site, merge=False, first=True), ATTENTION_HOOK)
        elif config.merge_attn:
            inst.add(block.norm, SpanMergeHook(site, first=True), SPAN_MERGE_HOOK)
            inst.add(block.attn, RopeAttentionHook(site, merge=False, first=True), ATTENTION_HOOK)
            inst.add(block.proj_out, SpanUnmergeHook(site), SPAN_UNMERGE_HOOK)
    inst.invalidate()
    return inst
