"""Propagate a new token count through an exported graph region, fixing literal shapes.

``torch.export`` bakes sizes into ``view``/``reshape``/``split``/``slice`` arguments. After a merge
node shrinks a sequence from ``S`` to ``S'`` tokens, every node downstream of it (the *region*) is
re-evaluated on fake tensors in graph order, tracking which dim holds the tokens and how that dim
is made of segments (``(old, new)`` lengths: untouched text, merged image). Size arguments are
rewritten from old/new shapes; where the region meets an unmerged tensor, one of two patterns
closes it:

- residual add: ``add(region, stream)`` with equal old shapes -> ``unmerge`` the region operand;
- positional table: ``mul(region, table)`` where the table broadcasts over the batch (RoPE cos/sin)
  -> ``gather_positions`` the table rows of the merged tokens (their destinations' positions);
- attention mask: an SDPA mask over the old sequence (``(B, 1, S, S)``, ``(B, 1, 1, S)``, ``(S, S)``)
  -> ``gather_positions`` its query rows and key columns (a merged token keeps its destination's).

Anything else (the region reaching the output, a reduction over tokens, a token-dim split that
cuts a merged segment, two sites mixing) raises :class:`RegionError` naming the site, and the pass
leaves that site out.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx.experimental.symbolic_shapes as _symbolic_shapes
from torch.fx import Graph, Node
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode
from torch.fx.node import Argument

from toma_export.graph.fx_util import (
    VIEWS, dim_arg, evaluate, fake, insert_call, int_arg, ints_arg, mask_slot, meta_val, node_arg, nodes_arg,
)

#: A symbolic size's example value without guarding (older torch names it ``hint_int``).
_optimization_hint: Callable[[Any], int] = getattr(
    _symbolic_shapes, "optimization_hint", None) or getattr(_symbolic_shapes, "hint_int")

aten = torch.ops.aten

Segments = tuple[tuple[int, int], ...]

POINTWISE_BINARY = {
    aten.add.Tensor,
    aten.sub.Tensor,
    aten.mul.Tensor,
    aten.div.Tensor,
    aten.maximum.default,
    aten.minimum.default,
    aten.where.self,
}
#: Ops that cut along a dim (position of the dim argument, default): refused along the tokens.
DIM_ARG = {
    aten.split.Tensor: (2, 0),
    aten.chunk.default: (2, 0),
    aten.unbind.int: (1, 0),
    aten.select.int: (1, 0),
    aten.narrow.default: (1, 0),
}
#: Ops whose output shape equals an input's while mixing tokens; allowed only with no token change.
NO_OUTPUT = {aten._assert_tensor_metadata.default}


class RegionError(Exception):
    """A site's region cannot be retargeted; ``site`` is the site's index."""

    def __init__(self, site: int, reason: str):
        super().__init__(f"site {site}: {reason}")
        self.site = site
        self.reason = reason


@dataclass(frozen=True)
class Track:
    """Where a region tensor keeps its tokens: dim, segments (None = unknown), owning site."""

    dim: int
    segments: Segments | None
    site: int


@dataclass
class SiteOps:
    """What the propagation needs from a site to close its region, and what it records."""

    weights: Node  # the site's merge weights A
    layout_args: tuple[int, int, int, int, int]  # h, w, th, tw, frames
    positions: Callable[[Node], Node]  # merged positions (B, M) of the group, available before a node
    image_tokens: int
    region: set[Node] = field(default_factory=set)  # nodes whose token count changed
    closers: list[Node] = field(default_factory=list)  # inserted unmerge / gather_positions nodes


def _segments_of(track: Track) -> Segments:
    """A track's segments; unknown ones cannot place a cut or a merged span."""
    if track.segments is None:
        raise ValueError("token segments unknown")
    return track.segments


def _offset(track: Track) -> int:
    """Start of the merged (changed) segment."""
    start = 0
    for old, new in _segments_of(track):
        if old != new:
            return start
        start += old
    raise ValueError("no merged segment")


def _map_pos(p: int, segs: Segments) -> int:
    """Old token position -> new one; must fall on a segment boundary or inside an untouched one."""
    o = n = 0
    for old, new in segs:
        if p == o:
            return n
        if o < p < o + old:
            if old != new:
                raise ValueError(f"position {p} cuts a merged segment")
            return n + (p - o)
        o, n = o + old, n + new
    if p == o:
        return n
    raise ValueError(f"position {p} outside {o} tokens")


