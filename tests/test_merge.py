"""Tile layouts and the merge/unmerge maps: round trips, convexity, identities, positions."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from toma_export.core.merge import MergeMap, merge_weights, merged_positions
from toma_export.core.selection import facility_location
from toma_export.core.tiles import TileLayout, unet_level
from toma_export.errors import ToMAConfigError


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 13), w=st.integers(1, 13), th=st.integers(1, 5), tw=st.integers(1, 5), f=st.integers(1, 3))
def test_split_join_round_trip(h: int, w: int, th: int, tw: int, f: int) -> None:
    """Images (f = 1) and frame-major video grids of f frames of h rows: tiles never cross a frame."""
    layout = TileLayout(f * h, w, th, tw, frames=f)
    x = torch.arange(2 * f * h * w * 3, dtype=torch.float32).reshape(2, f * h * w, 3)
    tiles, rest = layout.split(x)
    assert tiles.shape == (2, f * (h // th) * (w // tw), th * tw, 3)
    assert rest.shape == (2, layout.num_rest, 3)
    assert torch.equal(layout.join(tiles, rest), x)
    tile_index, rest_index = layout.token_index
    frame_of = tile_index // (h * w)
    assert bool((frame_of == frame_of[:, :1]).all())  # every slot of a tile in the tile's frame
    assert sorted(torch.cat([tile_index.flatten(), rest_index]).tolist()) == list(range(f * h * w))


def test_tiles_hold_spatial_neighbours() -> None:
    layout = TileLayout(8, 8, 4, 4)
    tile_index, rest_index = layout.token_index
    assert rest_index.numel() == 0
    assert tile_index[0].tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27]
    assert tile_index[1, 0] == 4 and tile_index[2, 0] == 32


def test_border_tokens_are_right_columns_then_bottom_rows() -> None:
    _, rest = TileLayout(5, 6, 4, 4).token_index
    # Right of the 4x4 tiled block: columns 4..5 of rows 0..3, then all of row 4.
    assert rest.tolist() == [4, 5, 10, 11, 16, 17, 22, 23, 24, 25, 26, 27, 28, 29]


def test_remainder_error_names_the_parameter_and_fix() -> None:
    with pytest.raises(ToMAConfigError, match=r"tile=\(4, 4\).*remainder='keep'"):
        TileLayout.create(10, 12, (4, 4), remainder="error")
    TileLayout.create(10, 12, (4, 4), remainder="keep")


def test_unet_level_follows_ceil_halving() -> None:
    assert unet_level(33 * 25, 33, 25) == (33, 25, 1)
    assert unet_level(17 * 13, 33, 25) == (17, 13, 2)
    assert unet_level(9 * 7, 33, 25) == (9, 7, 4)
    assert unet_level(100, 33, 25) is None


def _map(x: torch.Tensor, layout: TileLayout, k: int, temperature: float = 1000.0) -> MergeMap:
    tiles, _ = layout.split(x)
    return MergeMap.build(layout, x, facility_location(tiles, k), temperature)


def test_identical_tile_merges_and_unmerges_unchanged() -> None:
    layout = TileLayout(4, 8, 4, 4)
    token = torch.randn(1, 1, 6)
    x = token.expand(2, 32, 6).clone()
    mm = _map(x, layout, 8)
    merged = mm.merge(x)
    assert merged.shape == (2, 16, 6)
    torch.testing.assert_close(merged, token.expand(2, 16, 6), rtol=0, atol=1e-6)
    torch.testing.assert_close(mm.unmerge(merged), x, rtol=0, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 1000), h=st.integers(4, 11), w=st.integers(4, 11), k=st.integers(1, 15))
def test_weights_are_convex_both_ways(seed: int, h: int, w: int, k: int) -> None:
    g = torch.Generator().manual_seed(seed)
    layout = TileLayout(h, w, 4, 4)
    x = torch.randn(2, h * w, 5, generator=g)
    tiles, _ = layout.split(x)
    idx = facility_location(tiles, k)
    a = merge_weights(tiles, idx, temperature=3.0)
    torch.testing.assert_close(a.sum(dim=-2), torch.ones_like(a[..., 0, :]))  # unmerge rows: convex mixes
    mm = MergeMap(layout, idx, a)
    assert mm.num_merged == layout.num_tiles * k + layout.num_rest
    # Merging a constant keeps it (merge rows are weighted means); unmerge of a constant too.
    ones = torch.ones(2, h * w, 3)
    torch.testing.assert_close(mm.merge(ones), torch.ones(2, mm.num_merged, 3))
    torch.testing.assert_close(mm.unmerge(torch.ones(2, mm.num_merged, 3)), ones)


def test_tiles_of_k_distinct_values_round_trip_exactly() -> None:
    """A tile holding k distinct vectors (each twice): k destinations cover them, nothing is lost."""
    layout = TileLayout(4, 8, 4, 4)
    g = torch.Generator().manual_seed(1)
    values = torch.randn(2, 2, 8, 16, generator=g)  # (B, T, k distinct, C)
    tiles = values.repeat_interleave(2, dim=2)[:, :, torch.randperm(16, generator=g)]
    x = layout.join(tiles, tiles[:, 0, :0])
    mm = _map(x, layout, 8)
    torch.testing.assert_close(mm.unmerge(mm.merge(x)), x, rtol=0, atol=1e-5)


def test_unmerge_is_the_transpose_map() -> None:
    layout = TileLayout(4, 4, 4, 4)
    x = torch.randn(1, 16, 4)
    mm = _map(x, layout, 4, temperature=2.0)
    y = torch.randn(1, 4, 4)
    expected = mm.weights[0, 0].T @ y[0]
    torch.testing.assert_close(mm.unmerge(y)[0], expected)


def test_merged_positions_gather_destinations_then_border() -> None:
    layout = TileLayout(5, 8, 4, 4)
    idx = torch.tensor([[[0, 5], [15, 1]]])
    pos = merged_positions(layout, idx)[0].tolist()
    assert pos == [0, 9, 31, 5] + [32, 33, 34, 35, 36, 37, 38, 39]
