"""Which merge sites the graph pass finds, their groups, and FLOPs (``toma-export inspect MODEL``).

With ``--method todo`` on a model without an eager adapter it reports the key/value graph pass
(``kv_downsample``): the self-attentions whose keys/values are downsampled, and why others are not.

FLOPs are counted from the exported graph's matmul-class nodes (linear, mm/bmm/addmm/baddbmm/
matmul, scaled-dot-product attention, convolution), 2 per multiply-add. "Covered" is the share of
the model's FLOPs spent inside merged regions (the site's linears, attention, activations up to the
residual add); "after" counts the rewritten graph, merge/unmerge costs included.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx import Graph, Node

from toma_export.config import ToMAConfig
from toma_export.graph.flops import graph_flops, node_flops
from toma_export.graph.program import GroupInfo, SiteInfo, ToMAProgram

aten = torch.ops.aten


@dataclass
class InspectReport:
    model: str
    height: int
    width: int
    ratio: float
    sites: list[SiteInfo]
    skipped: list[SiteInfo]
    groups: list[GroupInfo]
    total_flops: int
    covered_flops: int
    after_flops: int
    notes: list[str] = field(default_factory=list)
    config: ToMAConfig | None = None

    @property
    def covered_share(self) -> float:
        return self.covered_flops / self.total_flops if self.total_flops else 0.0

    def format(self) -> str:
        lines = [f"{self.model} at {self.height}x{self.width}, ratio {self.ratio}"]
        if self.config is not None:
            lines.append("config: " + format_config(self.config.to_dict()))
        found = len(self.sites) + len(self.skipped)
        kv = bool(self.sites) and all(s.group is None for s in self.sites)  # ToDo: keys/values downsampled
        if not found:
            lines.append(
                "no merge sites found: no norm -> Q/K/V -> attention -> residual, or norm -> MLP, region over an "
                "image token grid matched in this graph, so the rewritten program is the original model."
            )
        elif kv:
            lines.append(f"{found} site(s) found, {len(self.sites)} self-attention(s) with downsampled keys/values (ToDo)")
        else:
            lines.append(f"{found} site(s) found, {len(self.sites)} merged, in {len(self.groups)} group(s)")
        for g in self.groups:
            lines.append(
                f"  group {g.index}: {g.layout.h}x{g.layout.w} tokens, tile {g.layout.th}x{g.layout.tw}, keep {g.k}/tile, "
                f"{len(g.sites)} site(s)"
            )
        for s in self.sites:
            if s.group is None:
                lines.append(f"  [kv] {s.kind:<10} {s.name}: {s.tokens} image keys/values -> {s.merged}, queries kept"
                             + (f", {s.offset} text tokens first" if s.offset else ""))
                continue
            lines.append(
                f"  [g{s.group}] {s.kind:<10} {s.name}: {s.tokens} image tokens -> {s.merged}, {s.channels} ch"
                + (f", {s.offset} text tokens first" if s.offset else "")
            )
        for s in self.skipped:
            lines.append(f"  [--] {s.kind:<10} {s.name}: {s.tokens} image tokens, not merged ({s.reason})")
        if self.total_flops:
            lines.append(
                f"FLOPs: model {self.total_flops / 1e9:.3f} G; merge regions cover {100 * self.covered_share:.1f}%; "
                f"rewritten {self.after_flops / 1e9:.3f} G ({100 * self.after_flops / self.total_flops:.1f}%)"
            )
        lines.extend(self.notes)
        return "\n".join(lines)


def report_for(program: ToMAProgram, model: str, height: int, width: int, coverage: ToMAProgram | None = None) -> InspectReport:
    """Report of a rewritten program; ``coverage`` (a ratio-0.5 rewrite) gives regions when none merge."""
    graph = program.captured.ep.graph
    total = graph_flops(graph)
    regions = (coverage or program).site_regions
    covered = graph_flops(graph, set().union(*regions)) if regions else 0
    after = graph_flops(program.graph_module.graph)
    notes = []
    if coverage is not None and regions:
        notes.append("(coverage measured on a ratio-0.5 rewrite, since this ratio merges nothing)")
    return InspectReport(model, height, width, program.config.ratio, program.sites, program.skipped, program.groups,
                         total, covered, after, notes, program.config)


def inspect_model(
    model_name_or_path: str | torch.nn.Module, ratio: float = 0.5, height: int | None = None, width: int | None = None,
    config: ToMAConfig | None = None, frames: int = 1,
) -> InspectReport:
    """Capture ``model`` at ``height x width`` pixels (``frames`` pixel frames for video models), find and
    rewrite its sites, count FLOPs. Clips get a note with their latent frames and token grids."""
    from toma_export.graph import capture, rewrite_captured
    from toma_export.models import load_model
    from toma_export.models.inputs import example_inputs

    if isinstance(model_name_or_path, torch.nn.Module):
        model, name = model_name_or_path, type(model_name_or_path).__name__
    else:
        name = str(model_name_or_path)
        model = load_model(name)
    default = 256 if name.endswith("-tiny") or isinstance(model_name_or_path, torch.nn.Module) else 1024
    height, width = height or default, width or height or default
    config = config or ToMAConfig(ratio=ratio)
    captured = capture(model, example_inputs(model, height=height, width=width, frames=frames))
    rewrite: Any = functools.partial(rewrite_captured, strict=False)  # a report: zero sites are shown
    if _kv_pass(model, config):  # ToDo where eager apply and build take the key/value graph pass
        from toma_export.graph import kv_downsample

        rewrite = functools.partial(kv_downsample.rewrite_captured, strict=False)
    program = rewrite(captured, config)
    coverage = None
    if not program.sites and program.skipped and not config.active:
        coverage = rewrite(captured, ToMAConfig(**{**config.to_dict(), "ratio": 0.5}))
    report = report_for(program, name, height, width, coverage)
    if frames > 1:
        from toma_export.models.architectures import latent_frames
        from toma_export.models.spec import spec_for

        latent = latent_frames(spec_for(model), frames, patch_size=getattr(model.config, "patch_size", None))
        found = [*program.plan.sites, *(site for site, _ in program.plan.skipped)]
        grids = sorted({(s.grid.frames, s.grid.frame_h, s.grid.w) for s in found})
        report.notes.append(
            f"clip: {frames} pixel frames -> {latent} latent frames; token grids (frames x rows x cols): "
            + (", ".join(f"{f}x{h}x{w} ({f * h * w} tokens)" for f, h, w in grids) or "none")
        )
    return report


def _kv_pass(model: torch.nn.Module, config: ToMAConfig) -> bool:
    """Whether ``config``'s method runs on ``model`` through the key/value graph pass (ToDo on a
    model without an eager adapter; a plain module has none)."""
    import dataclasses

    from toma_export.errors import ToMAError
    from toma_export.methods import Route, route
    from toma_export.models.spec import spec_for

    try:
        spec: Any = spec_for(model)
    except ToMAError:
        spec = "module"
    probe = config if config.active else dataclasses.replace(config, ratio=0.5)
    try:  # the pass the method takes at any ratio: inspect reports the sites of a ratio-0 config too
        return route(spec, probe) is Route.KV_PASS
    except ToMAError:
        return False


def format_config(config: dict[str, Any]) -> str:
    """A config dict as one line (``tile 4x4``, ``max_downsample auto``): the config line of every report."""

    def show(k: str, v: Any) -> str:
        if isinstance(v, (list, tuple)) and len(v) == 2:
            return f"{v[0]}x{v[1]}"
        return ("auto" if k == "max_downsample" else "none") if v is None else str(v)

    return ", ".join(f"{k} {show(k, v)}" for k, v in config.items())
