"""Tile-major token order kept through a UNet transformer block (``keep_tile_order``).

The block permutes its tokens once in and once out, and its merged sub-layers split and join by
views. The cut must not change a value: every test compares against the per-site split/join path
(``keep_tile_order=False``), which the rest of the suite checks against the eager reference.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

import toma_export
from toma_export import ToMAConfig
from toma_export.bench.block import BlockModel, block_inputs
from toma_export.core.tiles import TileLayout
from toma_export.eager.hooks import TILE_ORDER_HOOK, TileOrderHook
from toma_export.eager.unet import install
from toma_export.models.inputs import example_inputs


@settings(max_examples=40, deadline=None)
@given(
    frames=st.integers(1, 3),
    fh=st.integers(2, 9),
    w=st.integers(2, 9),
    th=st.integers(1, 4),
    tw=st.integers(1, 4),
    b=st.integers(1, 2),
)
def test_tile_order_round_trips_and_its_splits_are_the_row_major_splits(frames, fh, w, th, tw, b) -> None:
    if th > fh or tw > w or th * tw < 2:
        return
    layout = TileLayout.create(fh * frames, w, (th, tw), frames=frames)
    x = torch.randn(b, layout.num_tokens, 3)
    ordered = layout.to_tile_order(x)
    back = layout.from_tile_order(ordered)
    assert torch.equal(back, x)
    if layout.num_rest or (layout.th > 1 and layout.tiles_x > 1):  # else both orders are one order
        # never a view: the next block's input must look like the unmerged model's to dynamo (it guards
        # on a view input's base, and regional compilation would compile another variant of each block)
        assert back._base is None
    tiles, rest = layout.split(x)
    t2, r2 = layout.in_tile_order.split(ordered)
    assert torch.equal(t2, tiles) and torch.equal(r2, rest)
    assert t2.data_ptr() == ordered.data_ptr()  # a view, not a copy
    assert torch.equal(layout.in_tile_order.join(t2, r2), ordered)
    for a, c in zip(layout.token_index, layout.in_tile_order.token_index):
        assert torch.equal(a, c)  # positions stay row-major grid indexes in either order


def _generation(model: torch.nn.Module, config: ToMAConfig, kw: dict, steps: int) -> list[torch.Tensor]:
    toma_export.apply(model, config)
    try:
        with torch.no_grad():
            return [model(**kw)[0] for _ in range(steps)]
    finally:
        toma_export.remove(model)


@pytest.mark.parametrize("weights", ["site", "group", "period"])
@pytest.mark.parametrize("size", [(256, 256), (264, 200)])  # 264x200: both levels leave a border
def test_unet_generation_equals_the_per_site_path(sdxl_tiny: torch.nn.Module, size, weights: str) -> None:
    """Both attention levels, batch 2, select and reuse steps, with and without a border."""
    kw = example_inputs(sdxl_tiny, batch=2, height=size[0], width=size[1], seed=5)
    base = dict(ratio=0.5, max_downsample=4, recompute_every=2, weights=weights, merge_cross=True)
    per_site = _generation(sdxl_tiny, ToMAConfig(**base, keep_tile_order=False), kw, 3)
    kept = _generation(sdxl_tiny, ToMAConfig(**base), kw, 3)
    with torch.no_grad():
        ref = sdxl_tiny(**kw)[0]
    for a, b in zip(per_site, kept):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(kept[0], ref, atol=1e-4)  # it merged


def test_hook_goes_on_every_merged_block_and_only_for_toma(sdxl_tiny: torch.nn.Module) -> None:
    def order_hooks(config: ToMAConfig) -> int:
        toma_export.apply(sdxl_tiny, config)
        try:
            return sum(TILE_ORDER_HOOK in m._diffusers_hook.hooks for m in sdxl_tiny.modules() if hasattr(m, "_diffusers_hook"))
        finally:
            toma_export.remove(sdxl_tiny)

    blocks = sum(all(hasattr(m, a) for a in ("attn1", "ff", "norm1")) for m in sdxl_tiny.modules())
    assert blocks > 0
    assert order_hooks(ToMAConfig(ratio=0.5)) == blocks
    assert order_hooks(ToMAConfig(ratio=0.5, keep_tile_order=False)) == 0
    assert order_hooks(ToMAConfig(ratio=0.5, method="todo")) == 0  # its downsampling reads grid positions


class _Spy:
    """Counts ``TileLayout.to_tile_order`` calls (the block's permutation in)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls = 0
        original = TileLayout.to_tile_order

        def spy(layout: TileLayout, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return original(layout, x)

        monkeypatch.setattr(TileLayout, "to_tile_order", spy)


def _block(grid: int = 8) -> tuple[BlockModel, dict]:
    model = BlockModel(sample_size=grid).eval()
    return model, block_inputs(1, (grid, grid))


def test_block_with_a_positional_embedding_keeps_token_order(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers.models.embeddings import SinusoidalPositionalEmbedding

    model, kw = _block()
    model.block.pos_embed = SinusoidalPositionalEmbedding(640, max_seq_length=64)
    spy = _Spy(monkeypatch)
    inst = install(model, ToMAConfig(ratio=0.5), max_downsample=1)
    try:
        registry = getattr(model.block, "_diffusers_hook", None)
        assert registry is None or not any(isinstance(h, TileOrderHook) for h in registry.hooks.values())
        with torch.no_grad():
            model(**kw)
    finally:
        inst.remove()
    assert spy.calls == 0


def test_self_attention_mask_call_runs_in_token_order(monkeypatch: pytest.MonkeyPatch) -> None:
    model, kw = _block()
    spy = _Spy(monkeypatch)
    inst = install(model, ToMAConfig(ratio=0.5), max_downsample=1)
    try:
        with torch.no_grad():
            model(**kw)
            assert spy.calls == 1
            ctx = inst.root.active
            tokens = kw["sample"].flatten(2).transpose(1, 2)
            mask = torch.zeros(1, 1, 64)
            model.block(tokens, attention_mask=mask, encoder_hidden_states=kw["encoder_hidden_states"])
            assert spy.calls == 1 and not ctx.tile_major
    finally:
        inst.remove()


def test_block_output_is_in_token_order_and_equals_the_per_site_path() -> None:
    model, kw = _block()
    outs = []
    for keep in (False, True):
        inst = install(model, ToMAConfig(ratio=0.5, keep_tile_order=keep), max_downsample=1)
        try:
            with torch.no_grad():
                outs.append(model(**kw))
        finally:
            inst.remove()
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
