"""``ToMAProgram``: the rewritten model, callable like the original, owning the destination state.

It holds two graph variants of one rewrite (see ``rewriter.py``): on scheduled steps (step 0, n, 2n,
... of a generation, ``recompute_every = n``) it runs the *select* variant, which computes each
group's destinations in-graph at the group's first site (as eager does) and returns them; on the
other steps it runs the *reuse* variant with the cached destinations as inputs, which contains no
selection at all. ``reset()`` starts a new generation.

Both variants run as FX graph modules on the captured weights (no copy); ``exported_program`` /
``select_exported_program`` re-export them (lazily) as ``ExportedProgram``s with flat inputs
``(*model inputs, *destinations)`` for compilers and exporters.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind
from torch.fx import GraphModule

from toma_export.config import ToMAConfig
from toma_export.core.tiles import TileLayout
from toma_export.graph.capture import Captured
from toma_export.graph.patterns import Site
from toma_export.graph.rewriter import Group, Plan, Rewritten
from toma_export.schedule import StepSchedule, run_step


@dataclass(frozen=True)
class SiteInfo:
    """A merged site: what it is, how many tokens it sees, which destination group it uses."""

    name: str
    kind: str  # a SubLayer value: "attn" | "cross" | "mlp"
    tokens: int  # image tokens merged at the site (h * w)
    channels: int
    group: int | None  # destination group, None when the site is not merged
    grid: tuple[int, int]
    offset: int = 0  # tokens before the image span (Flux single-stream text)
    sequence: int = 0  # all tokens of the site's input
    merged: int = 0  # image tokens after merging (0 when not merged)
    reason: str = ""  # why a found site is not merged


@dataclass(frozen=True)
class GroupInfo:
    index: int
    layout: TileLayout
    k: int
    sites: tuple[int, ...]


def _site_info(s: Site, group: Group | None, reason: str = "") -> SiteInfo:
    merged = group.layout.merged_count(group.k) if group else 0
    return SiteInfo(s.name, s.kind, s.image_tokens, s.channels, group.index if group else None,
                    (s.grid.h, s.grid.w), s.offset, s.tokens, merged, reason)


class FlatModule(torch.nn.Module):
    """A lifted graph plus the weights it was captured with, as an ``nn.Module`` with flat inputs.

    Weights keep their original names (``down_blocks.1....weight``), so exported artifacts do too.
    """

    def __init__(self, gm: GraphModule, captured: Captured):
        super().__init__()
        self.toma_graph = gm
        self._targets: list[str] = []
        specs = [s for s in captured.ep.graph_signature.input_specs if s.kind != InputKind.USER_INPUT]
        for spec, tensor in zip(specs, captured.lifted):
            *path, name = spec.target.split(".")
            mod: torch.nn.Module = self
            for part in path:
                if not hasattr(mod, part):
                    mod.add_module(part, torch.nn.Module())
                mod = getattr(mod, part)
            if spec.kind == InputKind.PARAMETER:
                param = tensor if isinstance(tensor, torch.nn.Parameter) else torch.nn.Parameter(tensor, requires_grad=False)
                mod.register_parameter(name, param)
            else:
                mod.register_buffer(name, tensor, persistent=spec.kind == InputKind.BUFFER and spec.persistent is not False)
            self._targets.append(spec.target)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        lifted = [functools.reduce(getattr, t.split("."), self) for t in self._targets]
        return tuple(self.toma_graph(*lifted, *args))


class ToMAProgram:
    """The rewritten model. Call it with the model's own keyword arguments."""

    def __init__(
        self,
        captured: Captured,
        config: ToMAConfig,
        plan: Plan,
        rewritten: Rewritten | None,
        select_gm: GraphModule | None,
    ):
        self.captured = captured
        self.config = config
        self.plan = plan
        self.groups = [GroupInfo(g.index, g.layout, g.k, tuple(g.sites)) for g in plan.groups]
        self.sites = [_site_info(s, plan.groups[plan.site_group[i]]) for i, s in enumerate(plan.sites)]
        self.skipped = [_site_info(s, None, why) for s, why in plan.skipped]
        #: Per merged site, names of the graph nodes whose token count the merge changed.
        self.site_regions: list[set[str]] = [{n.name for n in ops.region} for ops in rewritten.site_ops] if rewritten else []
        self._reuse_gm = rewritten.gm if rewritten else captured.ep.graph_module
        self._select_gm = select_gm
        self._lifted = captured.lifted
        self._exported: dict[str, ExportedProgram] = {}
        #: The generation's step state (select on scheduled steps, carry destinations between).
        self.schedule = StepSchedule(config.recompute_every)
        #: Replacements of the variants (CUDA graphs); empty: the graph modules themselves.
        self._variants: dict[str, Any] = {}

    # -- the denoising loop -------------------------------------------------------------------
    def reset(self) -> None:
        """Start a new generation: step 0, carried destinations dropped."""
        self.schedule.reset()

    @property
    def step(self) -> int:
        return self.schedule.step

    @property
    def selections(self) -> int:
        """Select-variant runs (each selects every group once)."""
        return self.schedule.selections

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if args:
            raise TypeError("call a ToMAProgram with the model's keyword arguments (as captured)")
        flat = self.captured.flatten(kwargs)
        # Destinations are per batch: a dynamic-batch program seeing another batch selects anew.
        keys = [(g.index, self._batch(g, flat)) for g in self.groups]
        if not self.groups:
            out = list(self._reuse_gm(*self._lifted, *flat))
        else:
            v = self._variants
            out = run_step(self.schedule, keys, v.get("select", self.run_select), v.get("reuse", self._run_reuse_flat), flat)
        self.schedule.advance()
        return self.captured.unflatten(list(out))

    # -- the two variants, flat -----------------------------------------------------------------
    def use_cuda_graphs(self) -> ToMAProgram:
        """Run both variants as CUDA graphs captured once per shape (:mod:`toma_export.runtime.cudagraph`);
        returns ``self``."""
        from toma_export.runtime.cudagraph import graphed_variants

        self._variants = graphed_variants({"select": self.run_select, "reuse": self._run_reuse_flat})
        return self

    def _run_reuse_flat(self, flat: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(self._reuse_gm(*self._lifted, *flat))

    def run_select(self, flat: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Model outputs followed by each group's freshly selected destinations."""
        assert self._select_gm is not None
        return tuple(self._select_gm(*self._lifted, *flat))

    def run_reuse(self, flat: list[torch.Tensor], destinations: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Model outputs given each group's destinations ``(B, T, k)`` int64."""
        if len(destinations) != len(self.groups):
            raise ValueError(f"expected {len(self.groups)} destination tensors (one per group), got {len(destinations)}")
        return tuple(self._reuse_gm(*self._lifted, *flat, *destinations))

    def flat_inputs(self, **kwargs: Any) -> list[torch.Tensor]:
        """The model's keyword arguments as the exported programs' leading flat inputs."""
        return self.captured.flatten(kwargs)

    def select(self, group: int, features: torch.Tensor) -> torch.Tensor:
        """The selection program of one group: destinations ``(B, T, k)`` from its features ``(B, N, C)``.

        ``features`` are the group's first site's image tokens (``SiteInfo.tokens`` of them).
        """
        g = self.groups[group]
        tiles, _ = g.layout.split(features)
        return torch.ops.toma.facility_location(tiles, g.k)

    def compile(self, **options: Any) -> ToMAProgram:
        """``torch.compile`` both variants in place (e.g. ``backend="inductor"``); returns ``self``.
        Under inductor the merge ops decompose to ATen and fuse (:func:`fuse_under_inductor`)."""
        from toma_export.graph.decompositions import fuse_under_inductor

        fuse_under_inductor()
        self._reuse_gm = torch.compile(self._reuse_gm, **options)  # type: ignore[assignment]
        if self._select_gm is not None:
            self._select_gm = torch.compile(self._select_gm, **options)  # type: ignore[assignment]
        return self

    # -- exported programs ----------------------------------------------------------------------
    @property
    def graph_module(self) -> GraphModule:
        """The reuse variant (lifted: weights, then model inputs, then destinations)."""
        return self._reuse_gm

    @property
    def select_graph_module(self) -> GraphModule | None:
        return self._select_gm

    def example_destinations(self) -> list[torch.Tensor]:
        """Valid destinations for the example inputs' batch (the first k slots of every tile). The batch
        is the merged sequence's own (the first flat input may not lead with it: Z-Image takes lists of
        per-sample ``(C, F, H, W)`` latents)."""
        flat = self.captured.flatten(self.captured.example_kwargs)
        return [torch.arange(g.k).expand(self._batch(g, flat), g.layout.num_tiles, g.k).contiguous() for g in self.groups]

    def _batch(self, group: GroupInfo, flat: list[Any] | None = None) -> int:
        """The batch ``group``'s destinations are for: a dynamic-batch program's from its batch-leading
        inputs ``flat``; otherwise the captured batch of the group's first merged sequence."""
        if flat is not None:
            for t, d in zip(flat, self.captured.batch_dims):
                if d is not None:
                    return int(t.shape[d])
        return int(self.plan.sites[group.sites[0]].x.meta["val"].shape[0])

    @property
    def dynamic_batch(self) -> bool:
        """Whether the program (and its exported programs) accept any batch at the captured resolution."""
        return self.captured.dynamic_batch

    def _dynamic_shapes(self, n_args: int) -> dict[str, Any] | None:
        """Flat ``dynamic_shapes`` for re-export: the model's batch-leading inputs and every group's
        destinations ``(B, T, k)`` share one batch ``Dim``; ``None`` with static shapes."""
        if not self.dynamic_batch:
            return None
        rng = self.captured.batch_range
        batch = torch.export.Dim("batch", max=rng[1]) if rng and rng[1] is not None else torch.export.Dim("batch")
        dims: list[Any] = [{0: batch} if d is not None else None for d in self.captured.batch_dims]
        dims += [{0: batch}] * (n_args - len(dims))  # destinations (reuse variant)
        return {"args": tuple(dims)}

    def _export(self, which: str) -> ExportedProgram:
        if which not in self._exported:
            flat = self.captured.flatten(self.captured.example_kwargs)
            if which == "select":
                if self._select_gm is None:
                    return self.exported_program
                gm, args = self._select_gm, flat
            else:
                gm, args = self._reuse_gm, flat + self.example_destinations()
            with torch.no_grad():
                self._exported[which] = torch.export.export(
                    FlatModule(gm, self.captured), tuple(args), dynamic_shapes=self._dynamic_shapes(len(args)), strict=False
                )
        return self._exported[which]

    @property
    def exported_program(self) -> ExportedProgram:
        """Reuse variant: inputs ``(*model inputs, *destinations)``, outputs the model's (flat)."""
        return self._export("reuse")

    @property
    def select_exported_program(self) -> ExportedProgram:
        """Select variant: inputs the model's, outputs ``(*model outputs, *destinations)``."""
        return self._export("select")

    def summary(self) -> str:
        lines = [f"{len(self.sites)} merged site(s) in {len(self.groups)} group(s)"]
        for g in self.groups:
            lines.append(f"  group {g.index}: {g.layout.h}x{g.layout.w} grid, tile {g.layout.th}x{g.layout.tw}, "
                         f"k={g.k}, {len(g.sites)} sites")
        return "\n".join(lines)
