# mypy: disable-error-code="arg-type, union-attr, index, operator, assignment, return-value, call-overload, misc"
# (FX node arguments are typed as a wide union; this file reads them as the ATen schemas define them.)
"""Find merge sites in an exported ATen graph by the shape of the computation, not by module names.

A site is the normalised token sequence ``X`` that feeds a sub-layer, and the linears that consume
it. Three patterns, anchored on ATen ops only:

- attention: ``norm -> linear (Q) [-> views, q/k-norm, RoPE, cat with text] -> sdpa``; it is
  *self*-attention when ``X`` also feeds the K/V linears (Flux's joint and single-stream blocks,
  SD3's joint blocks included: their text stream simply has no image grid), *cross*-attention when
  K/V come from another input (the context). The output projection and the residual add that
  closes the region are found when the pass propagates the new token count (``shapes.py``).
- MLP: ``norm -> linear -> activation (gelu/silu/relu, GEGLU's chunk*gelu) -> linear``, with no
  attention in between and ``X`` used by nothing else.

``X`` must come from a norm (layer/rms/group norm, optionally modulated by adaLN ``* (1+s) + b``),
and hold an image grid (``grids.py``): the whole sequence, or one segment of a token-dim ``cat``
(Flux's single-stream ``[text; image]``). ``nn_module_stack`` metadata is used only to name sites.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch.fx import Graph, Node

from toma_export.config import SubLayer
from toma_export.graph.grids import Grid, grid_for

aten = torch.ops.aten

SDPA = {
    aten.scaled_dot_product_attention.default,
    aten._scaled_dot_product_flash_attention.default,
    aten._scaled_dot_product_efficient_attention.default,
    aten._scaled_dot_product_flash_attention_for_cpu.default,
}
LINEAR = {aten.linear.default}
NORMS = {
    aten.layer_norm.default,
    aten.native_layer_norm.default,
    aten.rms_norm.default,
    aten.group_norm.default,
    aten.native_group_norm.default,
}
ACTIVATIONS = {aten.gelu.default, aten.silu.default, aten.relu.default, aten.gelu_.default, aten.silu_.default}
#: Ops allowed between the two linears of an MLP (per token, channel-wise).
MLP_BODY = ACTIVATIONS | {
    aten.mul.Tensor,
    aten.add.Tensor,
    aten.dropout.default,
    aten.chunk.default,
    aten.split.Tensor,
    aten.split_with_sizes.default,
    aten.to.dtype,
    aten.to.dtype_layout,
    aten._to_copy.default,
    aten.clone.default,
    aten.contiguous.default,
    aten._assert_tensor_metadata.default,
}
#: Channel-wise ops that may sit between a norm and the site input (adaLN modulation, casts).
MODULATION = {
    aten.mul.Tensor,
    aten.add.Tensor,
    aten.sub.Tensor,
    aten.to.dtype,
    aten.to.dtype_layout,
    aten._to_copy.default,
    aten.dropout.default,
    aten.clone.default,
    aten.contiguous.default,
    aten.squeeze.dim,
}


@dataclass
class Site:
    """A merge site found in the graph (before any config decides whether it is merged)."""

    kind: str  # a SubLayer value: "attn" (self-attention), "cross" or "mlp"
    x: Node  # the normalised token sequence the sub-layer reads, (B, S, C)
    consumers: list[Node]  # linears that read x and will read the merged x
    grid: Grid  # image grid of x's image span
    offset: int  # image tokens are x[:, offset : offset + grid.tokens]
    tokens: int  # S, all tokens of x (image + text)
    channels: int
    anchor: Node  # the sdpa (attention) or the second linear (MLP)
    name: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def image_tokens(self) -> int:
        return self.grid.tokens


def _val(node: object) -> torch.Tensor | None:
    v = node.meta.get("val") if isinstance(node, Node) else None
    return v if isinstance(v, torch.Tensor) else None


def _is(node: Node, targets: set) -> bool:
    return node.op == "call_function" and node.target in targets


def linears_feeding(node: Node, limit: int = 200) -> list[Node]:
    """Linears whose outputs reach ``node`` without passing another linear (backwards BFS)."""
    found: list[Node] = []
    seen = {node}
    frontier = [node]
    while frontier and len(seen) < limit:
        nxt = []
        for n in frontier:
            for i in n.all_input_nodes:
                if i in seen:
                    continue
                seen.add(i)
                if _is(i, LINEAR):
                    v = _val(i)
                    if v is not None and v.ndim >= 3:
                        found.append(i)
                elif i.op == "call_function" and not _is(i, SDPA):
                    nxt.append(i)
        frontier = nxt
    return found


def _main_input(node: Node) -> Node | None:
    """The operand of a channel-wise op that carries the token stream (same shape as the output)."""
    out = _val(node)
    for a in node.all_input_nodes:
        v = _val(a)
        if v is not None and out is not None and tuple(v.shape) == tuple(out.shape):
            return a
    return None


def _norm_source(x: Node, depth: int = 8) -> Node | None:
    """The norm ``x`` is derived from through channel-wise modulation, or None."""
    n: Node | None = x
    for _ in range(depth):
        if n is None or n.op != "call_function":
            return None
        if _is(n, NORMS):
            return n
        if n.target is operator.getitem and _is(n.args[0], NORMS):  # native_layer_norm's output tuple
            return n.args[0]
        if not _is(n, MODULATION):
            return None
        n = _main_input(n)
    return None


def _token_cat(x: Node, depth: int = 12) -> Node | None:
    """A ``cat`` along the token dim that ``x`` derives from through norms and modulation."""
    n: Node | None = x
    for _ in range(depth):
        if n is None or n.op != "call_function":
            return None
        if n.target is aten.cat.default:
            dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
            v = _val(n)
            return n if v is not None and dim % v.ndim == 1 else None
        if not (_is(n, MODULATION) or _is(n, NORMS)):
            return None
        n = n.args[0] if _is(n, NORMS) else _main_input(n)
    return None


def image_span(x: Node, grids: list[Grid]) -> tuple[Grid, int] | None:
    """(grid, offset) of the image tokens inside ``x`` ``(B, S, C)``, or None (text / not a grid)."""
    v = _val(x)
    if v is None or v.ndim != 3:
        return None
    s = int(v.shape[1])
    g = grid_for(grids, s)
    if g is not None:
        return g, 0
    cat = _token_cat(x)
    if cat is None:
        return None
    sizes = [int(_val(t).shape[1]) for t in cat.args[0]]  # type: ignore[union-attr]
    hits = [(i, grid_for(grids, n)) for i, n in enumerate(sizes) if grid_for(grids, n) is not None]
    if len(hits) != 1 or sum(sizes) != s:
        return None
    i, g = hits[0]
    return g, sum(sizes[:i])  # type: ignore[return-value]


def _site_name(node: Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1][0]
        return path.rsplit(".", 1)[0] if path.endswith(("to_q", "proj", "proj_mlp")) else path
    return node.name


def _mlp_second_linear(l1: Node) -> Node | None:
    """The linear an MLP's first linear leads to through an activation, or None."""
    seen: set[Node] = set()
    frontier = list(l1.users)
    ends: set[Node] = set()
    act = False
    while frontier:
        n = frontier.pop()
        if n in seen:
            continue
        seen.add(n)
        if _is(n, LINEAR):
            ends.add(n)
            continue
        if n.op != "call_function":
            return None
        if n.target is operator.getitem:
            frontier.extend(n.users)
            continue
        if not _is(n, MLP_BODY):
            return None
        act = act or _is(n, ACTIVATIONS)
        frontier.extend(n.users)
    return next(iter(ends)) if act and len(ends) == 1 else None


