"""Complex values to real pairs before ONNX export (``toma_export.engines.complex_lowering``).

Synthetic RoPE blocks in the styles diffusers uses (a complex table as a persistent or non-persistent
buffer, split per axis, rows gathered, ``view_as_complex(x) * freqs``), checked exactly against torch,
through ONNX Runtime, and for the refusals. Qwen-Image end to end is in ``tests/test_architectures.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from toma_export.engines.complex_lowering import has_complex, lower_complex
from toma_export.errors import ToMAError


class ComplexRope(torch.nn.Module):
    """``x`` (B, S, H, D) rotated by a complex table: split into 3 axes, re-joined, rows gathered by
    ``rows`` (as the pass gathers RoPE rows for destinations), conjugated for half the heads."""

    def __init__(self, persistent: bool) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        angles = torch.rand(32, 8, generator=g) * 6.0
        self.register_buffer("freqs", torch.polar(torch.ones_like(angles), angles), persistent=persistent)
        self.proj = torch.nn.Linear(16, 16)

    def forward(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        a, b, c = self.freqs.split([2, 3, 3], dim=1)
        table = torch.cat([a, b, c], dim=-1)[:16]  # (S, D/2)
        table = table.unsqueeze(0).expand(x.shape[0], -1, -1)
        table = torch.gather(table, 1, rows.unsqueeze(-1).expand(-1, -1, table.shape[-1]))  # (B, S', D/2)
        z = torch.view_as_complex(self.proj(x).reshape(*x.shape[:-1], -1, 2))  # (B, S', H, D/2)
        rotated = z * table.unsqueeze(2)
        rotated = torch.cat([rotated[:, :, :1], rotated[:, :, 1:].conj() * 0.5], dim=2)
        return torch.view_as_real(rotated).flatten(3) + x


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 6, 2, 16, generator=g), torch.randint(0, 16, (2, 6), generator=g)


@pytest.mark.parametrize("persistent", [True, False])
def test_lowered_program_equals_the_complex_one(persistent: bool) -> None:
    model = ComplexRope(persistent).eval()
    ep = torch.export.export(model, _inputs())
    want = ep.module()(*_inputs(1))
    lowered = ep.run_decompositions({})
    assert has_complex(lowered)
    assert lower_complex(lowered) > 0
    assert not has_complex(lowered)
    assert torch.equal(model.freqs, ep.constants.get("freqs", ep.state_dict.get("freqs")))  # source untouched
    assert torch.equal(lowered.module()(*_inputs(1)), want)


def test_onnxruntime_runs_the_lowered_program(tmp_path: Path) -> None:
    from toma_export.engines.onnx_export import export_onnx
    from toma_export.engines.onnxruntime import OrtEngine

    model = ComplexRope(persistent=False).eval()
    ep = torch.export.export(model, _inputs())
    engine = OrtEngine(export_onnx(ep, tmp_path / "rope.onnx"))
    for seed in range(2):
        x, rows = _inputs(seed)
        (got,) = engine(dict(zip(engine.input_names, [x, rows])))
        assert (got - model(x, rows)).abs().max().item() <= 1e-5


def test_complex_user_input_is_refused() -> None:
    class TakesComplex(torch.nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return torch.view_as_real(z * 2)

    ep = torch.export.export(TakesComplex(), (torch.randn(3, dtype=torch.complex64),))
    with pytest.raises(ToMAError, match="input 'z' is complex; pass its real view"):
        lower_complex(ep)


def test_an_op_without_a_lowering_is_named() -> None:
    class Exp(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("z", torch.polar(torch.ones(4), torch.arange(4.0)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.view_as_real(torch.exp(self.z)).sum(-1) + x

    ep = torch.export.export(Exp(), (torch.randn(4),))
    with pytest.raises(ToMAError, match=r"complex-valued aten\.exp\.default has no real-pair lowering"):
        lower_complex(ep)


def test_a_real_program_is_left_alone() -> None:
    ep = torch.export.export(torch.nn.Linear(4, 4), (torch.randn(2, 4),))
    before = str(ep.graph)
    assert lower_complex(ep) == 0 and str(ep.graph) == before
