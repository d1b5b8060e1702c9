"""The shape every graph pass shares: a pass (torch's ``PassBase``) that makes a :class:`GraphProgram`.

A pass rewrites the lifted graph of a captured model under a config: ToMA's merge pass
(``graph/__init__.py`` -> :class:`~toma_export.graph.program.ToMAProgram`) and ToDo's key/value pass
(``kv_downsample`` -> ``KVProgram``). Both follow ``torch.fx.passes.infra.pass_base.PassBase``:
``requires`` (the graph is a ``torch.export`` capture: fake values on its inputs, well formed),
``call`` (the rewrite, on a copy: the captured graph stays as captured, since it is the source of
retries, FLOP counts and re-export), ``ensures`` (every graph the program runs lints, carries fake
values, and returns what the model returns). Both produce a :class:`GraphProgram`: the rewritten
model, callable like the original, with the sites it changed and those it left (and why).

A program runs one graph every step, unless its pass keeps per-generation state: then it has
destination groups and two variants of one rewrite, *select* (computes each group's destinations
in-graph and returns them) and *reuse* (takes them as inputs), stepped by
:func:`toma_export.schedule.run_step` on the program's :class:`~toma_export.schedule.StepSchedule`.
Both run as FX graph modules on the captured weights (no copy); ``exported_program`` /
``select_exported_program`` re-export them (lazily) with flat inputs ``(*model inputs, *destinations)``.
"""

from __future__ import annotations

import abc
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, cast

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind
from torch.fx import GraphModule
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from toma_export.config import ToMAConfig
from toma_export.core.tiles import TileLayout
from toma_export.errors import UnsupportedModelError
from toma_export.graph.capture import Captured
from toma_export.graph.fx_util import fake_mode_of, meta_val, tensor_val
from toma_export.graph.patterns import Site
from toma_export.schedule import StepSchedule, run_step


@dataclass(frozen=True)
class SiteInfo:
    """A site a pass found: what it is, how many tokens it sees, which destination group it uses."""

    name: str
    kind: str  # a SubLayer value: "attn" | "cross" | "mlp"
    tokens: int  # image tokens at the site (h * w)
    channels: int
    group: int | None  # destination group, None when the site has none (not merged, or a stateless pass)
    grid: tuple[int, int]
    offset: int = 0  # tokens before the image span (Flux single-stream text)
    sequence: int = 0  # all tokens of the site's input
    merged: int = 0  # image tokens after the pass (ToDo: image keys kept; 0 when not changed)
    reason: str = ""  # why a found site is not changed


@dataclass(frozen=True)
class GroupInfo:
    """Sites of one token layout sharing destinations (selected at ``sites[0]``)."""

    index: int
    layout: TileLayout
    k: int
    sites: tuple[int, ...]


@dataclass
class Group:
    """Sites of one token layout sharing destinations; selection runs at ``sites[0]``."""

    index: int
    layout: TileLayout
    k: int
    sites: list[int] = field(default_factory=list)  # indices into the program's site list

    @property
    def layout_args(self) -> tuple[int, int, int, int, int]:
        return (self.layout.h, self.layout.w, self.layout.th, self.layout.tw, self.layout.frames)


@dataclass
class Plan:
    """The sites a pass found: those it changes (graph order) and those it leaves, with the reason; for
    a pass with destinations (ToMA), their layout groups."""

    sites: list[Site]  # sites that merge, graph order
    groups: list[Group]
    site_group: list[int]
    skipped: list[tuple[Site, str]]  # found but not merged, and why
    limit: int | None  # the max_downsample applied


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
            assert spec.target is not None  # lifted inputs always name their parameter, buffer or constant
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


#: A graph variant as the program calls it: a graph module, or its ``torch.compile``d replacement.
GraphFn = Callable[..., Any]


