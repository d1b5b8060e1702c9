"""Registered custom ops (``torch.library``) that compiled graphs carry instead of Python code.

``toma::facility_location`` is the selection step as one opaque node: graph passes insert it,
exporters lower it (unrolled standard ONNX ops, or a ``toma`` plugin node), and plugins (Triton,
TensorRT) implement it. Its eager kernel is :func:`toma_export.core.selection.facility_location`.

``toma::merge_weights`` / ``merge`` / ``unmerge`` / ``merged_positions`` / ``gather_positions``
are what the graph pass (``toma_export.graph``) inserts at merge sites; each eager kernel is the
core maths (``toma_export.core``), on CUDA the Triton kernels of ``plugins/triton_merge.py`` for
``merge_weights`` / ``merge`` / ``unmerge``, and ``toma_export.graph.decompositions()`` lowers all
of them to standard ATen ops for exporters.

``toma::fused_merge`` / ``tile_merge`` / ``tile_unmerge`` are :class:`~toma_export.core.merge.MergeMap`'s
CUDA path (eager hooks, and models compiled from them): merge weights and merged tokens in one
op, merge with given weights, unmerge with an optional fused residual. On CUDA their kernels are
the Triton ones (``plugins/triton_merge.py``, one launch each); elsewhere, and for exporters
(``toma_export.graph.decompositions()``), the torch code of ``core.merge``.
"""

from __future__ import annotations

import os

import torch

from toma_export.core.merge import merge_tiles, unmerge_tiles
from toma_export.core.merge import merge_weights as _merge_weights
from toma_export.core.merge import merged_positions as _merged_positions
from toma_export.core.selection import facility_location as _facility_location
from toma_export.core.tiles import TileLayout


def _interpreted() -> bool:
    """Triton runs in its CPU interpreter: CUDA tensors then take the torch code."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _torch_on_cuda(th: int, tw: int) -> bool:
    """CUDA tensors take the torch code: Triton is interpreted, or the tile exceeds the kernels' limit."""
    from plugins.triton_merge import MAX_TILE

    return _interpreted() or th * tw > MAX_TILE


