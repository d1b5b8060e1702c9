"""Production serving on Triton Inference Server: ``toma-export serve`` and ``export-triton``.

- :mod:`~toma_export.serving.contract`: model ``toma_pipeline``'s inputs, outputs and limits; request parsing.
- :mod:`~toma_export.serving.pipeline`: batched generation with per-request state.
- :mod:`~toma_export.serving.backend`: the Triton Python-backend model (``TritonPythonModel``).
- :mod:`~toma_export.serving.repository`: model repositories (``serve``'s and ``export-triton``'s).
- :mod:`~toma_export.serving.server`: starting/stopping Triton, signals.

Nothing here is imported by ``import toma_export``; the submodules import torch lazily where they can.
"""
