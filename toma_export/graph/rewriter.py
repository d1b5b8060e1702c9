"""Replace: insert ToMA custom ops at the matched sites of a captured graph (FX pass style).

``match`` is :func:`toma_export.graph.patterns.find_sites`; this module plans which sites merge
under a config and groups them by token layout, then ``replace``s: per site ``A = merge_weights(X,
idx)``, ``X' = merge(X, A)`` feeding the site's linears, and the region retargeting of ``shapes.py``
(which inserts ``unmerge`` before the residual add and ``gather_positions`` for RoPE). ``verify``:
fake-tensor evaluation of every touched node plus ``Graph.lint``; a site whose region cannot be
retargeted is left out (and reported), never half-rewritten.

Two graph variants come out of one rewrite, so a runtime can skip selection between scheduled
steps without ever leaving the graph world:

- *reuse*: each group's destinations ``idx`` ``(B, T, k)`` are extra graph inputs (after the model's
  own inputs, in group order);
- *select*: the same graph, where each group's ``idx`` is computed in-graph from its FIRST site's
  features (tile split + ``toma::facility_location``), exactly as the eager path selects, and
  returned as extra outputs (after the model's own outputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import Graph, GraphModule, Node
from torch.fx.experimental.proxy_tensor import make_fx

from toma_export import methods
from toma_export.config import SubLayer, ToMAConfig
from toma_export.core.selection import tokens_kept
from toma_export.core.tiles import TileLayout
from toma_export.graph.fx_util import copy_graph_module, fake_mode_of, insert_call
from toma_export.graph.patterns import Site
from toma_export.graph.program_base import Group, Plan
from toma_export.graph.shapes import RegionError, Retargeter, SiteOps, Track

toma = torch.ops.toma


def plan(found: list[Site], config: ToMAConfig, limit: int | None = None) -> Plan:
    """Choose the sites that merge under ``config`` and group them by layout (first-seen order).

    ``max_downsample=None`` keeps the highest-resolution level that has sites (the eager default);
    a model whose sites all share one grid (transformers) ignores the limit.
    """
    skipped: list[tuple[Site, str]] = []
    chosen: list[Site] = []
    grids = {s.grid for s in found}
    limit = limit or config.max_downsample
    if limit is None and found:
        limit = min(s.grid.downsample for s in found)
    for s in found:
        if not config.active:
            skipped.append((s, "ratio 0 / method none"))
        elif not methods.get(config.method).graph_pass:
            skipped.append((s, f"method {config.method!r} has no graph pass"))
        elif not config.merges(SubLayer(s.kind)):
            skipped.append((s, f"{SubLayer(s.kind).switch}=False"))
        elif len(grids) > 1 and limit is not None and s.grid.downsample > limit:
            skipped.append((s, f"level /{s.grid.downsample} above max_downsample {limit}"))
        else:
            layout = TileLayout.create(s.grid.h, s.grid.w, config.tile, config.remainder, s.grid.frames)
            k = tokens_kept(layout.tile_size, config.ratio)
            if layout.num_tiles == 0 or k >= layout.tile_size:
                skipped.append((s, "no tile to merge at this ratio"))
            else:
                chosen.append(s)
    groups: dict[TileLayout, Group] = {}
    site_group = []
    for i, s in enumerate(chosen):
        layout = TileLayout.create(s.grid.h, s.grid.w, config.tile, config.remainder, s.grid.frames)
        g = groups.setdefault(layout, Group(len(groups), layout, tokens_kept(layout.tile_size, config.ratio)))
        g.sites.append(i)
        site_group.append(g.index)
    return Plan(chosen, list(groups.values()), site_group, skipped, limit)


@dataclass
class Rewritten:
    """The reuse-variant graph and where each site ended up in it."""

    gm: GraphModule
    dest_inputs: list[Node]  # one placeholder per group
    site_x: list[Node]  # each site's features node X
    site_ops: list[SiteOps]


def _fake(fake_mode: Any, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    with fake_mode:
        return torch.empty(shape, dtype=dtype)


def rewrite_once(source: GraphModule, p: Plan, config: ToMAConfig) -> Rewritten:
    """Insert merge / unmerge for every site of ``p`` into a copy of ``source`` (raises RegionError)."""
    gm, vmap = copy_graph_module(source)
    graph = gm.graph
    fake_mode = fake_mode_of(gm)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    batch = vmap[p.sites[0].x].meta["val"].shape[0]  # an int, or the symbolic batch (dynamic_batch)
    dests: list[Node] = []
    anchor = placeholders[-1]
    for g in p.groups:
        with graph.inserting_after(anchor):
            ph = graph.placeholder(f"toma_dest_{g.index}")
        ph.meta["val"] = _fake(fake_mode, (batch, g.layout.num_tiles, g.k), torch.long)
        dests.append(ph)
        anchor = ph
    positions: dict[int, Node] = {}

    def positions_for(group: Group):
        def get(before: Node) -> Node:
            if group.index not in positions:
                positions[group.index] = insert_call(
                    graph, fake_mode, before, toma.merged_positions.default, (dests[group.index], *group.layout_args)
                )
            return positions[group.index]

        return get

    site_ops: dict[int, SiteOps] = {}
    site_x: list[Node] = []
    retarget = Retargeter(graph, fake_mode, site_ops)
    first_merge: Node | None = None
    shared: dict[int, Node] = {}
    for i, s in enumerate(p.sites):
        g = p.groups[p.site_group[i]]
        x = vmap[s.x]
        site_x.append(x)
        own = not (config.share_weights and g.index in shared)  # share_weights: first site's A for all
        if own:
            wargs = (x, dests[g.index], *g.layout_args, s.offset, float(config.temperature))
            shared[g.index] = insert_call(graph, fake_mode, x.next, toma.merge_weights.default, wargs)
        a = shared[g.index]
        xm = insert_call(graph, fake_mode, a.next if own else x.next, toma.merge.default, (x, a, *g.layout_args, s.offset))
        for c in s.consumers:
            vmap[c].replace_input_with(x, xm)
        merged = g.layout.merged_count(g.k)
        tail = s.tokens - s.offset - g.layout.num_tokens
        segs = tuple(seg for seg in ((s.offset, s.offset), (g.layout.num_tokens, merged), (tail, tail)) if seg[0])
        retarget.seed(xm, Track(1, segs, i), list(x.meta["val"].shape))
        site_ops[i] = SiteOps(a, g.layout_args, positions_for(g), g.layout.num_tokens, region={xm})
        if first_merge is None:
            first_merge = xm
    assert first_merge is not None
    retarget.run(first_merge)
    for i, ops in site_ops.items():
        if not any(n.target is toma.unmerge.default for n in ops.closers):
            raise RegionError(i, "no residual add closes the region (nothing to unmerge into)")
    graph.lint()
    gm.recompile()
    return Rewritten(gm, dests, site_x, [site_ops[i] for i in range(len(p.sites))])


def rewrite_graph(source: GraphModule, p: Plan, config: ToMAConfig) -> tuple[Rewritten | None, Plan]:
    """Rewrite all planned sites; a site whose region fails is dropped (reason kept) and we retry."""
    while p.sites:
        try:
            return rewrite_once(source, p, config), p
        except RegionError as e:
            bad = p.sites[e.site]
            rest = [s for s in p.sites if s is not bad]
            again = plan(rest, config, limit=p.limit)
            again.skipped = p.skipped + [(bad, e.reason)]
            p = again
    return None, p


def _tile_split(layout: TileLayout, offset: int, x: torch.Tensor) -> GraphModule:
    """ATen graph of ``layout.split(x[:, offset : offset + n])[0]`` (the core tiling, traced).

    ``x`` is the features' fake value. With a symbolic (dynamic) batch it is traced on that value
    in its own fake mode, so the batch stays a ``sym_size`` of the input instead of a constant.
    """

    def tiles(t: torch.Tensor) -> torch.Tensor:
        return layout.split(t[:, offset : offset + layout.num_tokens])[0]

    if any(isinstance(s, torch.SymInt) for s in x.shape):
        return make_fx(tiles, tracing_mode="fake", pre_dispatch=True)(x)
    return make_fx(tiles, pre_dispatch=True)(torch.empty(tuple(x.shape), dtype=x.dtype, device="meta"))


def add_selection(rw: Rewritten, p: Plan) -> GraphModule:
    """The *select* variant: each group's destinations computed in-graph at its first site."""
    gm, vmap = copy_graph_module(rw.gm)
    graph = gm.graph
    fake_mode = fake_mode_of(gm)
    idx_nodes = []
    for g in p.groups:
        first = p.sites[g.sites[0]]
        x = vmap[rw.site_x[g.sites[0]]]
        sub = _tile_split(g.layout, first.offset, x.meta["val"])
        sub_in = next(n for n in sub.graph.nodes if n.op == "placeholder")
        anchor = x.next
        with graph.inserting_before(anchor):
            tiles = graph.graph_copy(sub.graph, {sub_in: x})
        idx = insert_call(graph, fake_mode, anchor, toma.facility_location.default, (tiles, g.k))
        ph = vmap[rw.dest_inputs[g.index]]
        ph.replace_all_uses_with(idx)
        graph.erase_node(ph)
        idx_nodes.append(idx)
    out = next(n for n in graph.nodes if n.op == "output")
    out.args = ((*out.args[0], *idx_nodes),)
    graph.lint()
    gm.recompile()
    return gm

