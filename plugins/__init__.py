"""Selection kernels and their plugin wrappers (Triton kernel, TensorRT plugin, ONNX Runtime op).

Nothing here imports TensorRT or needs a GPU at import time: the TensorRT pieces load lazily
and fail with a message naming what is missing.

Import rule: ``toma_export`` may import ``plugins``; ``plugins`` imports only the leaf modules
``toma_export.core`` and ``toma_export.errors`` (never the engines, graph pass or CLI), so the
dependency runs one way. ``tests/test_layout.py`` checks it.
"""
