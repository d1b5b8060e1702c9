"""TensorRT backend: engine builder, runtime, ONNX Runtime-vs-TensorRT comparison.

Named ``trt_engine`` (not ``tensorrt``) so it never shadows the real ``tensorrt`` library. Imports
without TensorRT; every entry point calls :func:`require_tensorrt` first and raises
:class:`TensorRTUnavailableError` (a :class:`toma_export.errors.ToMAError`) naming what is missing
and how to install it. Nothing here is verified on a GPU yet (see the README).
"""

from toma_export.engines.trt_engine._trt import (
    TensorRTUnavailableError,
    cuda_and_tensorrt_available,
    require_cuda,
    require_tensorrt,
)
from toma_export.engines.trt_engine.builder import (
    BuildOptions,
    EngineBuildError,
    InputProfile,
    build_engine,
    refit_engine,
)
from toma_export.engines.trt_engine.compare import ComparisonResult, compare_onnxruntime_tensorrt
from toma_export.engines.trt_engine.runtime import TrtEngine, TrtShapeError

__all__ = [
    "BuildOptions",
    "ComparisonResult",
    "EngineBuildError",
    "InputProfile",
    "TensorRTUnavailableError",
    "TrtEngine",
    "TrtShapeError",
    "build_engine",
    "compare_onnxruntime_tensorrt",
    "cuda_and_tensorrt_available",
    "refit_engine",
    "require_cuda",
    "require_tensorrt",
]