def _cut(segs: Segments, start: int, end: int) -> Segments:
    """Segments inside old positions [start, end) (boundaries already validated)."""
    out, o = [], 0
    for old, new in segs:
        a, b = max(start, o), min(end, o + old)
        if a < b:
            out.append((b - a, b - a) if old == new else (old, new))
        o += old
    return tuple(out)


def _blocks(a: list[int], b: list[int]) -> list[tuple[range, range]]:
    """Aligned dim groups of a view from shape ``a`` to ``b`` (equal products)."""
    i = j = 0
    out = []
    while i < len(a) and j < len(b):
        si, sj, pa, pb = i, j, a[i], b[j]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                pa *= a[i]
                i += 1
            else:
                pb *= b[j]
                j += 1
        out.append((range(si, i), range(sj, j)))
    if i < len(a) or j < len(b):
        out.append((range(i, len(a)), range(j, len(b))))
    return out


def view_shape(old_in: list[int], new_in: list[int], old_out: list[int], tokens: dict[int, int]) -> list[int]:
    """The target shape of a view after its input changed from ``old_in`` to ``new_in``.

    ``tokens`` maps old token counts to new ones, to resolve a dim split out of a flattened one.
    """
    new_out = list(old_out)
    for ia, ib in _blocks(old_in, old_out):
        changed = [d for d in ia if old_in[d] != new_in[d]]
        if not changed:
            continue
        if len(changed) > 1:
            raise ValueError(f"view {old_in}->{old_out}: several changed dims in one group")
        d = changed[0]
        if len(ib) == 1:
            new_out[ib[0]] = math.prod(new_in[k] for k in ia)
            continue
        pre = math.prod(old_in[k] for k in ia if k < d)
        direct = [o for o in ib if old_out[o] == old_in[d] and math.prod(old_out[k] for k in ib if k < o) == pre]
        if len(direct) == 1:
            new_out[direct[0]] = new_in[d]
            continue
        cands = []
        for o in ib:
            if old_in[d] % old_out[o] == 0 and old_out[o] in tokens:
                if new_in[d] * old_out[o] == old_in[d] * tokens[old_out[o]]:
                    cands.append(o)
        if len(cands) != 1:
            raise ValueError(f"view {old_in}->{old_out}: cannot tell which dim holds the tokens")
        new_out[cands[0]] = tokens[old_out[cands[0]]]
    return new_out


def _attr(graph: Graph, node: Node) -> Any:
    """The object a ``get_attr`` node names in the graph's module (None if it cannot be resolved)."""
    obj: Any = graph.owning_module
    for part in str(node.target).split("."):
        obj = getattr(obj, part, None)
    return obj


def _hint(s: Any) -> int:
    """A size as a plain int without guarding: a symbolic (dynamic batch) size gives its example value.

    Only used to find which dims hold the tokens (token counts are always static); symbolic entries
    of size arguments are kept as they are (see :meth:`Retargeter._sizes`), never replaced by the hint.
    """
    if isinstance(s, torch.SymInt):
        return int(_optimization_hint(s))
    return int(s)


def _static(s: Any) -> bool:
    return not isinstance(s, (torch.SymInt, Node))


