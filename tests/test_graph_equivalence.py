"""The rewritten program matches the eager ToMA path (fp32, <= 1e-4 relative), and ratio 0 is the model."""

from __future__ import annotations

import pytest
import torch

import toma_export
from toma_export.models import load_model
from toma_export.models.inputs import example_inputs

RESOLUTIONS = {
    # (height, width) pixels: square, and non-square with a border the 4x4 tiles do not cover
    "sdxl-tiny": [(256, 256), (200, 264)],  # merged level 16x16 / 13x17 tokens
    "flux-tiny": [(256, 256), (208, 320)],  # 16x16 / 13x20 tokens
}
CASES = [(m, b, hw) for m, res in RESOLUTIONS.items() for b in (1, 2) for hw in res]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name,batch,hw", CASES, ids=[f"{m}-b{b}-{h}x{w}" for m, b, (h, w) in CASES])
def test_matches_eager_over_steps(name: str, batch: int, hw: tuple[int, int]) -> None:
    h, w = hw
    cfg = toma_export.ToMAConfig(ratio=0.5, recompute_every=2)
    model = load_model(name)
    program = toma_export.rewrite(model, example_inputs(model, batch=batch, height=h, width=w), cfg)
    assert program.sites and len(program.groups) == 1
    toma_export.apply(model, cfg)
    try:
        with torch.no_grad():
            for step in range(3):  # select, reuse, select
                kw = example_inputs(model, batch=batch, height=h, width=w, seed=step)
                eager = model(**kw)[0]
                graph = program(**kw)[0]
                assert rel(graph, eager) <= 1e-4, f"step {step}"
        assert program.selections == toma_export.state(model).selections == 2
    finally:
        toma_export.remove(model)
    with torch.no_grad():
        original = model(**kw)[0]
    assert rel(graph, original) > 1e-3  # it really merged


@pytest.mark.parametrize("name", list(RESOLUTIONS))
def test_ratio_zero_is_the_original_model(name: str) -> None:
    model = load_model(name)
    kw = example_inputs(model, batch=2, height=256, width=192)
    program = toma_export.rewrite(model, kw, toma_export.ToMAConfig(ratio=0.0))
    assert program.sites == [] and program.groups == []
    assert program.skipped and all("ratio 0" in s.reason for s in program.skipped)
    with torch.no_grad():
        ref = model(**kw)[0]
        out = program(**kw)[0]
    assert (out - ref).abs().max().item() <= 1e-5
    assert not any("toma" in str(n.target) for n in program.exported_program.graph.nodes)


@pytest.mark.parametrize("name", list(RESOLUTIONS))
def test_options_match_eager(name: str) -> None:
    """Group-shared weights, kind switches and an explicit max_downsample follow the eager semantics too."""
    cfg = toma_export.ToMAConfig(ratio=0.75, weights="group", merge_cross=False, max_downsample=4, recompute_every=1)
    model = load_model(name)
    kw = example_inputs(model, batch=1, height=128, width=192)
    program = toma_export.rewrite(model, kw, cfg)
    assert "cross" not in {s.kind for s in program.sites}
    if name == "sdxl-tiny":
        assert len(program.groups) == 2  # levels /2 and /4
    toma_export.apply(model, cfg)
    try:
        with torch.no_grad():
            for step in range(2):
                kw = example_inputs(model, batch=1, height=128, width=192, seed=step)
                assert rel(program(**kw)[0], model(**kw)[0]) <= 1e-4
    finally:
        toma_export.remove(model)
