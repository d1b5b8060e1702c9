"""``ToMAProgram``: the merge pass's program, owning the destination state.

It holds two graph variants of one rewrite (see ``rewriter.py``): on scheduled steps (step 0, n, 2n,
... of a generation, ``recompute_every = n``) it runs the *select* variant, which computes each
group's destinations in-graph at the group's first site (as eager does) and returns them; on the
other steps it runs the *reuse* variant with the cached destinations as inputs, which contains no
selection at all. ``reset()`` starts a new generation. Running, compiling and re-exporting are the
shared :class:`~toma_export.graph.program_base.GraphProgram`'s.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule

from toma_export.config import ToMAConfig
from toma_export.graph.capture import Captured
from toma_export.graph.patterns import Site, captured_sites
from toma_export.graph.program_base import (
    FlatModule, GraphPass, GraphProgram, Group, GroupInfo, Plan, ProgramResult, SiteInfo,
)
from toma_export.graph.rewriter import Rewritten, add_selection, plan, rewrite_graph


def _site_info(s: Site, group: Group | None, reason: str = "") -> SiteInfo:
    merged = group.layout.merged_count(group.k) if group else 0
    return SiteInfo(s.name, s.kind, s.image_tokens, s.channels, group.index if group else None,
                    (s.grid.h, s.grid.w), s.offset, s.tokens, merged, reason)


class ToMAProgram(GraphProgram):
    """The ToMA-rewritten model. Call it with the model's own keyword arguments."""

    def __init__(
        self,
        captured: Captured,
        config: ToMAConfig,
        plan: Plan,
        rewritten: Rewritten | None,
        select_gm: GraphModule | None,
    ):
        super().__init__(
            captured, config, plan,
            sites=[_site_info(s, plan.groups[plan.site_group[i]]) for i, s in enumerate(plan.sites)],
            skipped=[_site_info(s, None, why) for s, why in plan.skipped],
            # Per merged site, names of the graph nodes whose token count the merge changed.
            site_regions=[{n.name for n in ops.region} for ops in rewritten.site_ops] if rewritten else [],
            graph_module=rewritten.gm if rewritten else None,
            select_gm=select_gm,
            groups=[GroupInfo(g.index, g.layout, g.k, tuple(g.sites)) for g in plan.groups],
        )

    def select(self, group: int, features: torch.Tensor) -> torch.Tensor:
        """The selection program of one group: destinations ``(B, T, k)`` from its features ``(B, N, C)``.

        ``features`` are the group's first site's image tokens (``SiteInfo.tokens`` of them).
        """
        g = self.groups[group]
        tiles, _ = g.layout.split(features)
        return torch.ops.toma.facility_location(tiles, g.k)

    def summary(self) -> str:
        lines = [f"{len(self.sites)} merged site(s) in {len(self.groups)} group(s)"]
        for g in self.groups:
            lines.append(f"  group {g.index}: {g.layout.h}x{g.layout.w} grid, tile {g.layout.th}x{g.layout.tw}, "
                         f"k={g.k}, {len(g.sites)} sites")
        return "\n".join(lines)


class ToMAPass(GraphPass):
    """ToMA's merge pass: match sites, plan them under the config, insert merge / unmerge (reuse
    variant) and in-graph selection (select variant). A rewrite that fails for a reason no single
    site's region explains leaves every site unmerged, each reported with that reason."""

    name = "ToMA graph pass"

    def call(self, graph_module: GraphModule) -> ProgramResult:
        found = captured_sites(
            self.captured,
            "the model is not supported by the graph pass. Run it unmerged, or ToMA eagerly where an adapter exists "
            "(toma_export.apply).",
        )
        p = plan(found, self.config)
        rewritten: Rewritten | None = None
        select_gm: GraphModule | None = None
        try:
            if p.sites:
                rewritten, p = rewrite_graph(graph_module, p, self.config)
            if rewritten is not None:
                select_gm = add_selection(rewritten, p)
        except Exception as e:  # noqa: BLE001 - not attributable to one site: leave all unmerged, say why
            reason = f"rewrite failed ({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''})"
            p = Plan([], [], [], p.skipped + [(s, reason) for s in p.sites], p.limit)
            rewritten, select_gm = None, None
        return ProgramResult(ToMAProgram(self.captured, self.config, p, rewritten, select_gm), rewritten is not None)


__all__ = ["FlatModule", "GroupInfo", "SiteInfo", "ToMAPass", "ToMAProgram"]
