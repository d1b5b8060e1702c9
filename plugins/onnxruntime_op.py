"""The selection plugin node as an ONNX Runtime custom op (onnxruntime-extensions PyOp).

ONNX Runtime has no kernel for ``toma::FacilityLocation``; this registers one backed by the
torch reference, so graphs exported with ``selection="plugin"`` can be run and checked on CPU
before they go to TensorRT. PyOps live in onnxruntime-extensions' own domain, so
:func:`to_onnxruntime_nodes` moves the plugin nodes there.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from plugins import contract

PYOP_DOMAIN = "ai.onnx.contrib"


@lru_cache(maxsize=1)
def register() -> str:
    """Register the PyOp once; returns the custom-op library path for ``SessionOptions``."""
    import torch
    from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op

    from toma_export.core.selection import facility_location

    @onnx_op(
        op_type=contract.ONNX_OP_TYPE,
        inputs=[PyCustomOpDef.dt_float],
        outputs=[PyCustomOpDef.dt_int32],
        attrs={contract.ONNX_ATTR_K: PyCustomOpDef.dt_int64},
    )
    def _facility_location(features: np.ndarray, k: int) -> np.ndarray:
        idx = facility_location(torch.from_numpy(np.ascontiguousarray(features)), int(k))
        return idx.to(torch.int32).numpy()

    return str(get_library_path())


def to_onnxruntime_nodes(model: Any) -> Any:
    """A copy of ``model`` whose plugin nodes sit in the PyOp domain (in place of ``toma``)."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    moved = 0
    for node in out.graph.node:
        if node.domain == contract.ONNX_DOMAIN and node.op_type == contract.ONNX_OP_TYPE:
            node.domain = PYOP_DOMAIN
            moved += 1
    if moved and not any(o.domain == PYOP_DOMAIN for o in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid(PYOP_DOMAIN, 1))
    return out
