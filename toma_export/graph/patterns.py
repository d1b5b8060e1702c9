"""Find merge sites in an exported ATen graph by the shape of the computation, not by module names.

A site is the normalised token sequence ``X`` that feeds a sub-layer, and the linears that consume
it. Three patterns, anchored on ATen ops only:

- attention: ``norm -> linear (Q) [-> views, q/k-norm, RoPE, cat with text] -> sdpa``; it is
  *self*-attention when ``X`` also feeds the K/V linears (Flux's joint and single-stream blocks,
  SD3's joint blocks included: their text stream simply has no image grid), *cross*-attention when
  K/V come from another input (the context). The output projection and the residual add that
  closes the region are found when the pass propagates the new token count (``shapes.py``).
- MLP: ``norm -> linear -> activation (gelu/silu/relu, GEGLU's chunk*gelu) -> linear``, with no
  attention in between and ``X`` used by nothing else than its first linear(s): SwiGLU written as
  parallel ``w2(silu(w1(x)) * w3(x))`` has two, both reaching the one second linear.

``X`` must come from a norm (layer/rms/group norm, decomposed RMSNorm ``pow/mean/rsqrt``, FP32LayerNorm's
``float -> norm -> type_as``; optionally modulated by adaLN ``* (1+s) + b``, where a per-token scale/shift
shaped like the tokens is told apart by following every operand to the norm), and hold an image grid
(``grids.py``): the whole sequence, or one segment of a token-dim ``cat`` (Flux's single-stream
``[text; image]``; a ``cat`` of separately normalised text and image before one Q/K/V, CogView4; a
``pad_sequence`` of equal-length per-sample sequences). A normalised sequence that is sliced into its
image and text parts (and joined again) before Q/K/V is the site itself (HunyuanImage single blocks).
MLPs include SwiGLU split by ``chunk`` or by channel ``slice``. ``nn_module_stack`` metadata is used
only to name sites.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx import Graph, Node
from torch.fx.node import Target

from toma_export.config import SubLayer
from toma_export.errors import UnsupportedModelError
from toma_export.graph.capture import Captured
from toma_export.graph.fx_util import (
    ACTIVATIONS, CASTS, LINEAR, NORMS, SDPA, arg, fake, int_arg, is_call, node_arg, nodes_arg, tensor_val,
)
from toma_export.graph.grids import Grid, grid_for, joint_layouts, token_grids
from toma_export.graph.provenance import Origin, TokenOrigins

aten = torch.ops.aten

#: Ops allowed between the two linears of an MLP (per token, channel-wise).
MLP_BODY: frozenset[Target] = ACTIVATIONS | {
    aten.mul.Tensor,
    aten.add.Tensor,
    aten.dropout.default,
    aten.chunk.default,
    aten.split.Tensor,
    aten.split_with_sizes.default,
    aten.to.dtype,
    aten.to.dtype_layout,
    aten._to_copy.default,
    aten.type_as.default,
    aten.clone.default,
    aten.contiguous.default,
    aten._assert_tensor_metadata.default,
}
#: Channel-wise ops that may sit between a norm and the site input (adaLN modulation, casts).
MODULATION: frozenset[Target] = frozenset({
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
    aten.type_as.default,
})


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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def image_tokens(self) -> int:
        return self.grid.tokens


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
                if is_call(i, LINEAR):
                    v = tensor_val(i)
                    if v is not None and v.ndim >= 3:
                        found.append(i)
                elif i.op == "call_function" and not is_call(i, SDPA):
                    nxt.append(i)
        frontier = nxt
    return found


def _stream_inputs(node: Node) -> list[Node]:
    """Operands of a channel-wise op that may carry the token stream (same shape as the output).

    Per-token modulation (scale/shift shaped like the tokens, e.g. Wan with per-token timesteps)
    gives several such operands; callers try each (the stream is the one that leads to a norm).
    """
    out = tensor_val(node)
    if out is None:
        return []
    return [a for a in node.all_input_nodes if (v := tensor_val(a)) is not None and tuple(v.shape) == tuple(out.shape)]


def _through_casts(n: object) -> object:
    while isinstance(n, Node) and n.op == "call_function" and n.target in CASTS:
        n = n.args[0]
    return n


def _is_decomposed_rms(n: Node) -> bool:
    """``x * rsqrt(mean(x ** 2, -1, keepdim) + eps)`` (diffusers' RMSNorm traced op by op), or the
    same with ``torch.rsqrt`` replaced by ``1 / sqrt``; the weight multiplies the result afterwards."""
    if not is_call(n, {aten.mul.Tensor, aten.div.Tensor}):
        return False
    for operand in n.args:
        r = _through_casts(operand)
        if not isinstance(r, Node) or not is_call(r, {aten.rsqrt.default, aten.sqrt.default}):
            continue
        a = _through_casts(r.args[0])
        if isinstance(a, Node) and is_call(a, {aten.add.Tensor, aten.add.Scalar}):
            a = _through_casts(a.args[0])
        if not (isinstance(a, Node) and is_call(a, {aten.mean.dim})):
            continue
        p = _through_casts(a.args[0])
        if isinstance(p, Node) and (
            is_call(p, {aten.pow.Tensor_Scalar}) and p.args[1] == 2 or is_call(p, {aten.mul.Tensor}) and p.args[0] is p.args[1]
        ):
            return True
    return False


def _is_norm(n: Node) -> bool:
    return is_call(n, NORMS) or _is_decomposed_rms(n)


def _norm_source(x: Node, depth: int = 8) -> Node | None:
    """The norm ``x`` is derived from through channel-wise modulation, or None.

    Norms: ATen layer/rms/group norm (also inside casts: FP32LayerNorm's ``float -> norm -> type_as``)
    and decomposed RMSNorm (``pow/mean/rsqrt``). Every token-shaped operand is tried, so a per-token
    scale/shift cannot send the search down the wrong operand.
    """
    if depth <= 0 or not isinstance(x, Node) or x.op != "call_function":
        return None
    if _is_norm(x):
        return x
    if x.target is operator.getitem and is_call(x.args[0], NORMS):  # native_layer_norm's output tuple
        return x.args[0]
    if not is_call(x, MODULATION):
        return None
    for a in _stream_inputs(x):
        found = _norm_source(a, depth - 1)
        if found is not None:
            return found
    return None


def _token_cat(x: object, depth: int = 12, tdim: int = 1) -> tuple[Node, int] | None:
    """A ``cat`` along the token dim that ``x`` derives from through norms and modulation, and that dim.

    Sequences packed with ``pad_sequence(batch_first=True)`` of equal-length per-sample sequences
    (``(S, C)`` each, e.g. ``cat([image_i, text_i])``) are followed into their first sample, whose
    token dim is 0 (the lengths are static in a captured graph, so no padding happens).
    """
    if depth <= 0 or not isinstance(x, Node) or x.op != "call_function":
        return None
    v = tensor_val(x)
    if x.target is aten.cat.default:
        return (x, tdim) if v is not None and int_arg(x, 1) % v.ndim == tdim else None
    if x.target is aten.pad_sequence.default and tdim == 1:
        seqs = nodes_arg(x, 0)
        batch_first = arg(x, 1, "batch_first", False)
        lens = {int(q.shape[0]) for q in map(tensor_val, seqs) if q is not None}
        if batch_first and len(lens) == 1 and v is not None and int(v.shape[1]) in lens:
            return _token_cat(seqs[0], depth - 1, 0)
        return None
    if is_call(x, NORMS):
        return _token_cat(x.args[0], depth - 1, tdim)
    if not (is_call(x, MODULATION) or _is_norm(x)):
        return None
    for a in _stream_inputs(x):
        found = _token_cat(a, depth - 1, tdim)
        if found is not None:
            return found
    return None


def _token_slice_of(n: object) -> Node | None:
    """``y`` when ``n`` is a slice of ``y`` ``(B, S, C)`` along the token dim, else None."""
    if not is_call(n, {aten.slice.Tensor, aten.narrow.default}):
        return None
    v = tensor_val(n.args[0])
    return node_arg(n, 0) if v is not None and v.ndim == 3 and int_arg(n, 1) % 3 == 1 else None


def _lift(x: object) -> Node | None:
    """``y`` when ``x`` is a token slice of ``y``, or ``y`` cut into token slices and concatenated again
    (HunyuanImage's single-stream attention splits a normalised ``[image; text]`` sequence and joins it
    inside the processor): the site is then ``y`` itself, whose consumers see the merged sequence."""
    y = _token_slice_of(x)
    if y is not None:
        return y
    if is_call(x, {aten.cat.default}) and len(parts := nodes_arg(x, 0)) > 1:
        srcs = {_token_slice_of(p) for p in parts}
        if len(srcs) == 1 and None not in srcs and int_arg(x, 1) % 3 == 1:
            return srcs.pop()
    return None


def _normalised(x: Node, span: tuple[Grid, int] | None) -> bool:
    """``x`` is a normalised sequence: derived from a norm, or a token ``cat`` of normalised parts
    (joint attention that concatenates normalised text and image before one Q/K/V projection, e.g.
    CogView4): then the image segment must come from a norm."""
    if _norm_source(x) is not None:
        return True
    found = _token_cat(x)
    if found is None or span is None:
        return False
    cat, tdim = found
    start = 0
    for part in nodes_arg(cat, 0):
        n = int(fake(part).shape[tdim])
        if start == span[1] and n == span[0].tokens:
            return _norm_source(part) is not None
        start += n
    return False


def image_span(
    x: Node, grids: list[Grid], origins: TokenOrigins | None = None, joints: dict[int, tuple[Grid, int]] | None = None
) -> tuple[Grid, int] | None:
    """(grid, offset) of the image tokens inside ``x`` ``(B, S, C)``, or None (text / not a grid).

    A sequence (or part of a joint sequence) as long as a grid is image unless ``origins`` traces
    its tokens to the text inputs only (``provenance``): a text stream as long as the grid stays text.
    A sequence as long as a joint id table (``grids.joint_layouts``) has its image block where the
    ids put it.
    """
    v = tensor_val(x)
    if v is None or v.ndim != 3:
        return None

    def text(n: object) -> bool:
        return origins is not None and isinstance(n, Node) and origins.origin(n) is Origin.TEXT

    if not isinstance(v.shape[1], int):
        return None  # a data-dependent length (FramePack's text sliced by a mask-derived count)
    s = v.shape[1]
    g = grid_for(grids, s)
    if g is not None:
        return None if text(x) else (g, 0)
    found = _token_cat(x)
    if found is None:
        return joints[s] if joints and s in joints and not text(x) else None
    cat, tdim = found
    parts = nodes_arg(cat, 0)
    sizes = [fake(t).shape[tdim] for t in parts]
    if not all(isinstance(n, int) for n in sizes):
        return None
    hits = [(i, g) for i, n in enumerate(sizes) if (g := grid_for(grids, int(n))) is not None and not text(parts[i])]
    if len(hits) != 1 or sum(sizes) != s:
        return None
    i, g = hits[0]
    return g, sum(int(n) for n in sizes[:i])


def _site_name(node: Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1][0]
        return path.rsplit(".", 1)[0] if path.endswith(("to_q", "proj", "proj_mlp")) else path
    return node.name


def _channel_slice(n: Node) -> bool:
    """A ``slice`` / ``narrow`` along the last (channel) dim: SwiGLU's ``x[..., :half]`` halves."""
    v = tensor_val(n.args[0]) if n.op == "call_function" and n.args else None
    if v is None:
        return False
    if n.target not in (aten.slice.Tensor, aten.narrow.default):
        return False
    return int_arg(n, 1) % v.ndim == v.ndim - 1


def _mlp_second_linear(firsts: list[Node]) -> Node | None:
    """The one linear an MLP's first linears lead to through an activation, or None. Parallel
    first linears on one input (SwiGLU as ``w2(silu(w1(x)) * w3(x))``) must all reach it."""
    seen: set[Node] = set(firsts)
    frontier = [u for l1 in firsts for u in l1.users]
    ends: set[Node] = set()
    act = False
    while frontier:
        n = frontier.pop()
        if n in seen:
            continue
        seen.add(n)
        if is_call(n, LINEAR):
            ends.add(n)
            continue
        if n.op != "call_function":
            return None
        if n.target is operator.getitem:
            frontier.extend(n.users)
            continue
        if not (is_call(n, MLP_BODY) or _channel_slice(n)):
            return None
        act = act or is_call(n, ACTIVATIONS)
        frontier.extend(n.users)
    return next(iter(ends)) if act and len(ends) == 1 else None


def find_sites(graph: Graph, grids: list[Grid], joints: dict[int, tuple[Grid, int]] | None = None) -> list[Site]:
    """All merge sites of ``graph``, in forward (graph) order (``joints``: :func:`image_span`'s)."""
    origins = TokenOrigins(graph)
    order = {n: i for i, n in enumerate(graph.nodes)}
    sites: dict[Node, Site] = {}
    attn_linears: set[Node] = set()
    for sdpa in (n for n in graph.nodes if is_call(n, SDPA)):
        q_lin, k_lin, v_lin = (linears_feeding(node_arg(sdpa, i)) for i in range(3))
        attn_linears.update(q_lin, k_lin, v_lin)
        kv_inputs = {lin.args[0] for lin in k_lin + v_lin}
        for lin in q_lin:
            x = lin.args[0]
            whole = _lift(x)
            if whole is not None and (whole in kv_inputs or any(_lift(i) is whole for i in kv_inputs)):
                x = whole  # image and text sliced out of one normalised [image; text] sequence (HunyuanImage single)
            if not isinstance(x, Node) or x in sites:
                continue
            span = image_span(x, grids, origins, joints)
            if span is None or not _normalised(x, span):
                continue
            self_attn = x is whole or x in kv_inputs
            consumers = list(x.users) if self_attn else [lin]
            if self_attn and not all(is_call(u, LINEAR) or _token_slice_of(u) is x for u in consumers):
                continue  # x feeds something we cannot follow
            xv = fake(x)
            sites[x] = Site(
                (SubLayer.ATTN if self_attn else SubLayer.CROSS).value,
                x,
                consumers,
                span[0],
                span[1],
                int(xv.shape[1]),
                int(xv.shape[2]),
                sdpa,
                _site_name(lin),
            )
    for l1 in (n for n in graph.nodes if is_call(n, LINEAR)):
        x = l1.args[0]
        if l1 in attn_linears or not isinstance(x, Node) or x in sites:
            continue
        firsts = list(x.users)  # every reader of x is a first linear (one, or SwiGLU's parallel pair)
        if not all(is_call(u, LINEAR) and u.args[0] is x and u not in attn_linears for u in firsts):
            continue
        span = image_span(x, grids, origins, joints)
        l2 = _mlp_second_linear(firsts) if span is not None and _normalised(x, span) else None
        if span is None or l2 is None or l2 in attn_linears:
            continue
        xv = fake(x)
        sites[x] = Site(
            SubLayer.MLP.value, x, firsts, span[0], span[1], int(xv.shape[1]), int(xv.shape[2]), l2, _site_name(l1)
        )
    return sorted(sites.values(), key=lambda s: order[s.x])


def captured_sites(captured: Captured, fix: str) -> list[Site]:
    """:func:`find_sites` over a captured model's graph and input grids; a matcher failure is an
    :class:`UnsupportedModelError` (never raw) ending with ``fix``, what the caller's user can do."""
    joints = joint_layouts(captured.example_kwargs)
    grids = token_grids(captured.example_kwargs, captured.model_config, joints)
    try:
        return find_sites(captured.ep.graph, grids, joints)
    except Exception as e:  # noqa: BLE001 - a matcher failure is reported as unsupported, never raw
        raise UnsupportedModelError(f"matching merge sites failed on this graph ({type(e).__name__}: {e}); {fix}") from e
