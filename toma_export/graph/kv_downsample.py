"""ToDo through the graph pass: gather the kept rows of K and V right before each self-attention.

ToDo (``baselines.todo``) keeps every query and output token and attends to the keys/values of a
nearest-neighbour-downsampled image grid only. In a captured graph the K/V projections, q/k-norms and
RoPE are all per token, so the keys ToDo attends to are exactly the rows of the model's own key
sequence at the kept tokens: gathering those rows of K and V (``aten.index_select`` along the
sequence dim, after RoPE) right before ``scaled_dot_product_attention`` *is* ToDo, and RoPE positions
and per-token norms follow by construction. (Design: the maintainers' brief for this pass.)

- Sites: self-attention sites of :func:`toma_export.graph.patterns.find_sites` (kind ``"attn"``), each
  with its SDPA node, image :class:`Grid` and the image offset inside the site's input ``x``.
  Cross-attention (keys from the text only) and MLPs are left alone.
- Where the image keys are: walked back from the SDPA's key (and value) argument by graph structure,
  never by module names: through per-token and reshape ops, permutes, channel splits, RoPE, a
  ``cat`` along the sequence dim (Flux-style ``cat([text_k, image_k])`` after the projections, SD3's
  ``cat([image_k, text_k])``, Qwen-Image) and the K/V projection, to the site's ``x`` (single-stream
  blocks project ``[text; image]`` at once: the image sits at the site's offset). A site whose image
  keys cannot be located is skipped with the reason, as the ToMA pass reports skipped sites.
- The index is ``[text positions] ∪ image_start + downsample_index(h, w, ratio)`` in key order; video
  grids downsample each frame's ``h x w`` grid (per-frame index plus the frame's offset). A mask
  ``(..., Sq, Sk)`` has its key columns gathered with the same index; a broadcast one is untouched.
- The program (:class:`KVProgram`) is stateless: one graph, no select/reuse variants, no destinations.
  :class:`KVPass` makes it in the pass shape ToMA's pass shares (``program_base``: requires, call, ensures).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule, Node
from torch.fx.node import Target

from toma_export.baselines.todo import downsample_index
from toma_export.config import SubLayer, ToMAConfig
from toma_export.errors import UnsupportedModelError
from toma_export.graph.capture import Captured, capture
from toma_export.graph.grids import Grid
from toma_export.graph.fx_util import (
    LAST_DIM_NORMS, LINEAR, RESHAPES, SDPA, SDPA_SLOTS, SPLITS, arg, copy_graph_module, dim_arg, evaluate, fake,
    fake_mode_of, fakes, insert_call, int_arg, ints_arg, mask_slot, node_arg, nodes_arg, norm_dim, shape_of,
)
from toma_export.graph.patterns import Site, captured_sites
from toma_export.graph.program_base import GraphPass, GraphProgram, Plan, ProgramResult, SiteInfo

aten = torch.ops.aten

#: Ops whose output has the token layout of every operand shaped like the output (per-token maths,
#: casts, norms over trailing dims); ``empty_like`` too: Wan's RoPE writes into one per position.
_SAME_LAYOUT: frozenset[Target] = frozenset({
    aten.mul.Tensor, aten.mul.Scalar, aten.add.Tensor, aten.add.Scalar, aten.sub.Tensor, aten.sub.Scalar,
    aten.div.Tensor, aten.div.Scalar, aten.neg.default, aten.pow.Tensor_Scalar, aten.rsqrt.default,
    aten.sqrt.default, aten.exp.default, aten.tanh.default, aten.sigmoid.default, aten.gelu.default,
    aten.silu.default, aten.relu.default, aten.abs.default, aten.masked_fill.Scalar, aten.where.self,
    aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten.to.other, aten._to_copy.default,
    aten.type_as.default, aten.clone.default, aten.contiguous.default, aten.alias.default,
    aten.detach.default, aten.lift_fresh_copy.default, aten.dropout.default, aten.empty_like.default,
    aten.zeros_like.default, aten.ones_like.default, aten.copy.default,
})
def _prod(xs: tuple[Any, ...]) -> tuple[int, tuple[str, ...]]:
    """Product of dims as (static part, symbolic dims by name): compared without guarding a symbolic batch."""
    out, syms = 1, []
    for x in xs:
        if isinstance(x, int):
            out *= x
        else:
            syms.append(str(x))
    return out, tuple(sorted(syms))


def _reshaped_dim(out: tuple[Any, ...], inp: tuple[Any, ...], d: int) -> int | None:
    """The input dim that output dim ``d`` of a reshape comes from (same size, same product before)."""
    before, size = _prod(out[:d]), out[d]
    if not isinstance(size, int):
        return None  # the sequence dim is static; a symbolic one is the batch
    hits = [i for i in range(len(inp)) if isinstance(inp[i], int) and inp[i] == size and _prod(inp[:i]) == before]
    return hits[0] if len(hits) == 1 else None


class _KeyWalk:
    """Where the site's image tokens lie along dim ``d`` of a node: walked back from an SDPA operand.

    Returns the start of the site's ``grid.tokens`` image tokens in that dim, or None when the walk
    cannot prove where they are. Only one projection (``aten.linear``) may be crossed: the one that
    turns the site's ``x`` into keys or values.
    """

    def __init__(self, site: Site):
        self.site = site
        self.n = site.grid.tokens
        self.memo: dict[tuple[Node, int, bool], int | None] = {}

    def __call__(self, node: object, d: int, crossed: bool = False, depth: int = 64) -> int | None:
        if not isinstance(node, Node) or depth <= 0:
            return None
        key = (node, d, crossed)
        if key not in self.memo:
            self.memo[key] = None
            self.memo[key] = self._walk(node, d, crossed, depth)
        return self.memo[key]

    def _sliced(self, start: int | None, lo: int, length: int) -> int | None:
        """Image start inside a slice ``[lo, lo + length)`` of a sequence whose image starts at ``start``."""
        if start is None or start < lo or start + self.n > lo + length:
            return None
        return start - lo

    def _walk(self, n: Node, d: int, crossed: bool, depth: int) -> int | None:
        site, walk = self.site, self
        if n is site.x:
            return site.offset if d == 1 else None
        if n.op != "call_function":
            return None
        out = shape_of(n)
        t = n.target
        if t in SDPA:
            return None
        if t is operator.getitem:
            return self._item(n, d, crossed, depth)
        if out is None:
            return None
        if t in LINEAR:
            if crossed or d >= len(out) - 1:
                return None
            return walk(n.args[0], d, True, depth - 1)
        if t is aten.cat.default:
            parts = nodes_arg(n, 0)
            if dim_arg(n, 1, len(out)) != d:
                return next((r for p in parts if (r := walk(p, d, crossed, depth - 1)) is not None), None)
            start = 0
            for part in parts:
                r = walk(part, d, crossed, depth - 1)
                if r is not None:
                    return start + r
                start += int(fake(part).shape[d])
            return None
        if t is aten.stack.default:
            s = dim_arg(n, 1, len(out))
            if s == d:
                return None
            d_in = d if d < s else d - 1
            return next((r for p in nodes_arg(n, 0) if (r := walk(p, d_in, crossed, depth - 1)) is not None), None)
        if t is aten.pad_sequence.default:  # equal-length per-sample sequences, batch first (no padding)
            seqs = nodes_arg(n, 0)
            if not arg(n, 1, "batch_first", False) or d != 1 or len({fake(q).shape[0] for q in seqs}) != 1:
                return None
            starts = {walk(q, 0, crossed, depth - 1) for q in seqs}
            return starts.pop() if len(starts) == 1 else None
        if t is aten.permute.default:
            return walk(n.args[0], norm_dim(ints_arg(n, 1)[d], len(out)), crossed, depth - 1)
        if t is aten.transpose.int:
            d0, d1 = dim_arg(n, 1, len(out)), dim_arg(n, 2, len(out))
            return walk(n.args[0], d1 if d == d0 else d0 if d == d1 else d, crossed, depth - 1)
        if t is aten.select.int:
            s = dim_arg(n, 1, len(out) + 1)
            return walk(n.args[0], d if d < s else d + 1, crossed, depth - 1)
        if t in (aten.slice.Tensor, aten.narrow.default):
            src = shape_of(n.args[0])
            if src is None:
                return None
            if dim_arg(n, 1, len(src)) != d:
                return walk(n.args[0], d, crossed, depth - 1)
            lo = int_arg(n, 2, "start")
            if t is aten.slice.Tensor:
                if int_arg(n, 4, "step", 1) != 1:
                    return None
                lo = lo + int(src[d]) if lo < 0 else lo
            return self._sliced(walk(n.args[0], d, crossed, depth - 1), lo, int(out[d]))
        if t in RESHAPES:
            src = shape_of(n.args[0])
            d_src = None if src is None else _reshaped_dim(out, src, d)
            return None if d_src is None else walk(n.args[0], d_src, crossed, depth - 1)
        if t in LAST_DIM_NORMS:
            if d >= len(out) - len(ints_arg(n, 1)):  # normalized over the trailing dims
                return None
            return walk(n.args[0], d, crossed, depth - 1)
        if t in _SAME_LAYOUT:
            for a in n.all_input_nodes:
                if shape_of(a) == out:
                    r = walk(a, d, crossed, depth - 1)
                    if r is not None:
                        return r
        return None

    def _item(self, n: Node, d: int, crossed: bool, depth: int) -> int | None:
        """``getitem`` of a split / chunk / unbind, or of ``native_layer_norm``'s output tuple."""
        src, i = n.args[0], int_arg(n, 1, "index")
        if not isinstance(src, Node) or src.op != "call_function":
            return None
        if src.target in LAST_DIM_NORMS:
            return self._walk(src, d, crossed, depth) if i == 0 else None
        whole = shape_of(src.args[0]) if src.args else None
        if whole is None:
            return None
        if src.target is aten.unbind.int:
            u = dim_arg(src, 1, len(whole))
            return self(src.args[0], d if d < u else d + 1, crossed, depth - 1)
        if src.target in SPLITS:
            inner = self(src.args[0], d, crossed, depth - 1)
            if dim_arg(src, 2, len(whole)) != d:
                return inner
            pieces = fakes(src)
            lo = sum(int(p.shape[d]) for p in pieces[:i])
            return self._sliced(inner, lo, int(pieces[i].shape[d]))
        return None


