"""Map the exported selection node onto the TensorRT plugin, for the TensorRT ONNX parser.

The exporter writes ``toma.FacilityLocation(features) -> indices`` with an int attribute ``k``
(:mod:`plugins.contract`). The TensorRT ONNX parser resolves an unknown node to a plugin by
``op_type`` (== plugin name), the string attribute ``plugin_namespace`` and the string attribute
``plugin_version`` (default "1"); for a ``tensorrt.plugin`` (QDP) plugin, an int attribute ``aot``
picks the AOT (1) or JIT (0) implementation (onnx-tensorrt ``importerUtils.cpp``, ``createPlugin``;
TensorRT ``samples/python/quickly_deployable_plugins/README.md``). The node's domain is not used
for the lookup; it is left as is. Only ``onnx`` is needed here.
"""

from __future__ import annotations

import onnx
from onnx import helper

from plugins import contract


def _graphs(model: onnx.ModelProto) -> list[onnx.GraphProto]:
    """The main graph and every subgraph (If/Loop/Scan bodies), depth first."""
    out: list[onnx.GraphProto] = []

    def visit(g: onnx.GraphProto) -> None:
        out.append(g)
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        visit(sub)

    visit(model.graph)
    return out


def _nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    nodes = [n for g in _graphs(model) for n in g.node]
    nodes += [n for f in model.functions for n in f.node]
    return nodes


def is_selection_node(node: onnx.NodeProto) -> bool:
    """The exporter's form of the selection node."""
    return node.op_type == contract.ONNX_OP_TYPE and node.domain == contract.ONNX_DOMAIN


def is_tensorrt_selection_node(node: onnx.NodeProto) -> bool:
    """The TensorRT-parser form (after :func:`to_tensorrt_nodes`)."""
    if node.op_type != contract.TRT_PLUGIN_NAME:
        return False
    ns = {a.name: helper.get_attribute_value(a) for a in node.attribute}.get(contract.TRT_ONNX_ATTR_NAMESPACE)
    return ns in (contract.TRT_PLUGIN_NAMESPACE, contract.TRT_PLUGIN_NAMESPACE.encode())


def selection_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Selection nodes in either form."""
    return [n for n in _nodes(model) if is_selection_node(n) or is_tensorrt_selection_node(n)]


def selection_k(node: onnx.NodeProto) -> int:
    """The node's ``k``; raises ``ValueError`` naming the node when it is missing or not an int."""
    for a in node.attribute:
        if a.name == contract.ONNX_ATTR_K:
            if a.type != onnx.AttributeProto.INT:
                raise ValueError(f"selection node {node.name!r}: attribute {contract.ONNX_ATTR_K!r} must be an int")
            if a.i < 1:
                raise ValueError(f"selection node {node.name!r}: k={a.i} must be >= 1")
            return int(a.i)
    raise ValueError(f"selection node {node.name!r} has no int attribute {contract.ONNX_ATTR_K!r}")


def to_tensorrt_nodes(model: onnx.ModelProto, *, aot: bool = True) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with each ``toma.FacilityLocation`` node in TensorRT-parser form.

    Returns ``(model, number of nodes rewritten)``. Nodes already in TensorRT form get their ``aot``
    attribute set to the requested value. ``aot=True`` embeds the PTX so the engine runs without
    Python (plain ``trtexec``); ``aot=False`` uses the JIT implementation (Python callback).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    n = 0
    for node in _nodes(out):
        if not (is_selection_node(node) or is_tensorrt_selection_node(node)):
            continue
        if len(node.input) != 1 or len(node.output) != 1:
            raise ValueError(
                f"selection node {node.name!r} must have 1 input ({contract.ONNX_INPUT_NAME}) "
                f"and 1 output ({contract.ONNX_OUTPUT_NAME}); has {len(node.input)} and {len(node.output)}"
            )
        k = selection_k(node)
        keep = [
            a
            for a in node.attribute
            if a.name
            not in (
                contract.ONNX_ATTR_K,
                contract.TRT_ONNX_ATTR_NAMESPACE,
                contract.TRT_ONNX_ATTR_VERSION,
                contract.TRT_ONNX_ATTR_AOT,
            )
        ]
        del node.attribute[:]
        node.attribute.extend(keep)
        node.attribute.extend(
            [
                helper.make_attribute(contract.ONNX_ATTR_K, k),
                helper.make_attribute(contract.TRT_ONNX_ATTR_NAMESPACE, contract.TRT_PLUGIN_NAMESPACE),
                helper.make_attribute(contract.TRT_ONNX_ATTR_VERSION, contract.TRT_PLUGIN_VERSION),
                helper.make_attribute(contract.TRT_ONNX_ATTR_AOT, int(aot)),
            ]
        )
        node.op_type = contract.TRT_PLUGIN_NAME
        n += 1
    return out, n


def make_selection_node(features: str, indices: str, k: int, name: str = "facility_location") -> onnx.NodeProto:
    """The exporter's selection node (for tests and small hand-built models)."""
    node = helper.make_node(contract.ONNX_OP_TYPE, [features], [indices], name=name, domain=contract.ONNX_DOMAIN)
    node.attribute.append(helper.make_attribute(contract.ONNX_ATTR_K, int(k)))
    return node


def make_selection_model(
    tiles: int | str = "T", tile_size: int = 16, channels: int = 8, k: int = 8, batch: int | str = "B"
) -> onnx.ModelProto:
    """A one-node model ``features (B, T, S, C) -> indices (B, T, k)`` (engine-build tests, smoke checks)."""
    x = helper.make_tensor_value_info(
        contract.ONNX_INPUT_NAME, onnx.TensorProto.FLOAT, [batch, tiles, tile_size, channels]
    )
    y = helper.make_tensor_value_info(contract.ONNX_OUTPUT_NAME, onnx.TensorProto.INT32, [batch, tiles, k])
    graph = helper.make_graph(
        [make_selection_node(contract.ONNX_INPUT_NAME, contract.ONNX_OUTPUT_NAME, k)], "toma_selection", [x], [y]
    )
    return helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", 17),
            helper.make_opsetid(contract.ONNX_DOMAIN, contract.ONNX_DOMAIN_VERSION),
        ],
    )
