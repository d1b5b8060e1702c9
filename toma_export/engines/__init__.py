"""Engines: ONNX export, ONNX Runtime, AOTInductor, TensorRT (``trt_engine``), torch-tensorrt, and the
artifact folders that hold them (build, load, verify, run).

Light on purpose (no torch import): :data:`BACKENDS` is :data:`toma_export.vocabulary.ENGINE_BACKENDS`.
"""

from __future__ import annotations

from toma_export.vocabulary import ENGINE_BACKENDS as BACKENDS

__all__ = ["BACKENDS"]