def frame_index(grid: Grid, ratio: float) -> torch.Tensor:
    """Kept image tokens of ``grid`` (row-major, frame-major for video): each frame's ``h x w`` grid
    downsampled alone (``baselines.todo.downsample_index``), shifted by the frame's first token."""
    per_frame = downsample_index(grid.frame_h, grid.w, ratio)
    step = grid.frame_h * grid.w
    return torch.cat([per_frame + f * step for f in range(grid.frames)])


@dataclass
class KVSite:
    """One self-attention whose keys/values are downsampled."""

    site: Site
    sdpa: str  # the SDPA node's name
    keys: int  # keys before (text + image)
    kept: int  # keys after
    image_start: int  # first image token in the key sequence
    masked: bool  # an attention mask had its key columns gathered


@dataclass
class KVRewrite:
    gm: GraphModule
    sites: list[KVSite]
    skipped: list[tuple[Site, str]]


def _plan(found: list[Site], config: ToMAConfig) -> tuple[list[Site], list[tuple[Site, str]]]:
    """Self-attention sites to downsample (one per SDPA); the rest with the reason. ToDo acts on
    self-attention keys/values only, whatever the ``merge_*`` switches say (as its eager adapters do);
    with several grid levels, ``max_downsample`` (default: the finest level) limits them as for ToMA."""
    chosen: list[Site] = []
    skipped: list[tuple[Site, str]] = []
    attn = [s for s in found if s.kind == SubLayer.ATTN.value]
    levels = {s.grid for s in attn}
    limit = config.max_downsample or (min(s.grid.downsample for s in attn) if attn else None)
    anchors: dict[Node, Site] = {}
    for s in found:
        if s.kind != SubLayer.ATTN.value:
            skipped.append((s, "ToDo downsamples self-attention keys/values only"))
        elif not config.active:
            skipped.append((s, "ratio 0 / method none"))
        elif len(levels) > 1 and limit is not None and s.grid.downsample > limit:
            skipped.append((s, f"level /{s.grid.downsample} above max_downsample {limit}"))
        elif s.anchor in anchors:
            skipped.append((s, f"its attention is already downsampled at {anchors[s.anchor].name}"))
        else:
            anchors[s.anchor] = s
            chosen.append(s)
    return chosen, skipped


