"""Fail-fast access to TensorRT and CUDA for the TensorRT backend."""

from __future__ import annotations

from types import ModuleType

from plugins.tensorrt_plugin import TensorRTUnavailableError, import_tensorrt

__all__ = ["TensorRTUnavailableError", "cuda_and_tensorrt_available", "require_cuda", "require_tensorrt"]


def require_tensorrt() -> ModuleType:
    """The ``tensorrt`` module; raises :class:`TensorRTUnavailableError` naming what is missing and the fix."""
    return import_tensorrt()


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailableError(
            "the TensorRT backend needs an NVIDIA GPU with a CUDA build of torch; "
            f"torch {torch.__version__} sees no CUDA device here. Use --backend onnxruntime on this machine."
        )


def cuda_and_tensorrt_available() -> bool:
    try:
        require_tensorrt()
        require_cuda()
    except TensorRTUnavailableError:
        return False
    return True