class Retargeter:
    """Walks the graph once in order, re-evaluating and fixing every node downstream of the seeds."""

    def __init__(self, graph: Graph, fake_mode: Any, sites: dict[int, SiteOps]):
        self.graph = graph
        self.fake_mode = fake_mode
        self.sites = sites
        self.track: dict[Node, Any] = {}  # Track, or a list of Track|None for list outputs
        self.tokens: dict[int, int] = {}

    # -- helpers ------------------------------------------------------------------------------
    def _insert(self, before: Node, target: Callable[..., Any], args: tuple[Argument, ...]) -> Node:
        return insert_call(self.graph, self.fake_mode, before, target, args)

    def seed(self, node: Node, track: Track, old_shape: list[int]) -> None:
        """Start a region at ``node`` (a merge), whose input had ``old_shape``."""
        node.meta["old_shape"] = list(old_shape)
        old_tokens = old_shape[track.dim]
        self.track[node] = track
        new = int(node.meta["val"].shape[track.dim])
        self.tokens[old_tokens] = new

    # -- main loop ----------------------------------------------------------------------------
    def run(self, start: Node) -> None:
        seeded = False
        for node in list(self.graph.nodes):
            if node is start:
                seeded = True
            if not seeded or node in self.track:
                continue
            ins = [i for i in node.all_input_nodes if i in self.track]
            if not ins:
                continue
            owners = {self._owner(i) for i in ins}
            if len(owners) > 1:
                raise RegionError(min(owners), f"{node.name} mixes the regions of sites {sorted(owners)}")
            site = owners.pop()
            if node.op != "call_function":
                raise RegionError(site, f"merged tokens reach {node.op} {node.name} (no residual add closes the region)")
            if any(a.op == "get_attr" and isinstance(_attr(self.graph, a), torch.fx.GraphModule) for a in node.all_input_nodes):
                raise RegionError(
                    site,
                    f"merged tokens reach {node.name}, a higher-order op ({getattr(node.target, '__name__', node.target)}) "
                    "running a nested subgraph (e.g. a torch.autocast region in the model's code); the pass does not "
                    "retarget sizes inside nested subgraphs",
                )
            try:
                self._visit(node, site)
            except RegionError:
                raise
            except GuardOnDataDependentSymNode as e:
                raise RegionError(
                    site,
                    f"merged tokens meet a tensor whose length depends on tensor values at {node.name} (data-dependent "
                    f"size, e.g. text tokens selected by a mask): {str(e).splitlines()[0][:120]}",
                ) from e
            except Exception as e:  # noqa: BLE001 - any failure means this site cannot be rewritten
                raise RegionError(site, f"{node.format_node()}: {e}") from e

    def _owner(self, n: Node) -> int:
        t = self.track[n]
        if isinstance(t, list):
            return next(x.site for x in t if x is not None)
        return t.site

    def _visit(self, node: Node, site: int) -> None:
        ops = self.sites[site]
        if node.target is operator.getitem:
            whole, i = node_arg(node, 0), int_arg(node, 1, "index")
            src = self.track[whole]
            node.meta["old_shape"] = list(node.meta["val"].shape)
            node.meta["val"] = whole.meta["val"][i]
            if isinstance(src, list) and src[i] is not None:
                self.track[node] = src[i]
                ops.region.add(node)
            return
        if node.target is aten.sym_size.int:
            # A dynamic dim read as a symbol (the batch): unchanged by merging, nothing to track.
            # Token dims are static, so export never reads them this way; refuse if one is.
            src = node_arg(node, 0)
            tr = self.track.get(src)
            if not isinstance(tr, Track) or dim_arg(node, 1, fake(src).ndim) == tr.dim:
                raise ValueError("the size of a merged tensor's token dim is read as a symbol")
            return
        if mask_slot(node) is not None:
            self._merge_mask(node, site)
        if node.target in POINTWISE_BINARY:
            self._close(node, site)
            if not any(i in self.track for i in node.all_input_nodes):
                return  # closed by an unmerge: the node itself is back to its old shape
        old = meta_val(node)
        self._fix_args(node)
        new = evaluate(node, self.fake_mode)
        node.meta["val"] = new
        ops.region.add(node)
        if node.target in NO_OUTPUT:
            return
        cut = "old_slice_start" in node.meta  # a token-dim slice may keep only untouched tokens
        if isinstance(new, torch.Tensor):
            self.track[node] = self._track_of(node, old, new, site, allow_same=cut)
            if self.track[node] is None:
                del self.track[node]
        elif isinstance(new, (list, tuple)):
            self.track[node] = [
                self._track_of(node, o, n, site, index=i, allow_same=True) for i, (o, n) in enumerate(zip(old, new))
            ]
        else:
            raise ValueError(f"unexpected output {type(new).__name__}")

    # -- closing the region: residual adds and positional tables --------------------------------
    def _close(self, node: Node, site: int) -> None:
        ops = self.sites[site]
        for t in [i for i in node.all_input_nodes if i in self.track]:
            tr: Track = self.track[t]
            tv = t.meta["val"]
            old_shape = self._old_shape(t)
            old_tok = old_shape[tr.dim]
            for u in node.all_input_nodes:
                uv = u.meta.get("val")
                if u in self.track or not isinstance(uv, torch.Tensor):
                    continue
                ud = tr.dim - (tv.ndim - uv.ndim)
                if ud < 0 or uv.shape[ud] != old_tok or old_tok == 1:
                    continue  # broadcasts over tokens (gates, scalars): no conflict
                if node.target in (aten.add.Tensor, aten.sub.Tensor) and list(uv.shape) == old_shape:
                    if tr.dim != 1 or tv.ndim != 3:
                        raise RegionError(site, f"residual {node.name} sees tokens in dim {tr.dim} of a {tv.ndim}-d tensor")
                    un = self._insert(node, torch.ops.toma.unmerge.default, (t, ops.weights, *ops.layout_args, _offset(tr)))
                    node.replace_input_with(t, un)
                    ops.closers.append(un)
                    break
                if uv.ndim < tv.ndim or self._is_table(uv):
                    table = u
                    for _ in range(tv.ndim - uv.ndim):
                        table = self._insert(node, aten.unsqueeze.default, (table, 0))
                    args = (table, ops.positions(node), tr.dim, _offset(tr), ops.image_tokens)
                    g = self._insert(node, torch.ops.toma.gather_positions.default, args)
                    node.replace_input_with(u, g)
                    ops.closers.append(g)
                    continue
                raise RegionError(site, f"{node.name} combines merged tokens with an unmerged tensor of {tuple(uv.shape)}")

    def _merge_mask(self, node: Node, site: int) -> None:
        """An attention mask follows the merge: rows (queries) and columns (keys) of merged tokens are
        their destinations' (a gather, as RoPE rows), so ``(B, 1, S, S)`` / ``(B, 1, 1, S)`` masks fit."""
        slot = mask_slot(node)
        mask = slot.get(node) if slot is not None else None
        if not isinstance(mask, Node) or mask in self.track or not isinstance(mask.meta.get("val"), torch.Tensor):
            return
        ops = self.sites[site]
        new = mask
        for src, from_end in ((node_arg(node, 1), 1), (node_arg(node, 0), 2)):  # keys: last dim; queries: the one before
            tr = self.track.get(src)
            if not isinstance(tr, Track):
                continue
            mv = new.meta["val"]
            old_tok = self._old_shape(src)[tr.dim]
            d = mv.ndim - from_end
            if d < 0 or old_tok == 1 or mv.shape[d] != old_tok:
                continue
            while new.meta["val"].ndim < 4:  # a batch dim for the per-batch gather
                new = self._insert(node, aten.unsqueeze.default, (new, 0))
            d = new.meta["val"].ndim - from_end
            args = (new, ops.positions(node), d, _offset(tr), ops.image_tokens)
            new = self._insert(node, torch.ops.toma.gather_positions.default, args)
            ops.closers.append(new)
        if new is not mask:
            node.replace_input_with(mask, new)

    @staticmethod
    def _is_table(v: torch.Tensor) -> bool:
        """Broadcast over the batch: a positional table, not a per-sample stream."""
        return v.ndim >= 2 and v.shape[0] == 1

    # -- size arguments ---------------------------------------------------------------------------
    def _fix_args(self, node: Node) -> None:
        t = node.target
        src = node.args[0] if node.args and isinstance(node.args[0], Node) else None
        if src is None or not isinstance(self.track.get(src), Track):
            return
        tr: Track = self.track[src]
        old_in = [_hint(s) for s in self._old_shape(src)]
        new_in = [_hint(s) for s in src.meta["val"].shape]
        if t in VIEWS:
            old_out = list(fake(node).shape)
            shape = view_shape(old_in, new_in, [_hint(s) for s in old_out], self.tokens)
            node.args = (src, self._sizes(node.args[1], old_out, shape), *node.args[2:])
        elif t is aten.unflatten.int:
            d = dim_arg(node, 1, len(old_in))
            if d == tr.dim:
                old_out = list(fake(node).shape)
                shape = view_shape(old_in, new_in, [_hint(s) for s in old_out], self.tokens)
                n = len(ints_arg(node, 2))
                node.args = (src, node.args[1], self._sizes(node.args[2], old_out[d : d + n], shape[d : d + n]))
        elif t is aten.expand.default:
            sizes = ints_arg(node, 1)
            lead = len(sizes) - len(old_in)
            for i in range(len(sizes)):
                j = i - lead
                if j >= 0 and sizes[i] != -1 and old_in[j] != new_in[j] and sizes[i] == old_in[j]:
                    sizes[i] = new_in[j]
            node.args = (src, sizes, *node.args[2:])
        elif t is aten.split_with_sizes.default:
            d = dim_arg(node, 2, len(old_in))
            if d == tr.dim:
                split = [int(size) for size in ints_arg(node, 1)]
                bounds = [0]
                for size in split:
                    bounds.append(bounds[-1] + size)
                new_b = [_map_pos(b, _segments_of(tr)) for b in bounds]
                node.meta["old_split"] = split
                node.args = (src, [b - a for a, b in zip(new_b, new_b[1:])], *node.args[2:])
        elif t is aten.slice.Tensor:
            d = dim_arg(node, 1, len(old_in))
            if d == tr.dim:
                n = old_in[d]
                lo, hi = int_arg(node, 2, "start", 0), int_arg(node, 3, "end", n)
                start = min(max(lo + n if lo < 0 else lo, 0), n)
                end = min(max(hi + n if hi < 0 else hi, 0), n)
                if int_arg(node, 4, "step", 1) != 1:
                    raise ValueError("strided slice over tokens")
                node.meta["old_slice_start"] = start
                segs = _segments_of(tr)
                node.args = (src, d, _map_pos(start, segs), _map_pos(end, segs), 1)
        elif t in DIM_ARG:
            pos, default = DIM_ARG[t]
            if dim_arg(node, pos, len(old_in), default) == tr.dim:
                raise ValueError(f"{t} along the token dim")

    @staticmethod
    def _sizes(orig: Any, old: list[Any], new: list[int]) -> list[Any]:
        """A size argument after the token change: only the entries whose size changed (the tokens,
        always static) take their new value; every other entry stays as it was (an int, -1, or the
        node of a symbolic size such as a dynamic batch), so nothing symbolic gets baked in.

        With static shapes this is today's result: ``new`` itself.
        """
        if all(_static(s) for s in old) and all(_static(s) for s in orig):
            return list(new)
        if len(orig) != len(old):
            raise ValueError(f"size argument {orig} does not match the output rank {len(old)}")
        out = list(orig)
        for i, (o, n) in enumerate(zip(old, new)):
            if _hint(o) == n:
                continue
            if not _static(o) or not _static(orig[i]):
                raise ValueError(f"size {i} of {orig} folds the token count into a symbolic (batch) size")
            out[i] = n
        return out

    def _old_shape(self, n: Node) -> list[int]:
        return n.meta["old_shape"] if "old_shape" in n.meta else list(n.meta["val"].shape)

    # -- tracking ---------------------------------------------------------------------------------
    def _track_of(self, node: Node, old: Any, new: Any, site: int, index: int | None = None, allow_same: bool = False) -> Track | None:
        if not isinstance(new, torch.Tensor):
            return None
        if old.ndim != new.ndim:
            raise ValueError(f"rank changed {tuple(old.shape)} -> {tuple(new.shape)}")
        diff = [i for i in range(new.ndim) if old.shape[i] != new.shape[i]]
        if not diff:
            if allow_same:
                return None
            raise ValueError(f"output keeps its shape {tuple(old.shape)} while its input lost tokens (a reduction over tokens?)")
        if len(diff) > 1:
            raise ValueError(f"several dims changed {tuple(old.shape)} -> {tuple(new.shape)}")
        d = diff[0]
        if index is None:
            node.meta["old_shape"] = list(old.shape)
        o, n = int(old.shape[d]), int(new.shape[d])
        self.tokens.setdefault(o, n)
        return Track(d, self._segments(node, d, o, n, index), site)

    def _segments(self, node: Node, d: int, o: int, n: int, index: int | None) -> Segments | None:
        t = node.target
        if t is aten.cat.default:
            parts: list[tuple[int, int]] = []
            for x in nodes_arg(node, 0):
                tr = self.track.get(x)
                if isinstance(tr, Track) and tr.dim == d and tr.segments is not None:
                    parts.extend(tr.segments)
                else:
                    s = int(fake(x).shape[d])
                    parts.append((s, s))
            if sum(p[0] for p in parts) == o and sum(p[1] for p in parts) == n:
                return tuple(parts)
        src = node.args[0] if node.args and isinstance(node.args[0], Node) else None
        tr_src = self.track.get(src) if src is not None else None
        if isinstance(tr_src, Track) and tr_src.segments is not None and tr_src.dim == d:
            if t is aten.split_with_sizes.default and index is not None and "old_split" in node.meta:
                start = sum(node.meta["old_split"][:index])
                return _cut(tr_src.segments, start, start + o)
            if t is aten.slice.Tensor and "old_slice_start" in node.meta:
                a = node.meta["old_slice_start"]
                return _cut(tr_src.segments, a, a + o)
        for x in node.all_input_nodes:
            tr = self.track.get(x)
            if isinstance(tr, Track) and tr.segments is not None:
                if sum(s[0] for s in tr.segments) == o and sum(s[1] for s in tr.segments) == n:
                    return tr.segments
        return None
