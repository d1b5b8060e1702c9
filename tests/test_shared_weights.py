"""ONNX Runtime sessions sharing one copy of equal weights (``engines/shared_weights.py``)."""

from __future__ import annotations

import gc
from pathlib import Path

import torch

from toma_export.engines.onnx_export import export_onnx
from toma_export.engines.onnxruntime import OrtEngine
from toma_export.engines.shared_weights import WeightPool


class _Mlp(torch.nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.up, self.down = torch.nn.Linear(64, 128), torch.nn.Linear(128, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.gelu(self.up(x)))


class _Wrapped(torch.nn.Module):
    """The same weights under other parameter names (``inner.up.weight``...)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def _export(model: torch.nn.Module, folder: Path, x: torch.Tensor) -> Path:
    ep = torch.export.export(model.eval(), (x,))
    return export_onnx(ep, folder / "model.onnx", external_data=True)


def test_sessions_of_equal_weights_share_one_copy_and_differing_ones_do_not(tmp_path: Path) -> None:
    x = torch.randn(2, 16, 64)
    a, b = _Mlp(0), _Mlp(1)  # same initializer names, different values
    path_a1, path_a2 = _export(a, tmp_path / "a1", x), _export(a, tmp_path / "a2", x)
    path_b = _export(b, tmp_path / "b", x)
    pool = WeightPool()
    first, second = OrtEngine(path_a1, weights=pool), OrtEngine(path_a2, weights=pool)
    shared = len(pool)
    assert shared >= 2  # both weight matrices are external initializers
    assert [id(e) for e in first._shared] == [id(e) for e in second._shared]  # one copy, not two
    renamed = OrtEngine(_export(_Wrapped(a), tmp_path / "c", x), weights=pool)
    assert len(pool) == shared  # other names, equal bytes: the same copy (exports rename folded constants)
    assert {id(e) for e in renamed._shared} <= {id(e) for e in first._shared}
    other = OrtEngine(path_b, weights=pool)
    assert len(pool) == shared + len(other._shared)  # equal names, other bytes: never confused
    with torch.inference_mode():
        ref_a, ref_b = a(x), b(x)
    alone = OrtEngine(path_a1)({"x": x})[0]
    for engine, ref in ((first, ref_a), (second, ref_a), (renamed, ref_a), (other, ref_b)):
        out = engine({engine.input_names[0]: x})[0]
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first({first.input_names[0]: x})[0], alone, atol=1e-6, rtol=1e-6)
    del first, second, renamed, other, engine
    gc.collect()
    assert len(pool) == 0  # entries live only as long as a session that uses them
