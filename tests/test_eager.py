"""Eager integration on the tiny SDXL and Flux models: identities, restore, batches, schedule, errors."""

from __future__ import annotations

import copy

import pytest
import torch

import toma_export
from toma_export import ToMAConfig, ToMAConfigError, UnsupportedModelError
from toma_export.eager.flux import image_grid
from toma_export.models.inputs import example_inputs, flux_image_ids

METHODS = ["toma", "tomesd", "todo", "catome"]


def _run(model: torch.nn.Module, kwargs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**kwargs)[0]


@pytest.fixture(params=["sdxl_tiny", "flux_tiny"])
def model(request: pytest.FixtureRequest) -> torch.nn.Module:
    return request.getfixturevalue(request.param)


def _patched_modules(model: torch.nn.Module) -> int:
    hooks = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
    registered = sum(len(m._diffusers_hook.hooks) for m in model.modules() if hasattr(m, "_diffusers_hook"))
    swapped = sum(type(m).__name__ == "ToMeBlock" for m in model.modules())
    instance_attrs = sum(bool({"forward", "_toma_installed"} & set(vars(m))) for m in model.modules())
    return hooks + registered + swapped + instance_attrs


@pytest.mark.parametrize("method", METHODS)
def test_ratio_zero_reproduces_the_unpatched_model(model: torch.nn.Module, method: str) -> None:
    kw = example_inputs(model, batch=2, height=256, width=192)
    ref = _run(model, kw)
    toma_export.apply(model, ToMAConfig(ratio=0.0, method=method))
    try:
        out = _run(model, kw)
    finally:
        toma_export.remove(model)
    assert (out - ref).abs().max().item() <= 1e-5


def test_flux_forward_without_merging_matches_diffusers(flux_tiny: torch.nn.Module) -> None:
    """Our block forwards (per-batch RoPE, own attention) reproduce diffusers when nothing merges."""
    kw = example_inputs(flux_tiny, batch=2, height=256, width=192)
    ref = _run(flux_tiny, kw)
    toma_export.apply(flux_tiny, ToMAConfig(ratio=0.5, merge_attn=False, merge_mlp=False))
    try:
        out = _run(flux_tiny, kw)
    finally:
        toma_export.remove(flux_tiny)
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_apply_then_remove_restores_exact_outputs(model: torch.nn.Module, method: str) -> None:
    kw = example_inputs(model, batch=1, height=256, width=256)
    ref = _run(model, kw)
    before = _patched_modules(model)
    toma_export.apply(model, ToMAConfig(ratio=0.5, method=method))
    merged = _run(model, kw)
    toma_export.remove(model)
    assert _patched_modules(model) == before
    assert torch.equal(_run(model, kw), ref)
    if method != "catome":  # CA-ToMe merges only pairs above its threshold: maybe none on random weights
        assert not torch.allclose(merged, ref, atol=1e-4), "ratio 0.5 should change the output"


@pytest.mark.parametrize("size", [(256, 256), (256, 384), (264, 200)])
def test_toma_output_is_close_and_finite_at_any_resolution(sdxl_tiny: torch.nn.Module, size: tuple[int, int]) -> None:
    kw = example_inputs(sdxl_tiny, height=size[0], width=size[1])
    ref = _run(sdxl_tiny, kw)
    toma_export.apply(sdxl_tiny, ToMAConfig(ratio=0.5))
    try:
        out = _run(sdxl_tiny, kw)
    finally:
        toma_export.remove(sdxl_tiny)
    assert torch.isfinite(out).all()
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 1e-4 < rel < 0.5


@pytest.mark.parametrize("method", ["toma", "todo"])
def test_batch_elements_are_independent(model: torch.nn.Module, method: str) -> None:
    """A CFG-style batch of 2 gives each element what it gets alone (selection is per element).

    In float64: in fp32, batch size changes BLAS rounding (~1e-6), enough to flip a near-tie in
    the greedy selection; the property under test is independence, not rounding.
    """
    model = copy.deepcopy(model).double()
    kw2 = example_inputs(model, batch=2, height=256, width=192, seed=3, dtype=torch.float64)
    kw1 = {k: (v[:1] if torch.is_tensor(v) and v.ndim and v.shape[0] == 2 else v) for k, v in kw2.items()}
    if "added_cond_kwargs" in kw2:
        kw1["added_cond_kwargs"] = {k: v[:1] for k, v in kw2["added_cond_kwargs"].items()}
    toma_export.apply(model, ToMAConfig(ratio=0.5, method=method))
    try:
        both = _run(model, kw2)
        toma_export.reset(model)
        single = _run(model, kw1)
    finally:
        toma_export.remove(model)
    torch.testing.assert_close(both[:1], single, rtol=1e-9, atol=1e-9)


