"""Inline the nested-subgraph regions of a captured graph whose context cannot change a value.

``torch.export`` keeps a ``with torch.autocast(..., enabled=False)`` block or a
``torch.set_grad_enabled`` block as a higher-order op running a nested subgraph. diffusers wraps
RoPE and timestep embeddings in disabled-autocast blocks (Z-Image, Mochi, OmniGen and others), so
image tokens pass through such a region on their way to attention, and the pass, which retargets
token counts node by node in one graph, would have to stop there.

Both contexts are inert for an exported inference graph: a disabled autocast runs every op in the
dtype it is given (what the inlined ops do when no outer autocast is active, the case for the
graph pass and every engine), and grad mode changes no value. So their bodies are copied into
the parent graph, node for node with their metadata; a region that enables autocast keeps its
op (its casts are part of the computation).
"""

from __future__ import annotations

import operator

from torch.fx import GraphModule, Node

from toma_export.graph.fx_util import int_arg

_AUTOCAST = "wrap_with_autocast"
_SET_GRAD = "wrap_with_set_grad_enabled"


def _inert_body(node: Node) -> tuple[Node, GraphModule, tuple] | None:
    """The body's ``get_attr``, the nested graph module and its operands when ``node`` is an inert region, else None."""
    if node.op != "call_function":
        return None
    name = getattr(node.target, "__name__", "")
    if name == _AUTOCAST:  # (device_type, dtype, enabled, cache_enabled, body, *operands)
        enabled, body_at, operands = node.args[2], node.args[4], node.args[5:]
        if enabled:
            return None
    elif name == _SET_GRAD:  # (enabled, body, *operands)
        body_at, operands = node.args[1], node.args[2:]
    else:
        return None
    if not isinstance(body_at, Node) or body_at.op != "get_attr" or node.kwargs:
        return None
    body = getattr(node.graph.owning_module, str(body_at.target), None)
    if not isinstance(body, GraphModule) or any(n.op == "get_attr" for n in body.graph.nodes):
        return None  # nested regions inside, or constants held by the body: left as they are
    return body_at, body, tuple(operands)


def inline_inert_regions(gm: GraphModule) -> int:
    """Copy every inert region's body into ``gm``'s graph in place of its op; the count inlined.

    The op returns a tuple read through ``getitem``; each read is replaced by the copied output.
    """
    graph = gm.graph
    inlined = 0
    for node in list(graph.nodes):
        found = _inert_body(node)
        if found is None:
            continue
        body_at, body, operands = found
        placeholders = [n for n in body.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(operands) or not all(
            u.op == "call_function" and u.target is operator.getitem for u in node.users
        ):
            continue
        with graph.inserting_before(node):
            outputs = graph.graph_copy(body.graph, dict(zip(placeholders, operands)))
        results = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        for user in list(node.users):
            user.replace_all_uses_with(results[int_arg(user, 1, "index")])
            graph.erase_node(user)
        graph.erase_node(node)
        if not body_at.users:
            graph.erase_node(body_at)
            if hasattr(gm, str(body_at.target)):
                delattr(gm, str(body_at.target))
        inlined += 1
    if inlined:
        graph.lint()
        gm.recompile()
    return inlined

