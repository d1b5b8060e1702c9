"""TensorRT backend: fails fast here (no TensorRT, no GPU); GPU tests build, run and compare.

GPU tests need a CUDA GPU and TensorRT >= 10.8; they are skipped with that reason elsewhere.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import onnx
import pytest
import torch

from plugins import contract
from plugins.onnx_mapping import make_selection_model, selection_nodes, to_tensorrt_nodes
from toma_export.engines.trt_engine import cuda_and_tensorrt_available
from toma_export.errors import ToMAError


def _available() -> bool:
    return cuda_and_tensorrt_available()


def _tensorrt_library_present() -> bool:
    from plugins.tensorrt_plugin import TensorRTUnavailableError, import_tensorrt

    try:
        import_tensorrt()
    except TensorRTUnavailableError:
        return False
    return True


GPU_REASON = "needs a CUDA GPU and TensorRT >= 10.8"


# --- without TensorRT -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "module",
    [
        "plugins.contract",
        "plugins.onnx_mapping",
        "plugins.tensorrt_plugin",
        "toma_export.engines.trt_engine",
        "toma_export.engines.trt_engine.builder",
        "toma_export.engines.trt_engine.runtime",
        "toma_export.engines.trt_engine.compare",
        "toma_export.engines.torch_tensorrt",
    ],
)
def test_imports_without_tensorrt(module: str) -> None:
    importlib.import_module(module)


@pytest.mark.skipif(_tensorrt_library_present(), reason="the TensorRT library is installed")
def test_fails_fast_with_clear_message(tmp_path: Path) -> None:
    from plugins.tensorrt_plugin import TensorRTUnavailableError, register_plugin
    from toma_export.engines.trt_engine import TrtEngine, build_engine, compare_onnxruntime_tensorrt, require_tensorrt
    from toma_export.engines.torch_tensorrt import compile_program

    onnx_path = tmp_path / "sel.onnx"
    onnx.save(make_selection_model(), str(onnx_path))
    calls = [
        require_tensorrt,
        register_plugin,
        lambda: build_engine(onnx_path),
        lambda: TrtEngine(b"plan"),
        lambda: compare_onnxruntime_tensorrt(onnx_path),
        lambda: compile_program(None, [], "fp16"),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(TensorRTUnavailableError) as info:
            call()
        msg = str(info.value)
        assert isinstance(info.value, ToMAError)
        assert "TensorRT" in msg and "pip install tensorrt" in msg, msg
        try:
            import tensorrt  # noqa: F401

            stub_only = True
        except ImportError:
            stub_only = False
        if stub_only:
            assert "only type stubs" in msg


@pytest.mark.skipif(_available(), reason="TensorRT and a GPU are present")
def test_cli_compare_trt_fails_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from toma_export.cli.trt import register

    parser = argparse.ArgumentParser(prog="toma-export")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    onnx_path = tmp_path / "sel.onnx"
    onnx.save(make_selection_model(), str(onnx_path))
    args = parser.parse_args(["compare-trt", str(onnx_path), "--shape", "features:1x4x16x8", "--atol", "0"])
    assert args.shape == [("features", (1, 4, 16, 8))] and args.atol == 0.0
    with pytest.raises(ToMAError, match="TensorRT"):
        args.handler(args)


def test_build_options_validation() -> None:
    from toma_export.engines.trt_engine import BuildOptions, InputProfile
    from toma_export.errors import ToMAConfigError

    with pytest.raises(ToMAConfigError, match="precision"):
        BuildOptions(precision="int3")
    with pytest.raises(ToMAConfigError, match="optimisation level"):
        BuildOptions(optimization_level=9)
    with pytest.raises(ToMAConfigError, match="min <= opt <= max"):
        InputProfile((1, 4), (4, 4), (2, 4))
    assert InputProfile.fixed([2, 3]).opt == (2, 3)


# --- ONNX node mapping (no TensorRT needed) --------------------------------------------------------

def test_contract_names() -> None:
    assert contract.TRT_PLUGIN_ID == "toma::facility_location"
    assert (contract.ONNX_OP_TYPE, contract.ONNX_DOMAIN, contract.ONNX_ATTR_K) == ("FacilityLocation", "toma", "k")
    assert contract.ONNX_OUTPUT_ELEM_TYPE == onnx.TensorProto.INT32


def test_onnx_node_mapping() -> None:
    model = make_selection_model(k=6)
    onnx.checker.check_model(model)
    mapped, n = to_tensorrt_nodes(model)
    assert n == 1
    node = mapped.graph.node[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert node.op_type == contract.TRT_PLUGIN_NAME
    assert attrs == {"k": 6, "plugin_namespace": b"toma", "plugin_version": b"1", "aot": 1}
    assert model.graph.node[0].op_type == contract.ONNX_OP_TYPE  # the input model is not modified
    again, n2 = to_tensorrt_nodes(mapped, aot=False)
    assert n2 == 1 and {a.name: a.i for a in again.graph.node[0].attribute if a.name == "aot"} == {"aot": 0}
    assert len(selection_nodes(model)) == len(selection_nodes(mapped)) == 1


def test_onnx_node_mapping_rejects_bad_nodes() -> None:
    model = make_selection_model()
    del model.graph.node[0].attribute[:]
    with pytest.raises(ValueError, match="no int attribute 'k'"):
        to_tensorrt_nodes(model)


# --- GPU: build, run, compare ---------------------------------------------------------------------

def _tiles(b: int, t: int, s: int, c: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, s, c, generator=g)


@pytest.mark.gpu
@pytest.mark.skipif(not _available(), reason=GPU_REASON)
@pytest.mark.parametrize("aot", [True, False])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_build_and_run_selection_plugin(tmp_path: Path, aot: bool, precision: str) -> None:
    from toma_export.core.selection import facility_location
    from toma_export.engines.trt_engine import BuildOptions, InputProfile, TrtEngine, build_engine

    onnx_path = tmp_path / "sel.onnx"
    onnx.save(make_selection_model(tile_size=16, channels=32, k=8), str(onnx_path))
    cache = tmp_path / "timing.cache"
    profile = {"features": InputProfile((1, 1, 16, 32), (2, 64, 16, 32), (4, 256, 16, 32))}
    opts = BuildOptions(precision=precision, profiles=[profile], timing_cache=cache, plugin_aot=aot)
    plan = build_engine(onnx_path, tmp_path / "sel.plan", opts)
    assert (tmp_path / "sel.plan").read_bytes() == plan and cache.stat().st_size > 0
    engine = TrtEngine(plan, cuda_graph=True)
    x = _tiles(2, 64, 16, 32)
    (got,) = engine({"features": x.cuda()})
    assert got.dtype == torch.int32 and got.shape == (2, 64, 8)
    ref = facility_location(x, 8)
    assert (got.cpu().long() == ref).float().mean() > 0.95  # exact except at exact-tie steps
    (again,) = engine({"features": x.cuda()})  # CUDA-graph replay
    assert torch.equal(again, got)



@pytest.mark.gpu
@pytest.mark.skipif(not _available(), reason=GPU_REASON)
def test_engine_rejects_shapes_outside_profile(tmp_path: Path) -> None:
    from toma_export.engines.trt_engine import BuildOptions, InputProfile, TrtEngine, TrtShapeError, build_engine

    onnx_path = tmp_path / "sel.onnx"
    onnx.save(make_selection_model(tile_size=16, channels=8, k=4), str(onnx_path))
    plan = build_engine(onnx_path, options=BuildOptions(precision="fp32", profiles=[{"features": InputProfile.fixed((1, 4, 16, 8))}]))
    with pytest.raises(TrtShapeError, match="outside every optimisation profile"):
        TrtEngine(plan)({"features": torch.zeros(2, 4, 16, 8, device="cuda")})


@pytest.mark.gpu
@pytest.mark.skipif(not _available(), reason=GPU_REASON)
def test_onnxruntime_vs_tensorrt_agreement(tmp_path: Path) -> None:
    """Standard-op model (no plugin): polygraphy runs ONNX Runtime and TensorRT and compares."""
    from onnx import TensorProto, helper

    from toma_export.engines.trt_engine import compare_onnxruntime_tensorrt

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16, 16])
    g = helper.make_graph(
        [
            helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["x", "xt"], ["gram"]),
            helper.make_node("Softmax", ["gram"], ["y"], axis=-1),
        ],
        "gram_softmax",
        [x],
        [y],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    res = compare_onnxruntime_tensorrt(path, precision="fp32", atol=1e-4, rtol=1e-3, iterations=2)
    assert res, res.max_abs


@pytest.mark.gpu
@pytest.mark.skipif(not _available(), reason=GPU_REASON)
def test_plugin_is_registered() -> None:
    from plugins.tensorrt_plugin import plugin_creator_registered, register_plugin

    register_plugin()
    register_plugin()  # idempotent
    assert plugin_creator_registered()
