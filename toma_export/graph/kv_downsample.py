# mypy: disable-error-code="arg-type, union-attr, index, operator, assignment, misc"
# (FX node arguments are typed as a wide union; this file reads them as the ATen schemas define them.)
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
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch._guards import detect_fake_mode
from torch.fx import GraphModule, Node

from toma_export.baselines.todo import downsample_index
from toma_export.config import SubLayer, ToMAConfig
from toma_export.errors import UnsupportedModelError
from toma_export.graph.capture import Captured, capture
from toma_export.graph.grids import Grid
from toma_export.graph.patterns import LINEAR, SDPA, Site, captured_sites
from toma_export.graph.program import SiteInfo, ToMAProgram
from toma_export.graph.rewriter import Plan, copy_graph_module

aten = torch.ops.aten

#: Ops whose output has the token layout of every operand shaped like the output (per-token maths,
#: casts, norms over trailing dims); ``empty_like`` too: Wan's RoPE writes into one per position.
_SAME_LAYOUT = {
    aten.mul.Tensor, aten.mul.Scalar, aten.add.Tensor, aten.add.Scalar, aten.sub.Tensor, aten.sub.Scalar,
    aten.div.Tensor, aten.div.Scalar, aten.neg.default, aten.pow.Tensor_Scalar, aten.rsqrt.default,
    aten.sqrt.default, aten.exp.default, aten.tanh.default, aten.sigmoid.default, aten.gelu.default,
    aten.silu.default, aten.relu.default, aten.abs.default, aten.masked_fill.Scalar, aten.where.self,
    aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten.to.other, aten._to_copy.default,
    aten.type_as.default, aten.clone.default, aten.contiguous.default, aten.alias.default,
    aten.detach.default, aten.lift_fresh_copy.default, aten.dropout.default, aten.empty_like.default,
    aten.zeros_like.default, aten.ones_like.default, aten.copy.default,
}
_NORMS = {aten.rms_norm.default, aten.layer_norm.default, aten.native_layer_norm.default}
#: Ops that only regroup dims: the sequence dim maps by its size and the product of the dims before it.
_RESHAPES = {
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.unflatten.int,
    aten.flatten.using_ints, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.unsqueeze.default,
    aten.view_as_real.default, aten.view_as_complex.default,
}
_SPLITS = {aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default, aten.unsafe_split.Tensor}


def _val(n: object) -> Any:
    return n.meta.get("val") if isinstance(n, Node) else None


def _shape(n: object) -> tuple[Any, ...] | None:
    v = _val(n)
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def _dim(d: int, ndim: int) -> int:
    return d % ndim if ndim else d


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
        out = _shape(n)
        t = n.target
        if t in SDPA:
            return None
        if t in LINEAR:
            if crossed or out is None or d >= len(out) - 1:
                return None
            return walk(n.args[0], d, True, depth - 1)
        if t is aten.cat.default:
            cat_dim = _dim(n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0), len(out))
            if cat_dim != d:
                return next((r for p in n.args[0] if (r := walk(p, d, crossed, depth - 1)) is not None), None)
            start = 0
            for part in n.args[0]:
                r = walk(part, d, crossed, depth - 1)
                if r is not None:
                    return start + r
                start += int(_shape(part)[d])
            return None
        if t is aten.stack.default:
            s = _dim(n.args[1] if len(n.args) > 1 else 0, len(out))
            if s == d:
                return None
            d_in = d if d < s else d - 1
            return next((r for p in n.args[0] if (r := walk(p, d_in, crossed, depth - 1)) is not None), None)
        if t is aten.pad_sequence.default:  # equal-length per-sample sequences, batch first (no padding)
            seqs = n.args[0]
            batch_first = n.args[1] if len(n.args) > 1 else n.kwargs.get("batch_first", False)
            if not batch_first or d != 1 or len({_shape(q)[0] for q in seqs}) != 1:
                return None
            starts = {walk(q, 0, crossed, depth - 1) for q in seqs}
            return starts.pop() if len(starts) == 1 else None
        if t is operator.getitem:
            return self._item(n, d, crossed, depth)
        if out is None:
            return None
        if t is aten.permute.default:
            return walk(n.args[0], _dim(n.args[1][d], len(out)), crossed, depth - 1)
        if t is aten.transpose.int:
            a, b = (_dim(x, len(out)) for x in n.args[1:3])
            return walk(n.args[0], b if d == a else a if d == b else d, crossed, depth - 1)
        if t is aten.select.int:
            s = _dim(n.args[1], len(out) + 1)
            return walk(n.args[0], d if d < s else d + 1, crossed, depth - 1)
        if t in (aten.slice.Tensor, aten.narrow.default):
            src = _shape(n.args[0])
            s = _dim(n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0), len(src))
            if s != d:
                return walk(n.args[0], d, crossed, depth - 1)
            if t is aten.narrow.default:
                lo = int(n.args[2])
            else:
                lo = n.args[2] if len(n.args) > 2 else n.kwargs.get("start", 0)
                step = n.args[4] if len(n.args) > 4 else n.kwargs.get("step", 1)
                if step != 1:
                    return None
                lo = 0 if lo is None else int(lo)
                lo = lo + int(src[d]) if lo < 0 else lo
            return self._sliced(walk(n.args[0], d, crossed, depth - 1), lo, int(out[d]))
        if t in _RESHAPES:
            src = _shape(n.args[0])
            d_in = None if src is None else _reshaped_dim(out, src, d)
            return None if d_in is None else walk(n.args[0], d_in, crossed, depth - 1)
        if t in _NORMS:
            normalized = n.args[1]
            if d >= len(out) - len(normalized):
                return None
            return walk(n.args[0], d, crossed, depth - 1)
        if t in _SAME_LAYOUT:
            for a in n.all_input_nodes:
                if _shape(a) == out:
                    r = walk(a, d, crossed, depth - 1)
                    if r is not None:
                        return r
        return None

    def _item(self, n: Node, d: int, crossed: bool, depth: int) -> int | None:
        """``getitem`` of a split / chunk / unbind, or of ``native_layer_norm``'s output tuple."""
        src, i = n.args
        if not isinstance(src, Node) or src.op != "call_function":
            return None
        if src.target in _NORMS:
            return self._walk(src, d, crossed, depth) if i == 0 else None
        if src.target is aten.unbind.int:
            u = _dim(src.args[1] if len(src.args) > 1 else 0, len(_shape(src.args[0])))
            return self(src.args[0], d if d < u else d + 1, crossed, depth - 1)
        if src.target in _SPLITS:
            whole = _shape(src.args[0])
            s = _dim(src.args[2] if len(src.args) > 2 else src.kwargs.get("dim", 0), len(whole))
            inner = self(src.args[0], d, crossed, depth - 1)
            if s != d:
                return inner
            pieces = _val(src)
            lo = sum(int(p.shape[d]) for p in pieces[:i])
            return self._sliced(inner, lo, int(pieces[i].shape[d]))
        return None