def test_destinations_shared_across_blocks_and_reused_across_steps(model: torch.nn.Module) -> None:
    kw = example_inputs(model, height=256, width=256)
    toma_export.apply(model, ToMAConfig(ratio=0.5, recompute_every=3))
    try:
        st = toma_export.state(model)
        for _ in range(7):
            _run(model, kw)
        # One group (one merged level / one image grid): selection on steps 0, 3, 6 only.
        assert st.selections == 3 and st.step == 7
        toma_export.reset(model)
        _run(model, kw)
        assert st.selections == 4 and st.step == 1
    finally:
        toma_export.remove(model)


def test_reused_destinations_change_the_output_like_a_fresh_selection_would_not(sdxl_tiny: torch.nn.Module) -> None:
    """Step 1 reuses step 0's destinations: feeding other inputs shows the reuse is real."""
    a = example_inputs(sdxl_tiny, height=256, width=256, seed=1)
    b = example_inputs(sdxl_tiny, height=256, width=256, seed=2)
    toma_export.apply(sdxl_tiny, ToMAConfig(ratio=0.5, recompute_every=2))
    try:
        _run(sdxl_tiny, a)
        reused = _run(sdxl_tiny, b)  # step 1: destinations from a's features
        toma_export.reset(sdxl_tiny)
        fresh = _run(sdxl_tiny, b)  # step 0: destinations from b's own features
    finally:
        toma_export.remove(sdxl_tiny)
    assert not torch.allclose(reused, fresh, atol=1e-5)


def test_bad_ratio_is_refused_before_anything_is_patched(sdxl_tiny: torch.nn.Module) -> None:
    before = _patched_modules(sdxl_tiny)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ToMAConfigError, match=r"ratio=.*outside \[0, 1\).*ratio=0.5"):
            toma_export.apply(sdxl_tiny, ratio=bad)
    assert _patched_modules(sdxl_tiny) == before


def test_tile_that_does_not_divide_without_fallback_is_refused(sdxl_tiny: torch.nn.Module) -> None:
    before = _patched_modules(sdxl_tiny)
    # sdxl-tiny's merged level is 16x16 at its native size: 3x3 tiles do not divide it.
    with pytest.raises(ToMAConfigError, match=r"tile=\(3, 3\).*remainder='keep'"):
        toma_export.apply(sdxl_tiny, ToMAConfig(ratio=0.5, tile=(3, 3), remainder="error"))
    assert _patched_modules(sdxl_tiny) == before


def test_unsupported_model_is_refused_unpatched() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(UnsupportedModelError, match="UNet2DConditionModel.*FluxTransformer2DModel"):
        toma_export.apply(net, ToMAConfig())
    assert _patched_modules(net) == 0
    with pytest.raises(UnsupportedModelError, match="pipeline"):
        toma_export.apply(object(), ToMAConfig())


def test_other_config_errors_name_the_parameter() -> None:
    with pytest.raises(ToMAConfigError, match="method="):
        ToMAConfig(method="fast")  # type: ignore[arg-type]
    with pytest.raises(ToMAConfigError, match="tile="):
        ToMAConfig(tile=(0, 4))
    with pytest.raises(ToMAConfigError, match="recompute_every="):
        ToMAConfig(recompute_every=0)


def test_flux_grid_comes_from_position_ids() -> None:
    assert image_grid(flux_image_ids(12, 20)) == (12, 20)
    assert image_grid(flux_image_ids(20, 12)) == (20, 12)
    shuffled = flux_image_ids(4, 4)[torch.randperm(16, generator=torch.Generator().manual_seed(0))]
    assert image_grid(shuffled) is None  # not row-major: not merged rather than merged wrongly


def test_flux_merged_tokens_take_their_destinations_rope_rows(
    flux_tiny: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep every token (k = tile size): merge is then a permutation into tile-major order, and
    attention is permutation-equivariant only if each token carries its own RoPE row along."""
    import importlib

    state_mod = importlib.import_module("toma_export.eager.state")  # the package exports a function `state`

    monkeypatch.setattr(state_mod, "tokens_kept", lambda tile_size, ratio: tile_size)
    monkeypatch.setattr(state_mod.MergeContext, "merges", lambda self, layout: True)
    kw = example_inputs(flux_tiny, batch=2, height=128, width=192)
    ref = _run(flux_tiny, kw)
    toma_export.apply(flux_tiny, ToMAConfig(ratio=0.5, temperature=1e5))
    try:
        out = _run(flux_tiny, kw)
        carried = toma_export.state(flux_tiny).schedule.carried
    finally:
        toma_export.remove(flux_tiny)
    (idx,) = carried.values()
    assert not torch.equal(idx, torch.arange(16).expand_as(idx)), "picks are not in grid order"
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