@torch.library.custom_op("toma::facility_location", mutates_args=())
def facility_location(features: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy facility-location destinations ``(..., k)`` int64 for tiles ``(..., S, C)``."""
    return _facility_location(features, k)


@facility_location.register_fake
def _(features: torch.Tensor, k: int) -> torch.Tensor:
    return features.new_empty((*features.shape[:-2], k), dtype=torch.long)


@facility_location.register_kernel("cuda")
def _(features: torch.Tensor, k: int) -> torch.Tensor:
    """On CUDA: the Triton kernel, one program per tile (measured on an H100, SDXL/Flux tile batches:
    0.03-0.25 ms against 1.2-2.4 ms for the torch ops, whose k greedy steps are launch-bound).
    Same picks as the torch ops up to fp32 summation order in near-ties (tests/test_gpu_kernel.py)."""
    from plugins.triton_selection import MAX_TILE, facility_location_triton

    if features.shape[-2] > MAX_TILE or _interpreted():
        return _facility_location(features, k)
    return facility_location_triton(features, k).long()


# --- merge / unmerge ------------------------------------------------------------------------------
# A site merges the image tokens ``x[:, offset : offset + h*w]`` of a token sequence; tokens before
# and after that span (e.g. Flux's text tokens) pass through untouched. Layout arguments are plain
# ints so the ops stay shape-static (``frames``: the stacked frames of a video grid, 1 for images).
# Eager kernels call the core maths (one place per fact); the
# fake kernels only state output shapes; ``toma_export.graph.decompositions`` lowers them to ATen.


def _layout(h: int, w: int, th: int, tw: int, frames: int) -> TileLayout:
    return TileLayout(h, w, th, tw, frames)


def _span(x: torch.Tensor, offset: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return x[:, :offset], x[:, offset : offset + n], x[:, offset + n :]


# The ``*_impl`` functions are the torch maths on every device (no dispatch to the CUDA kernels), so
# exporters decompose a program on any device into plain ATen.


def merge_weights_impl(
    x: torch.Tensor, idx: torch.Tensor, h: int, w: int, th: int, tw: int, frames: int, offset: int, temperature: float
) -> torch.Tensor:
    layout = _layout(h, w, th, tw, frames)
    _, img, _ = _span(x, offset, layout.num_tokens)
    return _merge_weights(layout.split(img)[0], idx, temperature)


def merge_impl(
    x: torch.Tensor, weights: torch.Tensor, h: int, w: int, th: int, tw: int, frames: int, offset: int
) -> torch.Tensor:
    layout = _layout(h, w, th, tw, frames)
    head, img, tail = _span(x, offset, layout.num_tokens)
    merged = merge_tiles(weights / weights.sum(dim=-1, keepdim=True), *layout.split(img))
    return torch.cat([head, merged, tail], dim=1) if head.shape[1] or tail.shape[1] else merged


def unmerge_impl(
    y: torch.Tensor, weights: torch.Tensor, h: int, w: int, th: int, tw: int, frames: int, offset: int
) -> torch.Tensor:
    layout = _layout(h, w, th, tw, frames)
    head, img, tail = _span(y, offset, layout.merged_count(weights.shape[2]))
    out = unmerge_tiles(layout, weights, img)
    return torch.cat([head, out, tail], dim=1) if head.shape[1] or tail.shape[1] else out


def merged_positions_impl(idx: torch.Tensor, h: int, w: int, th: int, tw: int, frames: int) -> torch.Tensor:
    return _merged_positions(_layout(h, w, th, tw, frames), idx)


def gather_positions_impl(table: torch.Tensor, positions: torch.Tensor, dim: int, offset: int, n: int) -> torch.Tensor:
    """Rows of a positional table (RoPE cos/sin) for a merged sequence, per batch element.

    ``table`` has size 1 at dim 0 (broadcast over the batch) and the unmerged sequence length at
    ``dim``; the image span ``[offset, offset + n)`` is replaced by rows ``offset + positions``
    (a gather: merged tokens take their destination's position), the rest is kept.
    """
    b = positions.shape[0]
    s = table.shape[dim]
    dev = positions.device
    head = torch.arange(offset, device=dev).expand(b, -1)
    tail = torch.arange(offset + n, s, device=dev).expand(b, -1)
    index = torch.cat([head, positions + offset, tail], dim=1)  # (B, S')
    view = [1] * table.ndim
    view[0], view[dim] = b, index.shape[1]
    full = list(table.shape)
    full[0], full[dim] = b, index.shape[1]
    return torch.gather(table.expand(b, *table.shape[1:]), dim, index.reshape(view).expand(full))


@torch.library.custom_op("toma::merge_weights", mutates_args=())
def merge_weights(
    x: torch.Tensor, idx: torch.Tensor, h: int, w: int, th: int, tw: int, frames: int, offset: int, temperature: float
) -> torch.Tensor:
    """Merge weights ``A`` ``(B, T, k, S)`` of the image span of ``x`` for destinations ``idx``."""
    return merge_weights_impl(x, idx, h, w, th, tw, frames, offset, temperature)


@merge_weights.register_fake
def _(x, idx, h, w, th, tw, frames, offset, temperature):  # type: ignore[no-untyped-def]
    layout = _layout(h, w, th, tw, frames)
    return x.new_empty((x.shape[0], layout.num_tiles, idx.shape[-1], layout.tile_size))


@merge_weights.register_kernel("cuda")
def _(x, idx, h, w, th, tw, frames, offset, temperature):  # type: ignore[no-untyped-def]
    if _torch_on_cuda(th, tw):
        return merge_weights_impl(x, idx, h, w, th, tw, frames, offset, temperature)
    from plugins.triton_merge import merge_triton

    layout = _layout(h, w, th, tw, frames)
    img = x[:, offset : offset + layout.num_tokens]
    return merge_triton(img, layout, idx=idx, temperature=temperature, tokens=False)[1]


@torch.library.custom_op("toma::merge", mutates_args=())
def merge(
    x: torch.Tensor, weights: torch.Tensor, h: int, w: int, th: int, tw: int, frames: int, offset: int
) -> torch.Tensor:
    """``x`` with its image span merged: ``(B, offset + T*k + R + tail, C)``."""
    return merge_impl(x, weights, h, w, th, tw, frames, offset)


@merge.register_fake
def _(x, weights, h, w, th, tw, frames, offset):  # type: ignore[no-untyped-def]
    layout = _layout(h, w, th, tw, frames)
    merged = layout.merged_count(weights.shape[2])
    return x.new_empty((x.shape[0], x.shape[1] - layout.num_tokens + merged, x.shape[2]))


@merge.register_kernel("cuda")
def _(x, weights, h, w, th, tw, frames, offset):  # type: ignore[no-untyped-def]
    if _torch_on_cuda(th, tw):
        return merge_impl(x, weights, h, w, th, tw, frames, offset)
    from plugins.triton_merge import merge_span_triton

    return merge_span_triton(x, _layout(h, w, th, tw, frames), offset, weights=weights)


@torch.library.custom_op("toma::unmerge", mutates_args=())
def unmerge(
    y: torch.Tensor, weights: torch.Tensor, h: int, w: int, th: int, tw: int, frames: int, offset: int
) -> torch.Tensor:
    """Inverse map of :func:`merge` (``A^T @ Y`` on the merged span)."""
    return unmerge_impl(y, weights, h, w, th, tw, frames, offset)


@unmerge.register_fake
def _(y, weights, h, w, th, tw, frames, offset):  # type: ignore[no-untyped-def]
    layout = _layout(h, w, th, tw, frames)
    merged = layout.merged_count(weights.shape[2])
    return y.new_empty((y.shape[0], y.shape[1] - merged + layout.num_tokens, y.shape[2]))


@unmerge.register_kernel("cuda")
def _(y, weights, h, w, th, tw, frames, offset):  # type: ignore[no-untyped-def]
    if _torch_on_cuda(th, tw):
        return unmerge_impl(y, weights, h, w, th, tw, frames, offset)
    from plugins.triton_merge import unmerge_span_triton

    return unmerge_span_triton(y, weights, _layout(h, w, th, tw, frames), offset)


@torch.library.custom_op("toma::merged_positions", mutates_args=())
def merged_positions(idx: torch.Tensor, h: int, w: int, th: int, tw: int, frames: int) -> torch.Tensor:
    """Grid index ``(B, T*k + R)`` of each merged token (its destination's)."""
    return merged_positions_impl(idx, h, w, th, tw, frames)


@merged_positions.register_fake
def _(idx, h, w, th, tw, frames):  # type: ignore[no-untyped-def]
    layout = _layout(h, w, th, tw, frames)
    return idx.new_empty((idx.shape[0], layout.merged_count(idx.shape[2])))


@torch.library.custom_op("toma::gather_positions", mutates_args=())
def gather_positions(table: torch.Tensor, positions: torch.Tensor, dim: int, offset: int, n: int) -> torch.Tensor:
    """Per-batch rows of a positional table for a merged sequence (see :func:`gather_positions_impl`)."""
    return gather_positions_impl(table, positions, dim, offset, n)


@gather_positions.register_fake
def _(table, positions, dim, offset, n):  # type: ignore[no-untyped-def]
    shape = list(table.shape)
    shape[0] = positions.shape[0]
    shape[dim] = shape[dim] - n + positions.shape[1]
    return table.new_empty(shape)


# --- fused merge / unmerge: MergeMap's CUDA path ---------------------------------------------------
# Layout arguments include ``tile_major`` (the token order of the block running the site); no span
# offset: the eager hooks pass the image tokens only.


def _tile_layout(h: int, w: int, th: int, tw: int, frames: int, tile_major: bool) -> TileLayout:
    return TileLayout(h, w, th, tw, frames, tile_major)


def fused_merge_impl(
    x: torch.Tensor, idx: torch.Tensor, h: int, w: int, th: int, tw: int, frames: int, tile_major: bool, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch reference of :func:`fused_merge`: ``(merged tokens, weights)``."""
    tiles, rest = _tile_layout(h, w, th, tw, frames, tile_major).split(x)
    weights = _merge_weights(tiles, idx, temperature)
    return merge_tiles(weights / weights.sum(dim=-1, keepdim=True), tiles, rest), weights


def tile_merge_impl(
    x: torch.Tensor, weights: torch.Tensor, h: int, w: int, th: int, tw: int, frames: int, tile_major: bool
) -> torch.Tensor:
    tiles, rest = _tile_layout(h, w, th, tw, frames, tile_major).split(x)
    return merge_tiles(weights / weights.sum(dim=-1, keepdim=True), tiles, rest)


def tile_unmerge_impl(
    y: torch.Tensor,
    weights: torch.Tensor,
    residual: torch.Tensor | None,
    h: int,
    w: int,
    th: int,
    tw: int,
    frames: int,
    tile_major: bool,
) -> torch.Tensor:
    out = unmerge_tiles(_tile_layout(h, w, th, tw, frames, tile_major), weights, y)
    return out if residual is None else out + residual


@torch.library.custom_op("toma::fused_merge", mutates_args=())
def fused_merge(
    x: torch.Tensor, idx: torch.Tensor, h: int, w: int, th: int, tw: int, frames: int, tile_major: bool, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(merged (B, T*k + R, C), weights A (B, T, k, S))`` of tokens ``x`` ``(B, h*w, C)``."""
    return fused_merge_impl(x, idx, h, w, th, tw, frames, tile_major, temperature)


@fused_merge.register_fake
def _(x, idx, h, w, th, tw, frames, tile_major, temperature):  # type: ignore[no-untyped-def]
    layout = _tile_layout(h, w, th, tw, frames, tile_major)
    k = idx.shape[-1]
    return (
        x.new_empty((x.shape[0], layout.merged_count(k), x.shape[2])),
        x.new_empty((x.shape[0], layout.num_tiles, k, layout.tile_size)),
    )


@fused_merge.register_kernel("cuda")
def _(x, idx, h, w, th, tw, frames, tile_major, temperature):  # type: ignore[no-untyped-def]
    if _torch_on_cuda(th, tw):
        return fused_merge_impl(x, idx, h, w, th, tw, frames, tile_major, temperature)
    from plugins.triton_merge import merge_triton

    return merge_triton(x, _tile_layout(h, w, th, tw, frames, tile_major), idx=idx, temperature=temperature)


@torch.library.custom_op("toma::tile_merge", mutates_args=())
def tile_merge(
    x: torch.Tensor, weights: torch.Tensor, h: int, w: int, th: int, tw: int, frames: int, tile_major: bool
) -> torch.Tensor:
    """Merged tokens ``(B, T*k + R, C)`` of ``x`` with given weights ``A`` (e.g. another site's)."""
    return tile_merge_impl(x, weights, h, w, th, tw, frames, tile_major)


@tile_merge.register_fake
def _(x, weights, h, w, th, tw, frames, tile_major):  # type: ignore[no-untyped-def]
    layout = _tile_layout(h, w, th, tw, frames, tile_major)
    return x.new_empty((x.shape[0], layout.merged_count(weights.shape[2]), x.shape[2]))


@tile_merge.register_kernel("cuda")
def _(x, weights, h, w, th, tw, frames, tile_major):  # type: ignore[no-untyped-def]
    if _torch_on_cuda(th, tw):
        return tile_merge_impl(x, weights, h, w, th, tw, frames, tile_major)
    from plugins.triton_merge import merge_triton

    return merge_triton(x, _tile_layout(h, w, th, tw, frames, tile_major), weights=weights)[0]


@torch.library.custom_op("toma::tile_unmerge", mutates_args=())
def tile_unmerge(
    y: torch.Tensor,
    weights: torch.Tensor,
    residual: torch.Tensor | None,
    h: int,
    w: int,
    th: int,
    tw: int,
    frames: int,
    tile_major: bool,
) -> torch.Tensor:
    """Tokens ``(B, h*w, C)`` from merged ``y`` (``A^T @ Y``), plus ``residual`` when given."""
    return tile_unmerge_impl(y, weights, residual, h, w, th, tw, frames, tile_major)


@tile_unmerge.register_fake
def _(y, weights, residual, h, w, th, tw, frames, tile_major):  # type: ignore[no-untyped-def]
    return y.new_empty((y.shape[0], h * w, y.shape[2]))


@tile_unmerge.register_kernel("cuda")
def _(y, weights, residual, h, w, th, tw, frames, tile_major):  # type: ignore[no-untyped-def]
    if _torch_on_cuda(th, tw):
        return tile_unmerge_impl(y, weights, residual, h, w, th, tw, frames, tile_major)
    from plugins.triton_merge import unmerge_triton

    return unmerge_triton(y, weights, _tile_layout(h, w, th, tw, frames, tile_major), residual=residual)
