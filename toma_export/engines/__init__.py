"""Engines: ONNX export, ONNX Runtime, AOTInductor, TensorRT (``trt_engine``), torch-tensorrt, and the
artifact folders that hold them (build, load, verify, run).

Light on purpose (no torch import): the command line reads :data:`BACKENDS` to build its parser.
"""

from __future__ import annotations

#: Backends an artifact can be built for (``toma-export build --backend``).
BACKENDS: tuple[str, ...] = ("onnxruntime", "inductor", "tensorrt", "torch-tensorrt")