def _locate(site: Site) -> tuple[int, int] | str:
    """(key length, image start in the key sequence), or why the image keys cannot be located."""
    sdpa = site.anchor
    k, v = sdpa.args[1], sdpa.args[2]
    ks, vs = shape_of(k), shape_of(v)
    if ks is None or vs is None or len(ks) < 2 or len(vs) < 2 or ks[-2] != vs[-2]:
        return "keys and values of unknown or different lengths"
    if sdpa.target not in SDPA_SLOTS:
        return f"attention op {sdpa.target} is not one this pass knows the arguments of"
    if SDPA_SLOTS[sdpa.target][1].get(sdpa):
        return "causal attention: dropping keys would change which keys each query may see"
    walk = _KeyWalk(site)
    k_start = walk(k, len(ks) - 2)
    if k_start is None:
        return ("the image tokens could not be located in the attention's key sequence (no token-dim "
                "concatenation or projection of the site's input found walking back from the keys)")
    v_start = k_start if v is k else walk(v, len(vs) - 2)
    if v_start != k_start:
        return "values do not hold the image tokens where the keys do"
    slot = mask_slot(sdpa)
    mask = slot.get(sdpa) if slot else None
    ms = shape_of(mask) if isinstance(mask, Node) else None
    if isinstance(mask, Node) and (ms is None or ms[-1] not in (1, ks[-2])):
        return f"attention mask shaped {ms} does not index the {ks[-2]} keys"
    return int(ks[-2]), k_start