@dataclass(frozen=True)
class _Slot:
    """Where an SDPA overload takes an argument: its position, and its keyword name."""

    pos: int | None
    name: str

    def get(self, n: Node) -> Any:
        if self.pos is not None and len(n.args) > self.pos:
            return n.args[self.pos]
        return n.kwargs.get(self.name)

    def set(self, n: Node, value: Node) -> None:
        if self.pos is not None and len(n.args) > self.pos:
            n.args = tuple(value if i == self.pos else a for i, a in enumerate(n.args))
        else:
            n.kwargs = {**n.kwargs, self.name: value}


#: Per SDPA overload: where its attention mask (bias) and ``is_causal`` are taken (None: no mask).
_SLOTS: dict[Any, tuple[_Slot | None, _Slot]] = {
    aten.scaled_dot_product_attention.default: (_Slot(3, "attn_mask"), _Slot(5, "is_causal")),
    aten._scaled_dot_product_flash_attention_for_cpu.default: (_Slot(None, "attn_mask"), _Slot(4, "is_causal")),
    aten._scaled_dot_product_efficient_attention.default: (_Slot(3, "attn_bias"), _Slot(6, "is_causal")),
    aten._scaled_dot_product_flash_attention.default: (None, _Slot(4, "is_causal")),
}


def _mask_slot(sdpa: Node) -> _Slot | None:
    return _SLOTS.get(sdpa.target, (None, None))[0]


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
    ks, vs = _shape(k), _shape(v)
    if ks is None or vs is None or len(ks) < 2 or len(vs) < 2 or ks[-2] != vs[-2]:
        return "keys and values of unknown or different lengths"
    if sdpa.target not in _SLOTS:
        return f"attention op {sdpa.target} is not one this pass knows the arguments of"
    if _SLOTS[sdpa.target][1].get(sdpa):
        return "causal attention: dropping keys would change which keys each query may see"
    walk = _KeyWalk(site)
    k_start = walk(k, len(ks) - 2)
    if k_start is None:
        return ("the image tokens could not be located in the attention's key sequence (no token-dim "
                "concatenation or projection of the site's input found walking back from the keys)")
    v_start = k_start if v is k else walk(v, len(vs) - 2)
    if v_start != k_start:
        return "values do not hold the image tokens where the keys do"
    slot = _mask_slot(sdpa)
    mask = slot.get(sdpa) if slot else None
    ms = _shape(mask) if isinstance(mask, Node) else None
    if isinstance(mask, Node) and (ms is None or ms[-1] not in (1, ks[-2])):
        return f"attention mask shaped {ms} does not index the {ks[-2]} keys"
    return int(ks[-2]), k_start


