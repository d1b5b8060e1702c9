"""The torch merge path (CPU, and what exports decompose to): equal to the reference maths, and lean.

At batch 1 a GPU pays every dispatched op on the host, and on the CPU at small sizes an op costs
about its dispatch; views included. So the path folds batch x tiles into one ``bmm`` batch and a
merge map folds its matrices once (a map shared by a group's sites folds once a step).
"""

from __future__ import annotations

from collections import Counter

import hypothesis.strategies as st
import torch
from hypothesis import given, settings
from torch.utils._python_dispatch import TorchDispatchMode

from toma_export.core.merge import MergeMap, merge_tiles, merge_weights, unmerge_tiles
from toma_export.core.selection import facility_location, tokens_kept
from toma_export.core.tiles import TileLayout


class _AllOps(TorchDispatchMode):
    """Every ATen op dispatched, views included (host time counts them too)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.names[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _map(layout: TileLayout, x: torch.Tensor, ratio: float = 0.5) -> MergeMap:
    tiles, _ = layout.split(x)
    idx = facility_location(tiles, tokens_kept(layout.tile_size, ratio))
    return MergeMap.build(layout, x, idx, temperature=10.0)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(2, 11), w=st.integers(2, 11), th=st.integers(1, 3), tw=st.integers(1, 3),
       frames=st.integers(1, 2), tile_major=st.booleans(), batch=st.integers(1, 2))
def test_map_merge_and_unmerge_equal_the_reference(h: int, w: int, th: int, tw: int, frames: int,
                                                   tile_major: bool, batch: int) -> None:
    """Every layout (either token order, with and without a border, video frames): the map's folded
    ``bmm`` equals ``merge_tiles``/``unmerge_tiles`` on the layout's split, for its own features and
    for other features merged with its weights (a later site of a group)."""
    layout = TileLayout(frames * h, w, th, tw, frames, tile_major)
    if layout.num_tiles == 0:
        return
    g = torch.Generator().manual_seed(h * 100 + w * 10 + th)
    x, other = (torch.randn(batch, layout.num_tokens, 5, generator=g) for _ in range(2))
    mm = _map(layout, x)
    assert mm.merge_matrix is not None
    for feats in (x, other):
        want = merge_tiles(mm.merge_matrix, *layout.split(feats))
        torch.testing.assert_close(mm.merge(feats), want)
        y = torch.randn(want.shape, generator=g)
        torch.testing.assert_close(mm.unmerge(y), unmerge_tiles(layout, mm.weights, y))
        torch.testing.assert_close(mm.unmerge(y, residual=feats), unmerge_tiles(layout, mm.weights, y) + feats)


def test_merge_weights_are_the_4d_definition() -> None:
    """The folded weights equal ``softmax(tau * cos(D, X))`` over destinations, written per tile."""
    g = torch.Generator().manual_seed(0)
    tiles = torch.randn(2, 6, 9, 7, generator=g)
    idx = torch.stack([torch.randperm(9, generator=g)[:4] for _ in range(12)]).view(2, 6, 4)
    xn = torch.nn.functional.normalize(tiles, dim=-1)
    dest = torch.stack([xn[b, t, idx[b, t]] for b in range(2) for t in range(6)]).view(2, 6, 4, 7)
    want = (10.0 * dest @ xn.transpose(-1, -2)).softmax(dim=-2)
    torch.testing.assert_close(merge_weights(tiles, idx, 10.0), want)
    half = merge_weights(tiles.half(), idx, 10.0)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), want, atol=1e-3, rtol=1e-3)


def test_a_tile_ordered_site_dispatches_three_ops_per_merge_and_unmerge() -> None:
    """A UNet block runs tile-major (``TileOrderHook``): a merge with a built map is ``view``, ``bmm``,
    ``view``, and so is an unmerge (the split, 4-d ``matmul`` and join this replaced dispatched 10 and 11)."""
    layout = TileLayout(8, 8, 4, 4, tile_major=True)
    x, other = torch.randn(2, 64, 16), torch.randn(2, 64, 16)
    mm = _map(layout, x)
    for feats in (x, other):
        with _AllOps() as ops:
            y = mm.merge(feats)
        assert ops.names == Counter({"bmm": 1, "view": 2}), ops.names
        with _AllOps() as ops:
            mm.unmerge(y)
        assert ops.names == Counter({"bmm": 1, "view": 2}), ops.names


def test_building_a_map_dispatches_its_weights_and_two_folds() -> None:
    """Weights from a site's features: 9 compute ops (fp32) and their views; the map then folds
    ``M`` and ``A^T`` once for every merge and unmerge that uses it."""
    layout = TileLayout(8, 8, 4, 4, tile_major=True)
    x = torch.randn(2, 64, 16)
    idx = facility_location(layout.split(x)[0], 8)
    with _AllOps() as ops:
        MergeMap.build(layout, x, idx, temperature=10.0)
    compute = {n: c for n, c in ops.names.items() if n not in {"view", "expand", "transpose", "unsqueeze", "slice"}}
    assert compute == {"linalg_vector_norm": 1, "clamp_min": 1, "div": 2, "gather": 1, "bmm": 1, "mul": 1,
                       "_softmax": 1, "sum": 1}, ops.names
    assert sum(ops.names.values()) <= 20, ops.names
