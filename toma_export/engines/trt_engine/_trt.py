"""Fail-fast access to TensorRT and CUDA for the TensorRT engine backend.

Import rule between the two top-level packages: ``toma_export`` may import ``plugins``; ``plugins``
imports only the leaf modules ``toma_export.core`` and ``toma_export.errors`` (``tests/test_layout.py``
checks it). The TensorRT import helper therefore has its one home in the lower layer,
:mod:`plugins.tensorrt_plugin` (:class:`TensorRTUnavailableError`, ``import_tensorrt``), which the
plugin registration needs too; this module re-exports it as :func:`require_tensorrt` and adds the
CUDA check the engine builder and runtime need.
"""

from __future__ import annotations

from plugins.tensorrt_plugin import TensorRTUnavailableError
from plugins.tensorrt_plugin import import_tensorrt as require_tensorrt

__all__ = ["TensorRTUnavailableError", "cuda_and_tensorrt_available", "require_cuda", "require_tensorrt"]


def require_cuda() -> None:
    """Raise :class:`TensorRTUnavailableError` unless torch sees a CUDA device."""
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
