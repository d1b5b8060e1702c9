"""Graph fixes applied before ONNX export, each for a torch construct the exporter lowers to a graph
ONNX Runtime cannot load (found on PixArt, HunyuanVideo and Allegro): equal outputs to torch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from toma_export.engines.onnx_export import bool_selects_as_logic, drop_noop_squeezes, export_onnx
from toma_export.engines.onnxruntime import OrtEngine
from toma_export.errors import ToMAError


class _NoopSqueeze(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 2).squeeze(1).squeeze(0) + 1  # dim 1 has size 8: a no-op in torch; dim 0 has size 1


class _BoolMasks(torch.nn.Module):
    def forward(self, x: torch.Tensor, keep: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        a = keep.masked_fill(pad, False)
        b = keep.masked_fill(pad[:, :1], True)  # broadcast mask
        c = torch.where(pad, a, b)
        return x * a + 2 * x * b - x * c


def _run(model: torch.nn.Module, args: tuple[torch.Tensor, ...], tmp_path: Path) -> tuple[torch.Tensor, int]:
    ep = torch.export.export(model, args)
    fixed = drop_noop_squeezes(ep) + bool_selects_as_logic(ep)  # counted here on a copy of the graph
    engine = OrtEngine(export_onnx(torch.export.export(model, args), tmp_path / "m.onnx"))
    return engine(dict(zip(engine.input_names, args)))[0], fixed


def test_noop_squeeze_is_dropped_and_the_real_one_kept(tmp_path: Path) -> None:
    x = torch.randn(1, 8, 4)
    out, fixed = _run(_NoopSqueeze(), (x,), tmp_path)
    assert fixed == 1  # only the squeeze of the size-8 dim
    torch.testing.assert_close(out, _NoopSqueeze()(x))


def test_boolean_masked_fill_and_where_run_on_onnxruntime(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, generator=g)
    keep, pad = torch.rand(2, 6, generator=g) > 0.3, torch.rand(2, 6, generator=g) > 0.5
    out, fixed = _run(_BoolMasks(), (x, keep, pad), tmp_path)
    assert fixed == 3
    torch.testing.assert_close(out, _BoolMasks()(x, keep, pad))


def test_an_exporter_failure_is_one_toma_error_naming_the_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.onnx raises its own ConversionError around the real cause (AnyFlow, WanAnimate): the user gets
    a ToMAError with both and the way out, never the raw exception."""

    def failing_export(*args: object, **kwargs: object) -> None:
        try:
            raise NotImplementedError("no ONNX lowering for aten::some_op")
        except NotImplementedError as cause:
            raise RuntimeError("\x1b[96mFailed to convert the exported program to an ONNX model.\x1b[0m\nmore") from cause

    monkeypatch.setattr(torch.onnx, "export", failing_export)
    ep = torch.export.export(_NoopSqueeze(), (torch.randn(1, 8, 4),))
    with pytest.raises(ToMAError) as info:
        export_onnx(ep, tmp_path / "m.onnx")
    msg = str(info.value)
    assert "Failed to convert the exported program to an ONNX model." in msg and "\x1b" not in msg
    assert "NotImplementedError: no ONNX lowering for aten::some_op" in msg and "--backend inductor" in msg
    assert not (tmp_path / "m.onnx").exists()
