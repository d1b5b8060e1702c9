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
from toma_export.graph.program import GroupInfo, SiteInfo, ToMAProgram

aten = torch.ops.aten


def _dim(d: Any) -> int:
    """A size as a plain int: symbolic sizes (a dynamic batch, a length read from a mask) count at the
    example's value; a data-dependent size without one counts as 0 (its node adds no FLOPs)."""
    if isinstance(d, int):
        return d
    hint = getattr(getattr(d, "node", None), "hint", None)
    return int(hint) if hint is not None else 0


def _shape(n: Any) -> list[int]:
    v = n.meta.get("val") if isinstance(n, Node) else None
    return [_dim(d) for d in v.shape] if isinstance(v, torch.Tensor) else []


def node_flops(n: Node) -> int:
    """Multiply-add FLOPs (x2) of one node; 0 for ops that are not matmul-class."""
    if n.op != "call_function":
        return 0
    t = n.target
    out = _shape(n)
    if t is aten.linear.default:
        return 2 * math.prod(out) * _shape(n.args[0])[-1]
    if t in (aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default, aten.matmul.default):
        a = n.args[1] if t in (aten.addmm.default, aten.baddbmm.default) else n.args[0]
        return 2 * math.prod(out) * _shape(a)[-1]
    if "scaled_dot_product" in str(t):
        q, k, v = (_shape(a) for a in n.args[:3])
        lead = math.prod(q[:-2])
        return 2 * lead * q[-2] * k[-2] * (q[-1] + v[-1])
    if t in (aten.conv2d.default, aten.convolution.default, aten.conv1d.default):
        w = _shape(n.args[1])
        return 2 * math.prod(out) * math.prod(w[1:])
    if t in (torch.ops.toma.merge_weights.default, torch.ops.toma.merge.default, torch.ops.toma.unmerge.default):
        a = _shape(n.args[1]) if t is not torch.ops.toma.merge_weights.default else _shape(n)
        c = _shape(n.args[0])[-1]
        return 2 * math.prod(a) * c
    return 0


def graph_flops(graph: Graph, names: set[str] | None = None) -> int:
    return sum(node_flops(n) for n in graph.nodes if names is None or n.name in names)


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
            lines.append("config: " + _format_config(self.config.to_dict()))
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
        from toma_export.models.architectures import architecture_family, latent_frames

        latent = latent_frames(architecture_family(model), frames, patch_size=getattr(model.config, "patch_size", None))
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
    from toma_export import methods
    from toma_export.eager.api import uses_graph_hook
    from toma_export.errors import ToMAError

    if not methods.get(config.method).graph_kv:
        return False
    try:
        return uses_graph_hook(model)
    except ToMAError:
        return True


def _format_config(config: dict[str, Any]) -> str:
    def show(k: str, v: Any) -> str:
        if isinstance(v, (list, tuple)) and len(v) == 2:
            return f"{v[0]}x{v[1]}"
        return ("auto" if k == "max_downsample" else "none") if v is None else str(v)

    return ", ".join(f"{k} {show(k, v)}" for k, v in config.items())


def format_artifact(folder: Any) -> str:
    """What an artifact folder holds (``toma-export inspect ARTIFACT``): model, full config, backend,
    precision, shapes, variants and destination groups. The manifest's schema and paths are checked;
    file hashes are not (``verify`` and ``run`` check them before anything runs)."""
    from toma_export.engines.artifact import read_manifest

    m = read_manifest(folder, verify_files=False)
    extra, shapes = m.extra, m.shapes
    lines = [f"artifact {folder}"]
    lines.append(f"model: {m.model.get('name')} ({m.model.get('class', '?')}, weights {str(m.model.get('weights_hash', '?'))[:12]})")
    lines.append(f"backend: {m.backend}, precision {extra.get('precision', 'fp32')}, selection {extra.get('selection', '?')}")
    lines.append("config: " + _format_config(m.config))
    batch = f"any batch 1..{shapes.get('batch_max') or 'n'} (built at {shapes['batch']})" if shapes.get("dynamic_batch") \
        else f"batch {shapes['batch']}"
    lines.append(f"shapes: {shapes['height']}x{shapes['width']} px, {batch}; inputs {shapes.get('inputs')}")
    if extra.get("input_dtypes"):
        lines.append(f"input dtypes: {', '.join(extra['input_dtypes'])}")
    lines.append("variants: " + ", ".join(f"{k} ({v})" for k, v in extra.get("variants", {}).items()))
    groups = extra.get("groups") or []
    if groups:
        lines.append("groups: " + ", ".join(f"{t} tiles x {k} destinations" for t, k in groups))
    sites = extra.get("sites") or []
    if sites:
        lines.append(f"sites: {len(sites)} merged (" + ", ".join(sorted({str(s.get('kind')) for s in sites})) + ")")
    if extra.get("build_seconds"):
        lines.append("build seconds: " + ", ".join(f"{k} {v}" for k, v in extra["build_seconds"].items()))
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in sorted(m.versions.items())))
    lines.append(f"files: {len(m.files)} (hashes checked by verify/run)")
    return "\n".join(lines)
