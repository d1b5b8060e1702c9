"""The rewritten ExportedPrograms: run, lower to plain ATen, compile (inductor, AOTInductor), inspect."""

from __future__ import annotations

import argparse

import pytest
import torch

import toma_export
from toma_export.graph import decompositions, lower
from toma_export.cli.inspect import register
from toma_export.models import load_model
from toma_export.models.inputs import example_inputs

FORBIDDEN = ("aten.sort", "aten.argsort", "aten.scatter", "aten.nonzero", "aten._local_scalar_dense", "aten.item")


@pytest.fixture(scope="module")
def flux():
    torch.set_num_threads(1)
    model = load_model("flux-tiny")
    kw = example_inputs(model, batch=1, height=128, width=128)
    program = toma_export.rewrite(model, kw, toma_export.ToMAConfig(ratio=0.5))
    flat = program.flat_inputs(**kw)
    with torch.no_grad():
        sel = program.run_select(flat)
        dests = list(sel[-len(program.groups):])
        ref = program.run_reuse(flat, dests)[0]
    return program, flat, dests, sel, ref


def _toma_targets(ep: torch.export.ExportedProgram) -> set[str]:
    return {str(n.target) for n in ep.graph.nodes if "toma" in str(n.target)}


def test_exported_programs_run(flux) -> None:
    program, flat, dests, sel, ref = flux
    ep = program.exported_program
    assert _toma_targets(ep) >= {"toma.merge.default", "toma.unmerge.default", "toma.gather_positions.default"}
    assert "toma.facility_location.default" not in _toma_targets(ep)
    with torch.no_grad():
        assert torch.equal(ep.module()(*flat, *dests)[0], ref)
        out = program.select_exported_program.module()(*flat)
    assert torch.equal(out[0], sel[0]) and torch.equal(out[-1], dests[-1])
    # weights keep the model's names
    assert "transformer_blocks.0.attn.to_q.weight" in ep.state_dict


def test_decompositions_lower_to_plain_aten(flux) -> None:
    program, flat, dests, sel, ref = flux
    assert set(decompositions()) == {
        getattr(torch.ops.toma, n).default
        for n in ("facility_location", "merge_weights", "merge", "unmerge", "merged_positions", "gather_positions")
        + ("fused_merge", "tile_merge", "tile_unmerge")  # the eager CUDA path's ops, for models compiled from it
    }
    low_sel = lower(program.select_exported_program)
    assert not _toma_targets(low_sel)
    names = {str(n.target) for n in low_sel.graph.nodes}
    assert not [t for t in names if t.startswith(FORBIDDEN)]
    assert sum("argmax" in str(n.target) for n in low_sel.graph.nodes) == program.groups[0].k  # unrolled picks
    with torch.no_grad():
        out = low_sel.module()(*flat)
        assert torch.equal(out[-1], dests[-1]) and (out[0] - sel[0]).abs().max() <= 1e-6
        core = lower(program.exported_program, core_aten=True)
        got = core.module()(*flat, *dests)[0]
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-4
    kept = lower(program.select_exported_program, include_selection=False)
    assert _toma_targets(kept) == {"toma.facility_location.default"}


def test_inspect_cli(capsys) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["inspect", "flux-tiny", "--ratio", "0.5", "--height", "128", "--width", "192"])
    assert args.handler(args) == 0
    text = capsys.readouterr().out
    assert "6 site(s) found, 6 merged, in 1 group(s)" in text and "8x12 tokens" in text and "FLOPs" in text
    from toma_export.cli import main

    assert main(["inspect", "no-such-model"]) == 2  # the CLI turns the ToMAError into exit 2 and a message
    assert "neither an embedded model" in capsys.readouterr().err


@pytest.mark.slow
def test_torch_compile_inductor(flux) -> None:
    program, flat, dests, _, ref = flux
    compiled = torch.compile(program.exported_program.module())
    with torch.no_grad():
        out = compiled(*flat, *dests)[0]
    assert ((out - ref).abs().max() / ref.abs().max()).item() <= 1e-4


@pytest.mark.slow
def test_aot_inductor(flux, tmp_path) -> None:
    program, flat, dests, _, ref = flux
    path = torch._inductor.aoti_compile_and_package(program.exported_program, package_path=str(tmp_path / "toma.pt2"))
    runner = torch._inductor.aoti_load_package(path)
    with torch.no_grad():
        out = runner(*flat, *dests)[0]
    assert ((out - ref).abs().max() / ref.abs().max()).item() <= 1e-4


class _Int32Lookup(torch.nn.Module):
    """A table looked up with int32 positions computed from an input (Z-Image's RoPE): not constant."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", torch.randn(64, 8))

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return x + self.table[ids.to(torch.int32)]


def test_int32_index_lookups_export_to_a_loadable_onnx_graph(tmp_path) -> None:
    """ONNX GatherND takes int64 indices only; the exporter keeps torch's int32, so without the cast
    ONNX Runtime refused the graph (z-image-d2 at 1024², too large for constant folding)."""
    import onnxruntime as ort

    from toma_export.engines.onnx_export import export_onnx

    m = _Int32Lookup().eval()
    kw = dict(x=torch.randn(5, 8), ids=torch.tensor([3, 1, 60, 2, 0]))
    path = export_onnx(torch.export.export(m, (), kw), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {k: v.numpy() for k, v in kw.items()})[0]
    assert torch.equal(torch.from_numpy(out), m(**kw))