def _gather(gm: GraphModule, fake_mode: Any, before: Node, src: Node, dim: int, index: Node) -> Node:
    graph = gm.graph
    with graph.inserting_before(before):
        n = graph.call_function(aten.index_select.default, (src, dim, index))
    with fake_mode:
        n.meta["val"] = aten.index_select.default(src.meta["val"], dim, index.meta["val"])
    n.meta["nn_module_stack"] = before.meta.get("nn_module_stack", {})
    return n


def downsample_kv(source: GraphModule, sites: list[Site], ratio: float) -> KVRewrite:
    """A copy of ``source`` (a captured, lifted graph module) where each self-attention site of
    ``sites`` attends to the keys/values of its downsampled image grid, every text key kept.

    Inserts ``aten.index_select`` of K, V (and the mask's key columns) along the key sequence before
    each site's SDPA, with constant index buffers (attributes ``todo_kv_index_<i>`` of the returned
    module). Sites whose image keys cannot be located, or that would keep every key, are returned in
    ``skipped`` with the reason and left unchanged.
    """
    gm, vmap = copy_graph_module(source)
    fake_mode = detect_fake_mode([n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"])
    if fake_mode is None:
        raise UnsupportedModelError("the captured graph carries no fake tensors (meta 'val'); capture it with torch.export")
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
            device = _val(s.anchor.args[1]).device
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
    k, v = sdpa.args[1], sdpa.args[2]
    added = [_gather(gm, fake_mode, sdpa, k, k.meta["val"].ndim - 2, idx)]
    if v is not k:
        added.append(_gather(gm, fake_mode, sdpa, v, v.meta["val"].ndim - 2, idx))
    sdpa.args = (sdpa.args[0], added[0], added[-1], *sdpa.args[3:])
    slot = _mask_slot(sdpa)
    mask = slot.get(sdpa) if slot else None
    keys = int(k.meta["val"].shape[-2])
    masked = isinstance(mask, Node) and keys > 1 and int(mask.meta["val"].shape[-1]) == keys
    if masked and slot is not None:
        added.append(_gather(gm, fake_mode, sdpa, mask, mask.meta["val"].ndim - 1, idx))
        slot.set(sdpa, added[-1])
    try:
        args, kwargs = torch.fx.node.map_arg((sdpa.args, sdpa.kwargs), lambda a: a.meta["val"])
        with fake_mode:
            sdpa.target(*args, **kwargs)
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


class KVProgram(ToMAProgram):
    """The ToDo-rewritten model, callable like the original: one stateless graph (no select/reuse
    variants, no destination groups). ``sites`` are the downsampled self-attentions (``merged``: image
    keys kept), ``skipped`` the sites found but not downsampled and why, ``kv_sites`` the details."""

    def __init__(self, captured: Captured, config: ToMAConfig, rewrite: KVRewrite | None, skipped: list[tuple[Site, str]]):
        super().__init__(captured, config, Plan([], [], [], [], None), None, None)
        kv = rewrite.sites if rewrite else []
        skipped = skipped + (rewrite.skipped if rewrite else [])
        self.kv_sites = kv
        self.plan = Plan([k.site for k in kv], [], [], skipped, None)
        self.sites = [_info(k.site, k.kept - (k.keys - k.site.grid.tokens)) for k in kv]
        self.skipped = [_info(s, reason=why) for s, why in skipped]
        self.site_regions = [{k.sdpa} for k in kv]
        if rewrite is not None and kv:
            self._reuse_gm = rewrite.gm

    def summary(self) -> str:
        lines = [f"{len(self.sites)} self-attention(s) with downsampled keys/values (ToDo)"]
        lines += [f"  {k.site.name}: {k.keys} keys -> {k.kept}, image from key {k.image_start}"
                  + (", mask columns gathered" if k.masked else "") for k in self.kv_sites]
        return "\n".join(lines)


def rewrite_captured(captured: Captured, config: ToMAConfig, *, strict: bool = True, name: str = "the model") -> KVProgram:
    """Find the self-attention sites of a captured model and downsample their keys/values (ToDo).

    ``strict``: with an active config, a model where no site at all could be downsampled is refused
    (:class:`UnsupportedModelError` naming each site's reason); ``inspect`` passes False to report it.
    """
    found = captured_sites(captured, "ToDo through the graph pass does not support this model.")
    chosen, skipped = _plan(found, config)
    rewritten = downsample_kv(captured.ep.graph_module, chosen, config.ratio) if chosen else None
    program = KVProgram(captured, config, rewritten, skipped)
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
