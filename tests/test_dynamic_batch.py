"""Dynamic batch: one rewrite, one exported program, one ONNX artifact for batch 1..N.

Captured at batch 2 (``torch.export`` specialises a batch of 1 to a constant), the batch stays a
symbol through the graph pass, the re-export of both variants and the ONNX export; the resolution
stays fixed and anything else is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import toma_export
from toma_export.schedule import StepSchedule
from toma_export import ToMAConfig, ToMAConfigError
from toma_export.cli import main as cli_main
from toma_export.engines.build import BuildRequest, _variants, build_artifact
from toma_export.engines.load import ShapeMismatchError, load_artifact
from toma_export.engines.verify import verify_artifact
from toma_export.models import load_model
from toma_export.models.inputs import example_inputs

CFG = ToMAConfig(ratio=0.5, recompute_every=2)  # step 0 selects in-graph, step 1 reuses
ART_SIZE = 128  # small artifact: sdxl-tiny merges its 8x8 level (4 tiles)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name,hw", [("sdxl-tiny", (256, 256)), ("flux-tiny", (208, 320))], ids=["sdxl-tiny", "flux-tiny"])
def test_dynamic_rewrite_matches_eager_at_batch_1_2_3(name: str, hw: tuple[int, int]) -> None:
    h, w = hw  # flux 208x320: 13x20 tokens, a border the 4x4 tiles do not cover
    model = load_model(name)
    program = toma_export.rewrite(model, example_inputs(model, batch=2, height=h, width=w), CFG, dynamic_batch=True)
    assert program.dynamic_batch and program.sites and len(program.groups) == 1
    assert not any("symbolic" in s.reason for s in program.skipped)
    from toma_export.graph.inspect import report_for

    report = report_for(program, name, h, w)  # symbolic sizes count at the example's batch
    static = report_for(toma_export.rewrite(model, example_inputs(model, batch=2, height=h, width=w), CFG), name, h, w)
    assert report.total_flops == static.total_flops > 0 and "FLOPs: model" in report.format()
    toma_export.apply(model, CFG)
    errors: dict[tuple[int, int], float] = {}
    try:
        with torch.no_grad():
            for batch in (1, 2, 3):
                program.reset()
                toma_export.reset(model)
                for step in range(2):  # select variant, then reuse variant
                    kw = example_inputs(model, batch=batch, height=h, width=w, seed=10 * batch + step)
                    eager = model(**kw)[0]
                    graph = program(**kw)[0]
                    assert graph.shape == eager.shape and graph.shape[0] == batch
                    errors[(batch, step)] = rel(graph, eager)
                    assert errors[(batch, step)] <= 1e-4, errors
        assert program.selections == 3  # one select-variant run per generation
        print(f"{name}: relative error vs eager by (batch, step):", {k: f"{v:.1e}" for k, v in errors.items()})
    finally:
        toma_export.remove(model)
    with torch.no_grad():
        assert rel(graph, model(**kw)[0]) > 1e-3  # it really merged

    # The re-exported reuse variant: model inputs and destinations share one symbolic batch.
    ep = program.exported_program
    user = set(ep.graph_signature.user_inputs)
    vals = [n.meta["val"] for n in ep.graph.nodes if n.op == "placeholder" and n.name in user]
    dests = vals[-len(program.groups) :]
    symbols = {str(v.shape[0]) for v in vals if isinstance(v, torch.Tensor) and v.ndim and isinstance(v.shape[0], torch.SymInt)}
    assert len(symbols) == 1 and all(str(d.shape[0]) in symbols for d in dests)
    kw = example_inputs(model, batch=3, height=h, width=w, seed=99)
    flat = program.flat_inputs(**kw)
    with torch.no_grad():
        program.reset()
        program(**kw)  # selects destinations at batch 3
        carried = list(program.schedule.carried.values())
        assert len(carried) == len(program.groups) and carried[0].shape[0] == 3
        ref = program.run_reuse(flat, carried)[0]
        out = ep.module()(*flat, *carried)[0]
    assert rel(out, ref) <= 1e-5


def test_dynamic_batch_needs_batch_2() -> None:
    model = load_model("flux-tiny")
    with pytest.raises(ToMAConfigError, match="batch >= 2"):
        toma_export.rewrite(model, example_inputs(model, batch=1, height=128, width=128), CFG, dynamic_batch=True)
    with pytest.raises(ToMAConfigError, match="--dynamic-batch needs --batch >= 2"):
        build_artifact(BuildRequest("sdxl-tiny", batch=1, dynamic_batch=True, out=Path("/nonexistent/x")), progress=False)


def test_eager_path_export_takes_the_dynamic_batch() -> None:
    """Non-graph-pass builds (here ratio 0: the plain model) export with the same dynamic batch."""
    model = load_model("flux-tiny")
    kw = example_inputs(model, batch=2, height=128, width=128)
    variants, groups, _ = _variants(model, kw, ToMAConfig(ratio=0.0), dynamic_batch=True)
    assert groups == 0 and set(variants) == {"single"}
    kw3 = example_inputs(model, batch=3, height=128, width=128, seed=5)
    with torch.no_grad():
        out = variants["single"].module()(**kw3)[0]
        assert (out - model(**kw3)[0]).abs().max().item() <= 1e-5


def _onnx_batch_dims(path: Path) -> dict[str, str | int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out: dict[str, str | int] = {}
    for v in list(model.graph.input) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        if dims:
            out[v.name] = dims[0].dim_param or dims[0].dim_value
    return out


def test_dynamic_batch_onnx_artifact_runs_batch_1_and_3(tmp_path: Path) -> None:
    out = tmp_path / "sdxl-dyn"
    argv = ["build", "sdxl-tiny", "--batch", "2", "--height", str(ART_SIZE), "--width", str(ART_SIZE),
            "--recompute-every", "2", "--dynamic-batch", "--out", str(out)]
    assert cli_main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    shapes = manifest["shapes"]
    assert shapes["dynamic_batch"] is True and shapes["batch"] == 2
    # sample, timestep (0-d), encoder_hidden_states, text_embeds, time_ids
    assert shapes["batch_dims"] == [0, None, 0, 0, 0]
    assert shapes["batch_max"] == 63  # diffusers' Upsample2D branches on batch >= 64 (export refines the range)

    # Dim 0 of every batched input and output is one symbolic ONNX dim, destinations included.
    for file in ("select.onnx", "reuse.onnx"):
        dims = _onnx_batch_dims(out / file)
        symbolic = {d for d in dims.values() if isinstance(d, str)}
        assert len(symbolic) == 1, (file, dims)
        assert sum(isinstance(d, str) for d in dims.values()) >= 5, (file, dims)

    ok, rows = verify_artifact(out, steps=2)  # at the built batch (2)
    assert ok, rows

    loaded = load_artifact(out)
    model = load_model("sdxl-tiny")
    config = ToMAConfig.from_dict(manifest["config"])
    toma_export.apply(model, config)
    errors = {}
    try:
        with torch.no_grad():
            for batch in (1, 3):
                toma_export.reset(model)
                schedule = StepSchedule(2)
                for step in range(2):  # select, reuse
                    kw = example_inputs(model, batch=batch, height=ART_SIZE, width=ART_SIZE, seed=100 * batch + step)
                    eager = model(**kw)[0]
                    got = loaded.runner(kw, schedule)
                    schedule.advance()
                    (dests,) = schedule.carried.values()
                    assert got.shape == eager.shape and dests.shape[0] == batch
                    errors[(batch, step)] = (got - eager).abs().max().item()
                    assert errors[(batch, step)] <= 1e-3, errors
    finally:
        toma_export.remove(model)
    assert loaded.runner.selections == 2
    print("max |engine - eager| by (batch, step):", errors)

    # Another resolution is still refused, and so are inputs that disagree on the batch.
    with pytest.raises(ShapeMismatchError, match=rf"any batch .*{ART_SIZE}x{ART_SIZE}.*--dynamic-batch"):
        loaded.runner.flatten(example_inputs(model, batch=2, height=64, width=ART_SIZE))
    kw = example_inputs(model, batch=3, height=ART_SIZE, width=ART_SIZE)
    kw["encoder_hidden_states"] = kw["encoder_hidden_states"][:2]
    with pytest.raises(ShapeMismatchError):
        loaded.runner.flatten(kw)
    with pytest.raises(ShapeMismatchError, match="1 to 63"):
        loaded.runner.flatten(example_inputs(model, batch=64, height=ART_SIZE, width=ART_SIZE))
