"""TensorRT backend: engine builder, runtime, ONNX Runtime-vs-TensorRT comparison.

Imports without TensorRT; every entry point calls :func:`require_tensorrt` first and raises
:class:`TensorRTUnavailableError` (a :class:`toma_export.errors.ToMAError`) naming what is missing
and how to install it. Nothing here is verified on a GPU yet (see the README).
"""

from toma_export.engines.tensorrt._trt import (
    TensorRTUnavailableError,
    cuda_and_tensorrt_available,
    require_cuda,
    require_tensorrt,
)
from toma_export.engines.tensorrt.builder import (
    PRECISIONS,
    BuildOptions,
    EngineBuildError,
    InputProfile,
    build_engine,
    refit_engine,
)
from toma_export.engines.tensorrt.compare import compare_onnxruntime_tensorrt, register
from toma_export.engines.tensorrt.runtime import TrtEngine, TrtShapeError

__all__ = [
    "PRECISIONS",
    "BuildOptions",
    "EngineBuildError",
    "InputProfile",
    "TensorRTUnavailableError",
    "TrtEngine",
    "TrtShapeError",
    "build_engine",
    "compare_onnxruntime_tensorrt",
    "cuda_and_tensorrt_available",
    "refit_engine",
    "register",
    "require_cuda",
    "require_tensorrt",
]