def downsample_kv(source: GraphModule, sites: list[Site], ratio: float) -> KVRewrite:
    """A copy of ``source`` (a captured, lifted graph module) where each self-attention site of
    ``sites`` attends to the keys/values of its downsampled image grid, every text key kept.

    Inserts ``aten.index_select`` of K, V (and the mask's key columns) along the key sequence before
    each site's SDPA, with constant index buffers (attributes ``todo_kv_index_<i>`` of the returned
    module). Sites whose image keys cannot be located, or that would keep every key, are returned in
    ``skipped`` with the reason and left unchanged.
    """
    gm, vmap = copy_graph_module(source)
    fake_mode = fake_mode_of(gm)
    done: list[KVSite] = []
    skipped: list[tuple[Site, str]] = []
    for s in sites:
        where = _locate(s)
        if isinstance(where, str):
            skipped.append((s, where))
            continue
        keys, start = where
        with torch.inference_mode(False):  # a buffer made in inference mode could not be traced later
            image = frame_index(s.grid, ratio) + start
            if image.numel() >= s.grid.tokens:
                skipped.append((s, "this ratio keeps every image key of the grid"))
                continue
            device = fake(s.anchor.args[1]).device
            index = torch.cat([torch.arange(start), image, torch.arange(start + s.grid.tokens, keys)]).to(device)
        reason = _insert(gm, fake_mode, vmap[s.anchor], index, f"todo_kv_index_{len(done)}")
        if isinstance(reason, str):
            skipped.append((s, reason))
            continue
        done.append(KVSite(s, vmap[s.anchor].name, keys, int(index.numel()), start, reason))
    gm.graph.lint()
    gm.recompile()
    return KVRewrite(gm, done, skipped)


def _insert(gm: GraphModule, fake_mode: Any, sdpa: Node, index: torch.Tensor, name: str) -> bool | str:
    """Gather K, V and a key-indexed mask with ``index`` before ``sdpa``; whether the mask was gathered.
    The SDPA is re-evaluated on fake tensors; if that fails, everything inserted is taken out again
    and the reason returned (the site is never half-rewritten)."""
    graph = gm.graph
    gm.register_buffer(name, index, persistent=False)
    with graph.inserting_before(sdpa):
        idx = graph.get_attr(name)
    idx.meta["val"] = fake_mode.from_tensor(index, static_shapes=True)
    old_args, old_kwargs = sdpa.args, dict(sdpa.kwargs)
    k, v = node_arg(sdpa, 1), node_arg(sdpa, 2)

    def gather(src: Node, dim: int) -> Node:
        return insert_call(graph, fake_mode, sdpa, aten.index_select.default, (src, dim, idx))

    added = [gather(k, fake(k).ndim - 2)]
    if v is not k:
        added.append(gather(v, fake(v).ndim - 2))
    sdpa.args = (sdpa.args[0], added[0], added[-1], *sdpa.args[3:])
    slot = mask_slot(sdpa)
    mask = slot.get(sdpa) if slot else None
    keys = int(fake(k).shape[-2])
    masked = slot is not None and isinstance(mask, Node) and keys > 1 and int(fake(mask).shape[-1]) == keys
    if masked and slot is not None and isinstance(mask, Node):
        added.append(gather(mask, fake(mask).ndim - 1))
        slot.set(sdpa, added[-1])
    try:
        evaluate(sdpa, fake_mode)
    except Exception as e:  # noqa: BLE001 - reported as the site's reason, the site left as it was
        sdpa.args, sdpa.kwargs = old_args, old_kwargs
        for n in reversed([idx, *added]):
            graph.erase_node(n)
        delattr(gm, name)
        return f"the downsampled attention does not evaluate ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    return masked


