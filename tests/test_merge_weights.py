"""Merge weights per site, once per group and step, or kept for the recompute period (``ToMAConfig.weights``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import toma_export
from toma_export.bench.kernel_launches import forward_launches
from toma_export.config import ToMAConfig
from toma_export.eager.state import MergeContext
from toma_export.errors import ToMAConfigError, ToMATypeError
from toma_export.models.inputs import example_inputs


def _steps(ctx: MergeContext, features: list[list[torch.Tensor]], grid: tuple[int, int] = (12, 16)) -> list[list[tuple]]:
    """Per step, per site: (weights, merged, unmerged) of ``ctx``'s merge maps on those features."""
    out = []
    for sites in features:
        ctx.begin_step()
        ctx.schedule.begin()
        row = []
        for x in sites:
            mm = ctx.merge_map(ctx.layout_for(*grid), x)
            y = mm.merge(x)
            row.append((mm.weights, y, mm.unmerge(y)))
        out.append(row)
        ctx.end_step()
    return out


def _features(steps: int, sites: int, seed: int = 0) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(2, 192, 8, generator=g) for _ in range(sites)] for _ in range(steps)]


def test_group_weights_with_one_site_per_group_equal_per_site_weights() -> None:
    feats = _features(steps=4, sites=1)
    per_site = _steps(MergeContext(ToMAConfig(recompute_every=2)), feats)
    group = _steps(MergeContext(ToMAConfig(recompute_every=2, weights="group")), feats)
    for a, b in zip(per_site, group):
        for x, y in zip(a[0], b[0]):
            assert torch.equal(x, y)


def test_group_weights_are_the_first_sites_for_every_later_site() -> None:
    feats = _features(steps=2, sites=3)
    per_site = _steps(MergeContext(ToMAConfig(recompute_every=2)), feats)
    group = _steps(MergeContext(ToMAConfig(recompute_every=2, weights="group")), feats)
    for a, b in zip(per_site, group):
        assert torch.equal(b[0][0], a[0][0])  # the first site builds them from its own features
        assert all(w is b[0][0] for w, _, _ in b[1:])  # later sites take them
        assert not torch.allclose(a[1][0], a[0][0])  # per site they differ


def test_period_weights_are_the_selecting_steps_until_the_next_selection() -> None:
    feats = _features(steps=5, sites=2)
    group = _steps(MergeContext(ToMAConfig(recompute_every=2, weights="group")), feats)
    ctx = MergeContext(ToMAConfig(recompute_every=2, weights="period"))
    period = _steps(ctx, feats)
    for step in (0, 2, 4):  # selecting steps: the group's weights, written into the kept buffers
        for a, b in zip(group[step], period[step]):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
    (kept_a, kept_m), = ctx.kept_weights.values()
    assert torch.equal(kept_a, group[4][0][0])
    for step in (1, 3):  # reuse steps: every site merges with the buffer (the previous selecting step's values)
        assert all(w is kept_a for w, _, _ in period[step])
        assert not torch.allclose(period[step][0][1], group[step][0][1])


@pytest.mark.parametrize("model_name", ["sdxl_tiny", "flux_tiny"])
def test_period_equals_group_on_select_steps_of_a_generation(model_name: str, request: pytest.FixtureRequest) -> None:
    """A whole model, select / reuse / select at recompute_every=2 with new inputs every step: the
    selecting steps are equal, the reuse step merges with the kept weights (so it differs)."""
    base = request.getfixturevalue(model_name)
    steps = [example_inputs(base, batch=2, height=128, width=128, seed=s) for s in range(3)]
    outs = {}
    for weights in ("group", "period"):
        toma_export.apply(base, ToMAConfig(ratio=0.5, max_downsample=4, recompute_every=2, weights=weights))
        try:
            with torch.no_grad():
                outs[weights] = [base(**kw)[0] for kw in steps]
        finally:
            toma_export.remove(base)
    for step in (0, 2):
        torch.testing.assert_close(outs["period"][step], outs["group"][step], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(outs["period"][1], outs["group"][1], atol=1e-5)


def test_launches_fall_with_shared_and_kept_weights() -> None:
    """Counted on meta (tiny SDXL UNet): on the torch path group weights drop the 11 weight ops of
    every later site of a group, kept weights those of the first site too on reuse steps; on the
    kernel path a merge is one launch whatever its weights."""
    n = {w: forward_launches("sdxl-tiny-unet", ToMAConfig(ratio=0.5, weights=w)) for w in ("site", "group", "period")}
    sites, odd = divmod(n["site"]["kernels reuse"] - n["site"]["unmerged"], 2)
    groups, rest = divmod(n["group"]["torch reuse"] - n["period"]["torch reuse"], 11)
    assert not odd and not rest and sites > groups >= 1, n
    assert n["site"]["torch reuse"] - n["group"]["torch reuse"] == 11 * (sites - groups), n
    assert n["site"]["kernels reuse"] == n["group"]["kernels reuse"] == n["period"]["kernels reuse"], n
    assert n["period"]["kernels select"] > n["site"]["kernels select"], n  # a select step writes the kept weights


def test_weights_field_checks_and_reads_configs_written_before_it() -> None:
    with pytest.raises(ToMAConfigError, match="weights='block' is unknown; choose one of site, group, period"):
        ToMAConfig(weights="block")  # type: ignore[arg-type]
    with pytest.raises(ToMATypeError, match="weights=1 is a int"):
        ToMAConfig(weights=1)  # type: ignore[arg-type]
    assert ToMAConfig.from_dict({"share_weights": True}).weights == "group"
    assert ToMAConfig.from_dict({"share_weights": False}).weights == "site"
    assert ToMAConfig(weights="period").share_weights and not ToMAConfig().share_weights
    cfg = ToMAConfig(weights="period")
    assert ToMAConfig.from_dict(cfg.to_dict()) == cfg
    assert dataclasses.replace(cfg, weights="group").weights == "group"


def test_flux_rope_rows_are_gathered_once_per_step() -> None:
    """Tiny Flux on meta, kernel path, reuse step: over the unmerged forward only the two fused ops
    per merged site, the single-stream blocks' two span ``cat``s, and one gather of the merged RoPE
    rows for the whole forward (positions, text arange, offset, ``cat``, one row gather per table),
    made where ``pos_embed`` makes the tables; a selecting step adds selection and its buffer write."""
    from toma_export.models.registry import FLUX_TINY

    double, single = FLUX_TINY["num_layers"], FLUX_TINY["num_single_layers"]
    sites = 2 * double + single  # attention + feed-forward per double-stream block, the span per single one
    n = forward_launches("flux-tiny", ToMAConfig(ratio=0.5))
    assert n["kernels reuse"] - n["unmerged"] == 2 * sites + 2 * single + 6, n
    assert n["kernels select"] > n["kernels reuse"], n
