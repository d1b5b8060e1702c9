"""Facility-location selection: distinctness, the (1 - 1/e) bound, equality with the plain loop."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import torch
from hypothesis import given, settings

from reference import brute_force_optimum, cosine_matrix, greedy_facility_location, objective
from toma_export.core.selection import (
    cosine_similarity_matrix,
    facility_location,
    facility_location_from_similarity,
    facility_location_objective,
    tokens_kept,
)


def _tiles(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), s=st.integers(2, 36), c=st.integers(1, 12), data=st.data())
def test_k_distinct_indices_per_tile(seed: int, s: int, c: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, s))
    idx = facility_location(_tiles(seed, 3, 2, s, c), k)
    assert idx.shape == (3, 2, k) and idx.dtype == torch.long
    assert int(idx.min()) >= 0 and int(idx.max()) < s
    for row in idx.reshape(-1, k).tolist():
        assert len(set(row)) == k


def test_identical_tokens_still_give_distinct_indices() -> None:
    x = torch.ones(1, 1, 16, 8)
    idx = facility_location(x, 8)
    assert sorted(idx.flatten().tolist()) == list(range(8))  # all gains tie at 0: lowest free index


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), s=st.integers(3, 9), c=st.integers(2, 6), data=st.data())
def test_greedy_within_one_minus_inv_e_of_brute_force(seed: int, s: int, c: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, s - 1))
    x = _tiles(seed, s, c)
    sim = cosine_matrix(x)
    idx = facility_location(x.double(), k).tolist()
    greedy = objective(sim, idx)
    assert greedy >= (1 - 1 / math.e) * brute_force_optimum(sim, k) - 1e-9
    # The batched objective helper agrees with the plain one.
    vec = facility_location_objective(cosine_similarity_matrix(x.double()).double(), torch.tensor(idx))
    assert math.isclose(float(vec), greedy, rel_tol=1e-5)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), s=st.integers(2, 20), c=st.integers(2, 16), data=st.data())
def test_equals_plain_loop_reference(seed: int, s: int, c: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, s))
    x = _tiles(seed, s, c).double()
    sim = torch.tensor(cosine_matrix(x), dtype=torch.float64)
    assert facility_location_from_similarity(sim, k).tolist() == greedy_facility_location(sim.tolist(), k)


def test_first_pick_maximises_total_similarity() -> None:
    x = _tiles(7, 5, 4, 16, 8)
    sim = cosine_similarity_matrix(x)
    first = facility_location(x, 1)[..., 0]
    assert torch.equal(first, sim.sum(dim=-2).argmax(dim=-1))


def test_batched_over_tiles_equals_per_tile() -> None:
    x = _tiles(3, 2, 6, 16, 5)
    batched = facility_location(x, 5)
    for b in range(2):
        for t in range(6):
            assert torch.equal(batched[b, t], facility_location(x[b, t], 5))


def test_selection_picks_one_token_per_cluster() -> None:
    """Four well-separated clusters, k=4: facility location covers each cluster once."""
    g = torch.Generator().manual_seed(0)
    centers = torch.eye(4, 8) * 10
    labels = torch.arange(16) % 4
    x = centers[labels] + 0.01 * torch.randn(16, 8, generator=g)
    idx = facility_location(x, 4)
    assert sorted(labels[idx].tolist()) == [0, 1, 2, 3]


def test_tokens_kept() -> None:
    assert tokens_kept(16, 0.5) == 8
    assert tokens_kept(16, 0.0) == 16
    assert tokens_kept(16, 0.75) == 4
    assert tokens_kept(4, 0.99) == 1