class GraphProgram(abc.ABC):
    """The rewritten model a graph pass produces. Call it with the model's own keyword arguments.

    ``sites``: the sites the pass changed; ``skipped``: those found but left, with the reason;
    ``plan``: the :class:`~toma_export.graph.patterns.Site` objects behind both; ``site_regions``: per
    changed site, the names of the graph nodes the change touched; ``groups``: destination groups
    (empty for a stateless pass, which then runs one graph every step).
    """

    def __init__(
        self,
        captured: Captured,
        config: ToMAConfig,
        plan: Plan,
        sites: list[SiteInfo],
        skipped: list[SiteInfo],
        site_regions: list[set[str]],
        graph_module: GraphModule | None,
        select_gm: GraphModule | None = None,
        groups: list[GroupInfo] | None = None,
    ):
        self.captured = captured
        self.config = config
        self.plan = plan
        self.sites = sites
        self.skipped = skipped
        self.site_regions = site_regions
        self.groups: list[GroupInfo] = groups or []
        #: The graph run on reuse steps, or every step without groups (the captured graph when nothing changed).
        self._reuse_gm: GraphModule = graph_module if graph_module is not None else captured.ep.graph_module
        self._select_gm: GraphModule | None = select_gm
        self._reuse_fn: GraphFn = self._reuse_gm
        self._select_fn: GraphFn | None = select_gm
        self._lifted = captured.lifted
        self._exported: dict[str, ExportedProgram] = {}
        #: The generation's step state (select on scheduled steps, carry destinations between).
        self.schedule = StepSchedule(config.recompute_every)
        #: Replacements of the variants (CUDA graphs); empty: the graph modules themselves.
        self._variants: dict[str, Any] = {}

    @abc.abstractmethod
    def summary(self) -> str:
        """What the pass changed, in a few lines."""

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
            raise TypeError(f"call a {type(self).__name__} with the model's keyword arguments (as captured)")
        flat = self.captured.flatten(kwargs)
        if not self.groups:
            out = list(self._reuse_fn(*self._lifted, *flat))
        else:
            # Destinations are per batch: a dynamic-batch program seeing another batch selects anew.
            keys = [(g.index, self._batch(g, flat)) for g in self.groups]
            v = self._variants
            out = list(run_step(self.schedule, keys, v.get("select", self.run_select), v.get("reuse", self._run_reuse_flat), flat))
        self.schedule.advance()
        return self.captured.unflatten(out)

    # -- the variants, flat ---------------------------------------------------------------------
    def use_cuda_graphs(self) -> GraphProgram:
        """Run the variants as CUDA graphs captured once per shape (:mod:`toma_export.runtime.cudagraph`);
        returns ``self``."""
        from toma_export.runtime.cudagraph import graphed_variants

        self._variants = graphed_variants({"select": self.run_select, "reuse": self._run_reuse_flat})
        return self

    def _run_reuse_flat(self, flat: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(self._reuse_fn(*self._lifted, *flat))

    def run_select(self, flat: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Model outputs followed by each group's freshly selected destinations."""
        if self._select_fn is None:
            raise ValueError(f"{type(self).__name__} has no select variant (no destination groups)")
        return tuple(self._select_fn(*self._lifted, *flat))

    def run_reuse(self, flat: list[torch.Tensor], destinations: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Model outputs given each group's destinations ``(B, T, k)`` int64."""
        if len(destinations) != len(self.groups):
            raise ValueError(f"expected {len(self.groups)} destination tensors (one per group), got {len(destinations)}")
        return tuple(self._reuse_fn(*self._lifted, *flat, *destinations))

    def flat_inputs(self, **kwargs: Any) -> list[torch.Tensor]:
        """The model's keyword arguments as the exported programs' leading flat inputs."""
        return self.captured.flatten(kwargs)

    def compile(self, **options: Any) -> GraphProgram:
        """``torch.compile`` the variants in place (e.g. ``backend="inductor"``); returns ``self``.
        Under inductor the merge ops decompose to ATen and fuse (:func:`fuse_under_inductor`)."""
        from toma_export.graph.decompositions import fuse_under_inductor

        fuse_under_inductor()
        self._reuse_fn = torch.compile(self._reuse_gm, **options)
        if self._select_gm is not None:
            self._select_fn = torch.compile(self._select_gm, **options)
        return self

    # -- exported programs ----------------------------------------------------------------------
    @property
    def graph_module(self) -> GraphModule:
        """The reuse variant, or the one graph (lifted: weights, then model inputs, then destinations)."""
        return self._reuse_gm

    @property
    def select_graph_module(self) -> GraphModule | None:
        return self._select_gm

    def variants(self) -> list[GraphModule]:
        """Every graph the program runs: the reuse variant (or the one graph), then the select variant."""
        return [self._reuse_gm, *([self._select_gm] if self._select_gm is not None else [])]

    def example_destinations(self) -> list[torch.Tensor]:
        """Valid destinations for the example inputs' batch (the first k slots of every tile). The batch
        is the merged sequence's own (the first flat input may not lead with it: Z-Image takes lists of
        per-sample ``(C, F, H, W)`` latents)."""
        flat = self.captured.flatten(self.captured.example_kwargs)
        device = next((t.device for t in flat if isinstance(t, torch.Tensor)), torch.device("cpu"))  # export time, once
        return [torch.arange(g.k, device=device).expand(self._batch(g, flat), g.layout.num_tiles, g.k).contiguous()
                for g in self.groups]

    def _batch(self, group: GroupInfo, flat: list[Any] | None = None) -> int:
        """The batch ``group``'s destinations are for: a dynamic-batch program's from its batch-leading
        inputs ``flat``; otherwise the captured batch of the group's first merged sequence."""
        if flat is not None:
            for t, d in zip(flat, self.captured.batch_dims):
                if d is not None:
                    return int(t.shape[d])
        x = tensor_val(self.plan.sites[group.sites[0]].x)
        assert x is not None  # a merged site's features always carry their fake value
        return int(x.shape[0])

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
        """Reuse variant (or the one graph): inputs ``(*model inputs, *destinations)``, outputs the model's (flat)."""
        return self._export("reuse")

    @property
    def select_exported_program(self) -> ExportedProgram:
        """Select variant: inputs the model's, outputs ``(*model outputs, *destinations)`` (without groups:
        :attr:`exported_program`)."""
        return self._export("select")


# -- the pass ---------------------------------------------------------------------------------------
class PassCheckError(UnsupportedModelError):
    """A graph pass's precondition (``requires``) or postcondition (``ensures``) does not hold."""


class ProgramResult(PassResult):
    """torch's :class:`PassResult` (the graph every step runs, whether the pass changed anything) plus
    the :class:`GraphProgram` made from the rewrite."""

    program: GraphProgram

    def __new__(cls, program: GraphProgram, modified: bool) -> ProgramResult:
        result = cast(ProgramResult, super().__new__(cls, program.graph_module, modified))
        result.program = program
        return result


def _outputs(gm: GraphModule) -> list[Any]:
    out = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    args = out.args[0]
    return list(args) if isinstance(args, (list, tuple)) else [args]


def _signature(vals: list[Any]) -> list[tuple[tuple[int | str, ...], torch.dtype] | None]:
    """Shapes (a symbolic size by name: compared without guarding it) and dtypes of tensor values."""
    return [(tuple(d if isinstance(d, int) else str(d) for d in v.shape), v.dtype) if isinstance(v, torch.Tensor) else None
            for v in vals]


def _is_destinations(v: Any) -> bool:
    return isinstance(v, torch.Tensor) and v.dtype == torch.long and v.ndim == 3


def _difference(what: str, got: list[Any], expected: list[Any]) -> str | None:
    """Where ``got`` (a graph's inputs or outputs) stops being ``expected`` followed by destinations
    only; None when it is that."""

    def show(v: Any) -> str:
        (sig,) = _signature([v])
        return "no tensor" if sig is None else f"{list(sig[0])} {str(sig[1]).removeprefix('torch.')}"

    if len(got) < len(expected):
        return f"{len(got)} {what} where the capture has {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        if _signature([g]) != _signature([e]):
            return f"{what[:-1]} {i} {show(g)} where the capture has {show(e)}"
    for i, g in enumerate(got[len(expected):], len(expected)):
        if not _is_destinations(g):
            return f"extra {what[:-1]} {i} {show(g)}, not destinations (B, T, k) int64"
    return None


class GraphPass(PassBase):
    """A rewrite of one captured model under one config, in torch's pass shape (module doc).

    Subclasses implement :meth:`call`, returning a :class:`ProgramResult`. Calling the pass on the
    capture's graph module runs ``requires``, ``call`` and ``ensures``; ``ensures`` checks every graph
    the program runs (``PassBase`` checks the input module, which a copy-on-write pass leaves as is).
    """

    #: What the pass is called in its errors.
    name = "graph pass"

    def __init__(self, captured: Captured, config: ToMAConfig):
        self.captured = captured
        self.config = config

    def __call__(self, graph_module: GraphModule) -> ProgramResult:
        self.requires(graph_module)
        result = self.call(graph_module)
        for gm in result.program.variants():
            self.ensures(gm)
        return result

    @abc.abstractmethod
    def call(self, graph_module: GraphModule) -> ProgramResult:
        """Rewrite a copy of ``graph_module`` (the capture's) and make the program."""

    def run(self) -> GraphProgram:
        """The program of the capture's graph (``requires``, ``call``, ``ensures``)."""
        return self(self.captured.ep.graph_module).program

    def requires(self, graph_module: GraphModule) -> None:
        """The graph is the capture's ``torch.export`` graph: fake values on its inputs, well formed."""
        fake_mode_of(graph_module)  # a clear error for a graph without fake values (symbolic_trace)
        if graph_module is not self.captured.ep.graph_module:
            raise PassCheckError(
                f"the {self.name} rewrites the graph module of the capture it was made with "
                "(captured.ep.graph_module); it was given another one. Make the pass with that capture."
            )
        try:
            graph_module.graph.lint()
        except Exception as e:  # noqa: BLE001 - any lint failure is a malformed input graph
            raise PassCheckError(f"the {self.name} was given a malformed graph ({e}); capture the model again") from e

    def ensures(self, graph_module: GraphModule) -> None:
        """A graph the program runs is well formed and computes what the model returns: it lints, every
        computed node carries its fake value, the capture's inputs come first (then only destinations
        ``(B, T, k)`` int64), and the model's outputs keep their shapes and dtypes (then only destinations)."""
        source = self.captured.ep.graph_module

        def fail(why: str) -> PassCheckError:
            return PassCheckError(
                f"the {self.name} produced a graph that {why}; the rewrite is refused rather than run. Run "
                "`toma-export inspect` on the model and report it; the model runs unmerged meanwhile."
            )

        try:
            graph_module.graph.lint()
        except Exception as e:  # noqa: BLE001 - any lint failure is a malformed rewrite
            raise fail(f"does not lint ({e})") from e
        missing = [n.name for n in graph_module.graph.nodes
                   if n.op in ("placeholder", "call_function") and "val" not in n.meta]
        if missing:
            raise fail(f"has nodes without a fake value (meta['val']): {', '.join(missing[:5])}")
        inputs = [n.meta["val"] for n in graph_module.graph.nodes if n.op == "placeholder"]
        why = _difference("inputs", inputs, [n.meta["val"] for n in source.graph.nodes if n.op == "placeholder"])
        if why:
            raise fail(f"changes the model's inputs ({why})")
        why = _difference("outputs", [meta_val(n) for n in _outputs(graph_module)], [meta_val(n) for n in _outputs(source)])
        if why:
            raise fail(f"changes what the model returns ({why})")
