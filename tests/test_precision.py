"""fp16 / bf16 artifacts: built in that dtype, verified against eager ToMA in the same dtype.

ONNX Runtime's CPU provider runs the fp16 graphs as exported (after the exporter's missing Concat
promotion cast, ``onnx_export.promote_mixed_dtypes``). bf16 graphs do not load as exported (opset 18
Conv admits no bf16), so every op computes in fp32 between bf16 casts (``bf16_compute_in_fp32``).
Tolerances: ``toma_export.vocabulary.VERIFY_TOLERANCES``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from toma_export.engines.build import BuildRequest, build_artifact
from toma_export.engines.load import load_artifact
from toma_export.engines.verify import verify_artifact
from toma_export.vocabulary import VERIFY_TOLERANCES

SIZE = 128


def test_bf16_ops_compute_in_fp32_and_bind(tmp_path: Path) -> None:
    """A bf16 Conv graph: refused by ONNX as is, runs after the rewrite, equal to torch's bf16 conv."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from toma_export.engines.onnx_export import bf16_compute_in_fp32
    from toma_export.engines.onnxruntime import OrtEngine

    w = torch.randn(4, 3, 3, 3).to(torch.bfloat16)
    init = numpy_helper.from_array(w.float().numpy(), "w")
    init = helper.make_tensor("w", TensorProto.BFLOAT16, list(w.shape), w.view(torch.int16).numpy().view("uint16").tobytes(), raw=True)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [1, 4, 8, 8])], [init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "conv.onnx"
    onnx.save(bf16_compute_in_fp32(model), str(path))
    x = torch.randn(1, 3, 8, 8).to(torch.bfloat16)
    (y,) = OrtEngine(path)({"x": x})
    assert y.dtype == torch.bfloat16
    ref = torch.nn.functional.conv2d(x, w, padding=1)
    assert (y.float() - ref.float()).abs().max().item() <= 2 ** -7 * ref.float().abs().max().item()


@pytest.mark.parametrize("name, precision", [
    pytest.param("flux-tiny", "fp16"),
    pytest.param("flux-tiny", "bf16"),
    pytest.param("sdxl-tiny", "fp16", marks=pytest.mark.slow),
    pytest.param("sdxl-tiny", "bf16", marks=pytest.mark.slow),
])
def test_half_precision_artifact_verifies_against_same_dtype_eager(name: str, precision: str, tmp_path: Path) -> None:
    out = tmp_path / "art"
    build_artifact(BuildRequest(name, batch=1, height=SIZE, width=SIZE, out=out, precision=precision,
                                recompute_every=2), progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["precision"] == precision
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    assert str(dtype).removeprefix("torch.") in manifest["extra"]["input_dtypes"]
    ok, rows = verify_artifact(out, steps=3)
    assert ok, rows
    assert all(r["tol"] == VERIFY_TOLERANCES[precision] for r in rows)
    assert {r["variant"] for r in rows} == {"select", "reuse"}
    # ToMA is still told apart from the unmerged model at this tolerance
    assert max(r["max_vs_unmerged"] for r in rows) > VERIFY_TOLERANCES[precision]
    # fp32 inputs are converted to the artifact's dtype at the runner's boundary
    loaded = load_artifact(out)
    from toma_export.models.inputs import example_inputs
    from toma_export.models.registry import load_model
    from toma_export.schedule import StepSchedule

    kw = example_inputs(load_model(name), batch=1, height=SIZE, width=SIZE)
    assert loaded.runner(kw, StepSchedule(2)).dtype == dtype
