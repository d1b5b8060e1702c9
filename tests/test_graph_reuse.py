"""Destination reuse is real: selection runs only on scheduled steps, and only in the select variant."""

from __future__ import annotations

import pytest
import torch

import toma_export
import toma_export.ops as ops
from toma_export.models import load_model
from toma_export.models.inputs import example_inputs


@pytest.fixture(scope="module")
def flux():
    torch.set_num_threads(1)
    model = load_model("flux-tiny")
    kw = example_inputs(model, batch=2, height=128, width=192)
    return model, kw, toma_export.rewrite(model, kw, toma_export.ToMAConfig(ratio=0.5, recompute_every=3))


def _count_selection(monkeypatch) -> list[int]:
    calls: list[int] = []
    kernel = ops._facility_location

    def counting(features: torch.Tensor, k: int) -> torch.Tensor:
        calls.append(k)
        return kernel(features, k)

    monkeypatch.setattr(ops, "_facility_location", counting)
    return calls


def test_selection_runs_only_on_scheduled_steps(flux, monkeypatch) -> None:
    model, kw, program = flux
    calls = _count_selection(monkeypatch)
    program.reset()
    per_step = []
    with torch.no_grad():
        for step in range(7):
            before = len(calls)
            program(**example_inputs(model, batch=2, height=128, width=192, seed=step))
            per_step.append(len(calls) - before)
    groups = len(program.groups)
    assert per_step == [groups if s % 3 == 0 else 0 for s in range(7)]  # steps 0, 3, 6
    program.reset()
    with torch.no_grad():
        program(**kw)
    assert len(calls) == 3 * groups + groups  # a new generation selects at once


def test_reuse_variant_has_no_selection(flux) -> None:
    _, _, program = flux
    targets = {n.target for n in program.graph_module.graph.nodes}
    assert torch.ops.toma.facility_location.default not in targets
    assert torch.ops.toma.merge.default in targets and torch.ops.toma.unmerge.default in targets
    sel = {n.target for n in program.select_graph_module.graph.nodes}
    assert torch.ops.toma.facility_location.default in sel
    dest_inputs = [n for n in program.graph_module.graph.nodes if n.op == "placeholder" and n.name.startswith("toma_dest")]
    assert len(dest_inputs) == len(program.groups)


def test_select_then_reuse_is_the_same_computation(flux) -> None:
    _, kw, program = flux
    flat = program.flat_inputs(**kw)
    with torch.no_grad():
        out = program.run_select(flat)
        n = len(program.groups)
        dests = list(out[-n:])
        again = program.run_reuse(flat, dests)
    assert all(torch.equal(a, b) for a, b in zip(out[:-n], again))
    g = program.groups[0]
    assert dests[0].shape == (2, g.layout.num_tiles, g.k) and dests[0].dtype == torch.long
    # destinations are k distinct tile slots
    assert (dests[0].sort(-1).values.diff(dim=-1) > 0).all()


def test_destinations_matter(flux) -> None:
    _, kw, program = flux
    flat = program.flat_inputs(**kw)
    with torch.no_grad():
        out = program.run_select(flat)
        other = program.run_reuse(flat, program.example_destinations())
    assert not torch.allclose(out[0], other[0])


def test_selection_program_matches_core(flux) -> None:
    _, _, program = flux
    g = program.groups[0]
    feats = torch.randn(2, g.layout.num_tokens, 8)
    from toma_export.core.selection import facility_location

    assert torch.equal(program.select(0, feats), facility_location(g.layout.split(feats)[0], g.k))