def _info(s: Site, kept: int = 0, reason: str = "") -> SiteInfo:
    """``SiteInfo`` of a ToDo site: ``merged`` counts the image keys/values kept; no group."""
    return SiteInfo(s.name, s.kind, s.image_tokens, s.channels, None, (s.grid.h, s.grid.w), s.offset, s.tokens, kept,
                    reason)


class KVProgram(GraphProgram):
    """The ToDo-rewritten model, callable like the original: one stateless graph (no select/reuse
    variants, no destination groups). ``sites`` are the downsampled self-attentions (``merged``: image
    keys kept), ``skipped`` the sites found but not downsampled and why, ``kv_sites`` the details."""

    def __init__(self, captured: Captured, config: ToMAConfig, rewrite: KVRewrite | None, skipped: list[tuple[Site, str]]):
        kv = rewrite.sites if rewrite else []
        skipped = skipped + (rewrite.skipped if rewrite else [])
        super().__init__(
            captured, config, Plan([k.site for k in kv], [], [], skipped, None),
            sites=[_info(k.site, k.kept - (k.keys - k.site.grid.tokens)) for k in kv],
            skipped=[_info(s, reason=why) for s, why in skipped],
            site_regions=[{k.sdpa} for k in kv],
            graph_module=rewrite.gm if rewrite is not None and kv else None,
        )
        self.kv_sites = kv

    def summary(self) -> str:
        lines = [f"{len(self.sites)} self-attention(s) with downsampled keys/values (ToDo)"]
        lines += [f"  {k.site.name}: {k.keys} keys -> {k.kept}, image from key {k.image_start}"
                  + (", mask columns gathered" if k.masked else "") for k in self.kv_sites]
        return "\n".join(lines)


class KVPass(GraphPass):
    """ToDo's key/value pass: find the self-attention sites, choose them under the config, gather the
    kept rows of K and V (and a mask's key columns) before each one's SDPA."""

    name = "ToDo key/value graph pass"

    def call(self, graph_module: GraphModule) -> ProgramResult:
        found = captured_sites(self.captured, "ToDo through the graph pass does not support this model.")
        chosen, skipped = _plan(found, self.config)
        rewritten = downsample_kv(graph_module, chosen, self.config.ratio) if chosen else None
        program = KVProgram(self.captured, self.config, rewritten, skipped)
        return ProgramResult(program, bool(program.sites))


def rewrite_captured(captured: Captured, config: ToMAConfig, *, strict: bool = True, name: str = "the model") -> KVProgram:
    """Find the self-attention sites of a captured model and downsample their keys/values (ToDo).

    ``strict``: with an active config, a model where no site at all could be downsampled is refused
    (:class:`UnsupportedModelError` naming each site's reason); ``inspect`` passes False to report it.
    """
    program = KVPass(captured, config).run()
    assert isinstance(program, KVProgram)
    if strict and config.active and not program.sites:
        attn = [s for s in program.skipped if s.kind == SubLayer.ATTN.value]
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in attn[:8]) or "no self-attention site over an image grid"
        raise UnsupportedModelError(
            f"{name}: ToDo found no "
            f"self-attention whose keys/values it could downsample ({reasons}). Run `toma-export inspect --method todo` "
            "for the full report."
        )
    return program


def rewrite(
    model: torch.nn.Module, example_kwargs: dict[str, Any], config: ToMAConfig, *, dynamic_batch: bool = False,
    strict: bool = True,
) -> KVProgram:
    """Capture ``model(**example_kwargs)`` and downsample the keys/values of its self-attentions (ToDo)."""
    captured = capture(model, example_kwargs, dynamic_batch=dynamic_batch)
    return rewrite_captured(captured, config, strict=strict, name=type(model).__name__)
