"""The shape both graph passes share (``graph/program_base.py``): torch's ``PassBase`` (requires ->
call -> ensures) making a ``GraphProgram``. ToMA's merge pass and ToDo's key/value pass both produce
the base type from one capture, leave the captured graph as captured, and refuse a graph they cannot
rewrite (requires) or a rewrite that changes what the model computes (ensures) with a clear error.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import GraphModule
from torch.fx.passes.infra.pass_base import PassBase, PassResult

import toma_export
from toma_export.errors import UnsupportedModelError
from toma_export.graph import GraphProgram, PassCheckError, ToMAPass, ToMAProgram, capture
from toma_export.graph.fx_util import copy_graph_module, fake_mode_of, insert_call
from toma_export.graph.kv_downsample import KVPass, KVProgram

H = W = 8
N = H * W
C = 16

pytestmark = pytest.mark.usefixtures("one_thread_quiet_fakes")


class SelfAttention(nn.Module):
    """Norm -> Q/K/V -> SDPA -> projection -> residual over an ``H x W`` grid (ids give the grid)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(C)
        self.q, self.k, self.v, self.out = (nn.Linear(C, C) for _ in range(4))

    def forward(self, x: torch.Tensor, img_ids: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        h = self.norm(x)
        q, k, v = (lin(h).view(b, s, 2, C // 2).transpose(1, 2) for lin in (self.q, self.k, self.v))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, C)
        return x + self.out(o)


def _setup() -> tuple[nn.Module, dict[str, Any]]:
    torch.manual_seed(0)
    kw = dict(x=torch.randn(2, N, C), img_ids=torch.cartesian_prod(torch.arange(H), torch.arange(W)).float())
    return SelfAttention().eval(), kw


TOMA = toma_export.ToMAConfig(ratio=0.5)
TODO = toma_export.ToMAConfig(ratio=0.5, method="todo")
PASSES = [(ToMAPass, TOMA, ToMAProgram), (KVPass, TODO, KVProgram)]
IDS = ["toma", "todo-kv"]


@pytest.mark.parametrize(("pass_type", "config", "program_type"), PASSES, ids=IDS)
def test_both_passes_are_torch_passes_making_the_base_program(pass_type: Any, config: Any, program_type: Any) -> None:
    model, kw = _setup()
    captured = capture(model, kw)
    before = [n.format_node() for n in captured.ep.graph.nodes]
    p = pass_type(captured, config)
    assert isinstance(p, PassBase)
    result = p(captured.ep.graph_module)
    assert isinstance(result, PassResult) and result.modified
    program = result.program
    assert isinstance(program, GraphProgram) and isinstance(program, program_type)
    assert result.graph_module is program.graph_module is not captured.ep.graph_module
    assert [s.kind for s in program.sites] == ["attn"] and program.summary()
    assert [n.format_node() for n in captured.ep.graph.nodes] == before  # the capture stays as captured
    # The public entry point takes the same pass; the program runs like the model and changes its output.
    via_rewrite = toma_export.rewrite(model, kw, config)
    assert type(via_rewrite) is program_type
    with torch.no_grad():
        out, ref = via_rewrite(**kw), model(**kw)
    assert out.shape == ref.shape and torch.isfinite(out).all() and (out - ref).abs().max().item() > 1e-3
    # Nothing to do: not modified, and the program runs the captured graph itself.
    idle = pass_type(captured, toma_export.ToMAConfig(ratio=0.0, method=config.method))(captured.ep.graph_module)
    assert not idle.modified and idle.program.graph_module is captured.ep.graph_module and not idle.program.sites


@pytest.mark.parametrize(("pass_type", "config", "program_type"), PASSES, ids=IDS)
def test_requires_refuses_a_graph_that_is_not_the_capture(pass_type: Any, config: Any, program_type: Any) -> None:
    model, kw = _setup()
    captured = capture(model, kw)
    p = pass_type(captured, config)
    traced = torch.fx.symbolic_trace(model)  # no fake values: not a torch.export capture
    with pytest.raises(UnsupportedModelError, match=r"no fake tensors .*captured by torch.export.*toma_export.graph.capture"):
        p(traced)
    other = capture(model, kw).ep.graph_module  # well formed, but not the capture the pass was made with
    with pytest.raises(PassCheckError, match=r"rewrites the graph module of the capture it was made with"):
        p(other)


def _truncate_output(gm: GraphModule) -> None:
    """Make ``gm`` return only the first half of its tokens (a rewrite that changed the model's output)."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    first = out.args[0][0]
    half = insert_call(gm.graph, fake_mode_of(gm), out, torch.ops.aten.slice.Tensor, (first, 1, 0, N // 2))
    out.args = ((half, *out.args[0][1:]),)
    gm.recompile()


def _drop_a_fake_value(gm: GraphModule) -> None:
    node = next(n for n in gm.graph.nodes if n.op == "call_function")
    del node.meta["val"]


@pytest.mark.parametrize(("pass_type", "config", "program_type"), PASSES, ids=IDS)
@pytest.mark.parametrize(("corrupt", "message"), [
    (_truncate_output, r"changes what the model returns \(output 0 \[2, 32, 16\] float32 where the capture has \[2, 64, 16\] float32\)"),
    (_drop_a_fake_value, r"has nodes without a fake value \(meta\['val'\]\)"),
], ids=["output-shape", "no-fake-value"])
def test_ensures_refuses_a_rewrite_that_breaks_the_model(
    pass_type: Any, config: Any, program_type: Any, corrupt: Any, message: str
) -> None:
    model, kw = _setup()
    captured = capture(model, kw)
    p = pass_type(captured, config)
    good = p(captured.ep.graph_module).program
    assert len(good.variants()) == (2 if program_type is ToMAProgram else 1)  # select + reuse, or the one graph
    for gm in good.variants():
        p.ensures(gm)  # a real rewrite passes: the model's inputs first, its outputs, then only destinations
    bad, _ = copy_graph_module(good.graph_module)
    corrupt(bad)
    with pytest.raises(PassCheckError, match=message) as e:
        p.ensures(bad)
    assert f"the {p.name} produced a graph that" in str(e.value) and "toma-export inspect" in str(e.value)

    class Broken(pass_type):  # type: ignore[misc, valid-type]
        """The pass with a faulty last step: calling it must run ensures on what it made."""

        def call(self, graph_module: GraphModule) -> Any:
            result = super().call(graph_module)
            corrupt(result.program.graph_module)
            return result

    with pytest.raises(PassCheckError, match=message):
        Broken(captured, config)(captured.ep.graph_module)
