"""Token provenance: which model input a sequence's token axis comes from.

Sites hold an image grid by their token count (``patterns.image_span``). A text stream exactly as
long as a grid (Flux at 64x64 px with 16 text tokens; FLUX.1-schnell's 256 text tokens at 256x256 px)
would then be merged as image tokens: measured, flux-tiny at 64x64 merged its text MLPs
(``ff_context``) and its engine was 0.15 off eager ToMA. Provenance tells the streams apart by the
data flow instead of the count.

A ``(B, S, C)`` tensor's tokens come from the ``(B, S, ·)`` operands of the op that made it (linear,
norm, residual add, activation, cast: every token-wise op keeps the token axis), and from the exact
part of a token ``cat`` that a token slice or split takes back out. Following those edges back to the
user inputs gives the set of inputs a stream descends from. Text inputs are diffusers' conditioning
arguments, ``encoder_hidden_states*`` (the name every diffusers denoiser gives its text tokens).
Attention outputs, reshapes to heads and back, and 4-D latents end the walk: a stream whose origin
is unknown keeps the count-based rule, so UNets (tokens from a conv feature map) are unaffected.
"""

from __future__ import annotations

import operator
from enum import Enum

import torch
from torch.fx import Graph, Node
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from toma_export.graph.fx_util import int_arg, nodes_arg, tensor_val

aten = torch.ops.aten

TEXT_INPUT_PREFIX = "encoder_hidden_states"
#: Source of tokens computed from the weights alone (learned register tokens): neutral, neither stream.
WEIGHTS = "<weights>"
_LIFTED = ("p_", "b_", "c_")  # placeholder prefixes of lifted parameters, buffers, constants


class Origin(Enum):
    TEXT = "text"  # descends only from text inputs
    IMAGE = "image"  # descends from other inputs (the latents) and from no text input
    UNKNOWN = "unknown"  # no input reached, or both kinds: the token count decides


Segments = tuple[tuple[int, frozenset[str]], ...]  # (token count, inputs reached), in token order


def _cut(segs: Segments, start: int, end: int) -> Segments:
    """Tokens ``[start, end)`` of ``segs``."""
    out, pos = [], 0
    for n, src in segs:
        lo, hi = max(start, pos), min(end, pos + n)
        if hi > lo:
            out.append((hi - lo, src))
        pos += n
    return tuple(out)


def _combine(lists: list[Segments]) -> Segments:
    """Token-wise union of equally long segment lists (an elementwise op of token-aligned operands)."""
    cuts = sorted({0} | {p for segs in lists for p in _bounds(segs)})
    out: list[tuple[int, frozenset[str]]] = []
    for lo, hi in zip(cuts, cuts[1:]):
        src = frozenset().union(*(_cut(segs, lo, hi)[0][1] for segs in lists))
        if out and out[-1][1] == src:
            out[-1] = (out[-1][0] + hi - lo, src)
        else:
            out.append((hi - lo, src))
    return tuple(out)


def _bounds(segs: Segments) -> list[int]:
    out, pos = [], 0
    for n, _ in segs:
        pos += n
        out.append(pos)
    return out


class TokenOrigins:
    """Per ``(B, S, C)`` node of ``graph``, the inputs each span of its token axis descends from (module doc)."""

    def __init__(self, graph: Graph):
        self._segs: dict[Node, Segments] = {}
        self._text: set[str] = set()
        weights: set[Node] = set()  # nodes computed from lifted weights and constants only
        for n in graph.nodes:
            if (n.op == "placeholder" and n.name.startswith(_LIFTED)) or n.op == "get_attr" or (
                n.op == "call_function" and all(a in weights for a in n.all_input_nodes)
            ):
                weights.add(n)
            v = tensor_val(n)
            if v is None or v.ndim != 3 or not isinstance(v.shape[1], int):
                continue  # a data-dependent length (unbacked size) has no spans to track
            s = v.shape[1]
            if n in weights:
                self._segs[n] = ((s, frozenset({WEIGHTS})),)
            elif n.op == "placeholder":
                if not n.name.startswith(_LIFTED):
                    self._segs[n] = ((s, frozenset({n.name})),)
                    if n.name.startswith(TEXT_INPUT_PREFIX):
                        self._text.add(n.name)
            elif n.op == "call_function" and s > 0:
                try:
                    self._segs[n] = self._of(n, v)
                except GuardOnDataDependentSymNode:  # an operand of data-dependent length: origin unknown
                    self._segs[n] = ((s, frozenset()),)

    def _get(self, n: object, size: int) -> Segments:
        return self._segs.get(n, ((size, frozenset()),)) if isinstance(n, Node) else ((size, frozenset()),)

    def _of(self, n: Node, v: torch.Tensor) -> Segments:
        s = int(v.shape[1])
        if n.target is aten.cat.default and int_arg(n, 1) % 3 == 1:
            parts = [(p, pv) for p in nodes_arg(n, 0) if (pv := tensor_val(p)) is not None]
            return tuple(seg for p, pv in parts for seg in self._get(p, int(pv.shape[1])))
        if n.target is aten.slice.Tensor and int_arg(n, 1) % 3 == 1 and (src := tensor_val(n.args[0])) is not None:
            size = int(src.shape[1])
            start = int_arg(n, 2, "start")
            start = start + size if start < 0 else start
            step = n.args[4] if len(n.args) > 4 else 1
            if step == 1:
                return _cut(self._get(n.args[0], size), start, start + s)
        if n.target is operator.getitem and isinstance(n.args[0], Node):
            split = n.args[0]
            pieces = split.meta.get("val")
            if (
                split.target in (aten.split_with_sizes.default, aten.split.Tensor)
                and int_arg(split, 2) % 3 == 1
                and isinstance(pieces, (list, tuple))
            ):
                i = int_arg(n, 1)
                start = sum(int(p.shape[1]) for p in pieces[:i])
                size = sum(int(p.shape[1]) for p in pieces)
                return _cut(self._get(split.args[0], size), start, start + s)
        aligned = [
            self._get(a, s)
            for a in n.all_input_nodes
            if (av := tensor_val(a)) is not None and av.ndim == 3 and tuple(av.shape[:2]) == tuple(v.shape[:2])
        ]
        return _combine(aligned) if aligned else ((s, frozenset()),)

    def origin(self, x: Node) -> Origin:
        """Where all of ``x``'s tokens come from; TEXT only when every span is known to be text or
        weights (a span of unknown source, such as tokens from a conv patch embedding, may be image)."""
        segs = self._segs.get(x, ())
        reached = frozenset().union(*(src for _, src in segs)) - {WEIGHTS}
        if not reached:
            return Origin.UNKNOWN
        text = reached & self._text
        if text == reached:
            return Origin.TEXT if all(src for _, src in segs) else Origin.UNKNOWN
        return Origin.UNKNOWN if text else Origin.IMAGE