def find_sites(graph: Graph, grids: list[Grid]) -> list[Site]:
    """All merge sites of ``graph``, in forward (graph) order."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    sites: dict[Node, Site] = {}
    attn_linears: set[Node] = set()
    for sdpa in (n for n in graph.nodes if _is(n, SDPA)):
        q, k, v = sdpa.args[:3]
        q_lin, k_lin, v_lin = (linears_feeding(t) for t in (q, k, v))  # type: ignore[arg-type]
        attn_linears.update(q_lin, k_lin, v_lin)
        kv_inputs = {lin.args[0] for lin in k_lin + v_lin}
        for lin in q_lin:
            x = lin.args[0]
            if not isinstance(x, Node) or x in sites or _norm_source(x) is None:
                continue
            span = image_span(x, grids)
            if span is None:
                continue
            self_attn = x in kv_inputs
            consumers = list(x.users) if self_attn else [lin]
            if self_attn and not all(_is(u, LINEAR) for u in consumers):
                continue  # x feeds something we cannot follow
            xv = _val(x)
            sites[x] = Site(
                (SubLayer.ATTN if self_attn else SubLayer.CROSS).value,
                x,
                consumers,
                span[0],
                span[1],
                int(xv.shape[1]),  # type: ignore[union-attr]
                int(xv.shape[2]),  # type: ignore[union-attr]
                sdpa,
                _site_name(lin),
            )
    for l1 in (n for n in graph.nodes if _is(n, LINEAR)):
        x = l1.args[0]
        if l1 in attn_linears or not isinstance(x, Node) or x in sites or _norm_source(x) is None:
            continue
        if any(u is not l1 for u in x.users):
            continue
        span = image_span(x, grids)
        l2 = _mlp_second_linear(l1) if span is not None else None
        if l2 is None or l2 in attn_linears:
            continue
        xv = _val(x)
        sites[x] = Site(
            SubLayer.MLP.value, x, [l1], span[0], span[1], int(xv.shape[1]), int(xv.shape[2]), l2, _site_name(l1)  # type: ignore
        )
    return sorted(sites.values(), key=lambda s: order[s.x])
