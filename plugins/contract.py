"""The one place that names the selection plugin: ONNX node, TensorRT plugin, kernel I/O.

The ONNX exporter emits the node described by ``ONNX_*``; the TensorRT side registers the plugin
described by ``TRT_*``. The two names differ on purpose (the ONNX op follows ONNX naming, the
plugin follows the ``toma::`` custom-op naming), so a TensorRT build first rewrites each
``toma.FacilityLocation`` node into the form the TensorRT ONNX parser resolves to a plugin
(:func:`plugins.onnx_mapping.to_tensorrt_nodes`): the parser looks a plugin up by
``op_type`` == plugin name, the string attribute ``plugin_namespace`` and the string attribute
``plugin_version`` (default ``"1"``); an int attribute ``aot`` = 1 asks for the AOT implementation.
"""

from __future__ import annotations

from typing import Final

# --- ONNX node, as the exporter writes it (toma_export/engines/onnx_export.py) ---------------
#: ``op_type`` of the selection node.
ONNX_OP_TYPE: Final = "FacilityLocation"
#: Custom-op domain of the selection node (also the opset_import domain, version 1).
ONNX_DOMAIN: Final = "toma"
ONNX_DOMAIN_VERSION: Final = 1
#: Integer attribute: destinations kept per tile.
ONNX_ATTR_K: Final = "k"
#: Input: ``(B, T, S, C)`` float32 or float16 tiles of tokens.
ONNX_INPUT_NAME: Final = "features"
#: Output: ``(B, T, k)`` int32 tile-local indices, in pick order.
ONNX_OUTPUT_NAME: Final = "indices"
#: ONNX TensorProto element types allowed on the input / required on the output.
ONNX_INPUT_ELEM_TYPES: Final = (1, 10)  # FLOAT, FLOAT16
ONNX_OUTPUT_ELEM_TYPE: Final = 6  # INT32
#: Rank of the input (B, T, S, C) and of the output (B, T, k).
INPUT_RANK: Final = 4
OUTPUT_RANK: Final = 3

# --- TensorRT plugin ----------------------------------------------------------------------------
TRT_PLUGIN_NAMESPACE: Final = "toma"
TRT_PLUGIN_NAME: Final = "facility_location"
TRT_PLUGIN_VERSION: Final = "1"
#: ``tensorrt.plugin`` id, ``"{namespace}::{name}"``.
TRT_PLUGIN_ID: Final = f"{TRT_PLUGIN_NAMESPACE}::{TRT_PLUGIN_NAME}"

# --- TensorRT ONNX parser: node attributes it reads to find a plugin ----------------------------
#: String attribute holding the plugin namespace (parser default: "").
TRT_ONNX_ATTR_NAMESPACE: Final = "plugin_namespace"
#: String attribute holding the plugin version (parser default: "1").
TRT_ONNX_ATTR_VERSION: Final = "plugin_version"
#: Int attribute: 1 = use the AOT implementation (engine runs without Python), 0 = JIT.
TRT_ONNX_ATTR_AOT: Final = "aot"

# --- torch custom op ------------------------------------------------------------------------------
#: The torch op carrying selection in exported programs (``toma_export/ops.py``).
TORCH_OP_QUALNAME: Final = "toma::facility_location"
