"""The CUDA-graph runner: step-by-step equality with eager ToMA (GPU), and its host schedule (CPU)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable, Hashable

import pytest
import torch

import toma_export
import toma_export.runtime.cudagraph as cg
from toma_export import ToMAConfig
from toma_export.models.inputs import example_inputs

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: CUDA graphs are captured and replayed on one")


class HostCache(cg.GraphCache):
    """CPU stand-in for capture/replay: the 'graph' is the captured run itself, rerun on replay
    (with the per-run host state reset, as a capture would have recorded it). It logs which
    variant is captured and replayed."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, Any]] = []

    def capture(self, key: Hashable, run: Callable, tensors: list[torch.Tensor],
                before: Callable[[], None] = lambda: None) -> cg.Captured:
        static = [t.clone() for t in tensors]
        before()
        entry = cg.Captured(SimpleNamespace(replay=lambda: None), static, run(static))
        entry.rerun = (before, run)  # type: ignore[attr-defined]
        self.graphs[key] = entry
        self.captures += 1
        self.log.append(("capture", key[0]))
        return entry

    def replay(self, entry: cg.Captured, tensors: list[torch.Tensor]) -> Any:
        for dst, src in zip(entry.inputs, tensors):
            dst.copy_(src)
        before, run = entry.rerun  # type: ignore[attr-defined]
        before()
        self.replays += 1
        self.log.append(("replay", next(k for k, v in self.graphs.items() if v is entry)[0]))
        return run(entry.inputs)


def test_host_schedule_replays_select_and_reuse_as_eager_decides(sdxl_tiny: torch.nn.Module,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cg, "require_cuda", lambda what: None)
    steps = [example_inputs(sdxl_tiny, batch=2, height=128, width=128, seed=s) for s in range(5)]
    toma_export.apply(sdxl_tiny, ToMAConfig(ratio=0.5, recompute_every=2))
    try:
        with torch.no_grad():
            eager = [sdxl_tiny(**kw)[0] for kw in steps]
            st = toma_export.state(sdxl_tiny)
            eager_selections = st.selections
            toma_export.reset(sdxl_tiny)
            runner = cg.GraphedModel(sdxl_tiny)
            runner.cache = HostCache()
            got = [runner(**kw)[0] for kw in steps]
            assert (st.step, st.selections - eager_selections) == (5, eager_selections)
    finally:
        toma_export.remove(sdxl_tiny)
    assert runner.cache.log == [("capture", "select"), ("capture", "reuse"), ("replay", "select"),
                                ("replay", "reuse"), ("replay", "select")]
    for e, g in zip(eager, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_unpatched_model_is_one_graph_replayed(sdxl_tiny: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cg, "require_cuda", lambda what: None)
    steps = [example_inputs(sdxl_tiny, height=128, width=128, seed=s) for s in range(3)]
    runner = cg.GraphedModel(sdxl_tiny)
    runner.cache = HostCache()
    with torch.no_grad():
        for kw in steps:
            torch.testing.assert_close(runner(**kw)[0], sdxl_tiny(**kw)[0], rtol=0, atol=0)
    assert [e for e, _ in runner.cache.log] == ["capture", "replay", "replay"]


def test_runner_refuses_without_cuda() -> None:
    if CUDA:
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(toma_export.ToMAError, match="needs a CUDA GPU"):
        cg.GraphedModel(torch.nn.Linear(2, 2))


# -- on a GPU ------------------------------------------------------------------------------------
def _cuda_model(request: pytest.FixtureRequest, name: str) -> torch.nn.Module:
    from toma_export.models import load_model

    return load_model(name.replace("_", "-")).to("cuda")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", ["sdxl_tiny", "flux_tiny"])
def test_graphed_model_equals_eager_toma_step_by_step(name: str, batch: int, request: pytest.FixtureRequest) -> None:
    model = _cuda_model(request, name)
    steps = [example_inputs(model, batch=batch, height=128, width=128, seed=s, device="cuda") for s in range(3)]
    toma_export.apply(model, ToMAConfig(ratio=0.5, recompute_every=2))
    try:
        with torch.no_grad():
            eager = [model(**kw)[0] for kw in steps]  # select, reuse, select
            toma_export.reset(model)
            runner = cg.GraphedModel(model)
            got = [runner(**kw)[0] for kw in steps]
            toma_export.reset(model)
            again = [runner(**kw)[0] for kw in steps]  # replays only, a second generation
    finally:
        toma_export.remove(model)
    assert runner.cache.captures == 2
    for e, g, a in zip(eager, got, again):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 2])
def test_graphed_program_equals_eager_toma_step_by_step(batch: int, request: pytest.FixtureRequest) -> None:
    model = _cuda_model(request, "flux_tiny")
    steps = [example_inputs(model, batch=batch, height=128, width=128, seed=s, device="cuda") for s in range(3)]
    config = ToMAConfig(ratio=0.5, recompute_every=2)
    program = toma_export.rewrite(model, steps[0], config)
    toma_export.apply(model, config)
    try:
        with torch.no_grad():
            eager = [model(**kw)[0] for kw in steps]
    finally:
        toma_export.remove(model)
    program.use_cuda_graphs()
    with torch.no_grad():
        got = [program(**kw)[0] for kw in steps]
    for e, g in zip(eager, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
