"""Registered custom ops (``torch.library``) that compiled graphs carry instead of Python code.

``toma::facility_location`` is the selection step as one opaque node: graph passes insert it,
exporters lower it (unrolled standard ONNX ops, or a ``toma`` plugin node), and plugins (Triton,
TensorRT) implement it. Its eager kernel is :func:`toma_export.core.selection.facility_location`.
"""

from __future__ import annotations

import torch

from toma_export.core.selection import facility_location as _facility_location


@torch.library.custom_op("toma::facility_location", mutates_args=())
def facility_location(features: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy facility-location destinations ``(..., k)`` int64 for tiles ``(..., S, C)``."""
    return _facility_location(features, k)


@facility_location.register_fake
def _(features: torch.Tensor, k: int) -> torch.Tensor:
    return features.new_empty((*features.shape[:-2], k), dtype=torch.long)
