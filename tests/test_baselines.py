"""The peers: our bipartite matcher against the tomesd package, CA-ToMe's threshold, ToDo's sampling."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from tomesd.merge import bipartite_soft_matching_random2d

from toma_export.baselines.bipartite import bipartite_match, destination_mask
from toma_export.baselines.todo import downsample_index, downsample_tokens


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 1000), h=st.integers(2, 10), w=st.integers(2, 10), ratio=st.sampled_from([0.25, 0.5, 0.7]))
def test_bipartite_matches_tomesd_round_trip(seed: int, h: int, w: int, ratio: float) -> None:
    """Same partition (top-left destinations) and same matching: unmerge(f(merge(x))) agrees with tomesd."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, h * w, 6, generator=g)
    r = int(h * w * ratio)
    ours = bipartite_match(x, h, w, r)
    m, u = bipartite_soft_matching_random2d(x, w, h, 2, 2, r, no_rand=True)
    merged_ours, merged_ref = ours.merge(x), m(x)
    assert merged_ours.shape == merged_ref.shape
    f = torch.randn(6, 6, generator=g)
    torch.testing.assert_close(ours.unmerge(merged_ours @ f), u(merged_ref @ f), rtol=1e-5, atol=1e-5)


def test_bipartite_positions_name_the_tokens_they_hold() -> None:
    x = torch.randn(1, 36, 4, generator=torch.Generator().manual_seed(0))
    match = bipartite_match(x, 6, 6, 10)
    merged, pos = match.merge(x), match.positions()
    n_unm = match.unm_idx.shape[1]
    torch.testing.assert_close(merged[0, :n_unm], x[0, pos[0, :n_unm]])  # unmerged tokens kept verbatim
    assert sorted(pos[0].tolist()) == sorted(set(pos[0].tolist()))  # each position once


def test_destination_mask_one_per_window() -> None:
    mask = destination_mask(5, 7, generator=torch.Generator().manual_seed(1)).reshape(5, 7)
    assert mask[:4, :6].reshape(2, 2, 3, 2).sum(dim=(1, 3)).eq(1).all()
    assert not mask[4].any() and not mask[:, 6].any()


def test_catome_threshold_limits_merges() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 32, generator=g)
    x[:, 1::2] = x[:, 0::2] + 1e-3 * torch.randn(1, 32, 32, generator=g)  # half the tokens have a twin
    loose = bipartite_match(x, 8, 8, 32, threshold=-1.0)
    strict = bipartite_match(x, 8, 8, 32, threshold=0.99)
    assert loose.r == 32
    assert 0 < strict.r < 32  # only near-duplicate pairs merge
    assert bipartite_match(x, 8, 8, 32, threshold=1.0).r <= strict.r


@pytest.mark.parametrize("h,w,ratio,expected", [(8, 8, 0.75, 16), (8, 8, 0.5, 36), (6, 10, 0.0, 60)])
def test_todo_keeps_the_expected_token_count(h: int, w: int, ratio: float, expected: int) -> None:
    idx = downsample_index(h, w, ratio)
    assert idx.numel() == expected
    assert len(set(idx.tolist())) == expected  # real, distinct tokens (nearest neighbour)


def test_todo_equals_nearest_interpolation() -> None:
    x = torch.randn(2, 8 * 8, 3)
    grid = x.transpose(1, 2).reshape(2, 3, 8, 8)
    expected = torch.nn.functional.interpolate(grid, size=(4, 4), mode="nearest-exact").flatten(2).transpose(1, 2)
    torch.testing.assert_close(downsample_tokens(x, 8, 8, 0.75), expected)
