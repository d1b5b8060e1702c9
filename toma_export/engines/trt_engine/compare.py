"""ONNX Runtime vs TensorRT on the same inputs, through polygraphy's Python API.

The TensorRT side builds an engine from ``MODEL.onnx`` with :func:`build_engine` (selection nodes
mapped to the ``toma::facility_location`` plugin) and runs it with polygraphy's ``TrtRunner``; the
ONNX Runtime side runs ``--reference`` (default: the same file) with ``OnnxrtRunner``. ONNX Runtime
cannot run the ``toma`` plugin node, so for a model exported with plugin selection pass the
standard-op export (unrolled selection) as ``--reference``. polygraphy's ``DataLoader`` makes
seeded random inputs, ``Comparator.compare_accuracy`` with ``CompareFunc.simple`` checks them.

Needs a GPU and TensorRT for the TensorRT side; fails fast with the reason otherwise.
The command line runs it as ``toma-export compare-trt`` (:mod:`toma_export.cli.trt`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from toma_export.engines.trt_engine._trt import require_cuda, require_tensorrt
from toma_export.engines.trt_engine.builder import BuildOptions, InputProfile, build_engine
from toma_export.errors import ToMAConfigError


@dataclasses.dataclass
class ComparisonResult:
    passed: bool
    max_abs: dict[str, float]
    max_rel: dict[str, float]
    report: Any  # polygraphy AccuracyResult

    def __bool__(self) -> bool:
        return self.passed


def compare_onnxruntime_tensorrt(
    onnx_path: str | Path,
    *,
    reference: str | Path | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    precision: str = "fp32",
    atol: float = 1e-3,
    rtol: float = 1e-3,
    iterations: int = 1,
    seed: int = 0,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> ComparisonResult:
    """Run both backends on ``iterations`` seeded random inputs; compare every output."""
    require_tensorrt()
    require_cuda()
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator, CompareFunc, DataLoader

    onnx_path = Path(onnx_path)
    ref_path = Path(reference) if reference is not None else onnx_path
    profiles = [{n: InputProfile.fixed(s) for n, s in shapes.items()}] if shapes else []
    plan = build_engine(onnx_path, options=BuildOptions(precision=precision, profiles=profiles))

    input_metadata = None
    if shapes:
        from polygraphy.common import TensorMetadata

        import onnx

        model = onnx.load(str(ref_path), load_external_data=False)
        elem = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
        input_metadata = TensorMetadata()
        for name, shape in shapes.items():
            if name not in elem:
                raise ToMAConfigError(f"--shape names {name!r}, which is not an input of {ref_path.name}")
            input_metadata.add(name, onnx.helper.tensor_dtype_to_np_dtype(elem[name]), tuple(shape))

    runners = [
        OnnxrtRunner(SessionFromOnnx(str(ref_path), providers=list(providers)), name="onnxruntime"),
        TrtRunner(EngineFromBytes(plan), name="tensorrt"),
    ]
    loader = DataLoader(seed=seed, iterations=iterations, input_metadata=input_metadata)
    results = Comparator.run(runners, data_loader=loader)
    accuracy = Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=atol, rtol=rtol))

    max_abs: dict[str, float] = {}
    max_rel: dict[str, float] = {}
    (_, ort_iters), (_, trt_iters) = list(results.items())[:2]
    for ort_out, trt_out in zip(ort_iters, trt_iters):
        for name in ort_out.keys():
            a = ort_out[name].astype("float64")
            b = trt_out[name].astype("float64")
            diff = abs(a - b)
            max_abs[name] = max(max_abs.get(name, 0.0), float(diff.max(initial=0.0)))
            denom = abs(a) + 1e-12
            max_rel[name] = max(max_rel.get(name, 0.0), float((diff / denom).max(initial=0.0)))
    return ComparisonResult(bool(accuracy), max_abs, max_rel, accuracy)

