"""Compile probe: what ``torch.compile`` makes of a model over a run of denoising steps.

A recording backend keeps every FX graph dynamo hands it and runs it as traced (``gm.forward``),
so the probe needs no compiler and runs on the ``meta`` device: a model built on meta is traced
at any size in seconds, and every tensor a graph holds on the CPU stands out against the
model's device. Per graph it reports:

- ``nodes``: ``call_function`` / ``call_method`` / ``call_module`` nodes (what inductor would lower);
- ``cpu_nodes``: those whose traced value (``example_value``) or a tensor argument is a CPU tensor
  while the model is elsewhere (host ops and copies to or from the host): inductor skips CUDA
  graphs for a graph with any;
- ``cpu_inputs``: placeholders holding CPU tensors (a CPU step counter, an index built on the host);
- ``mutated_inputs``: placeholders an in-place op writes (persistent state updated by the graph);
- ``ops``: the distinct ``toma::`` custom ops called (selection is ``toma::facility_location``).

Over the run it reports the number of graphs (each new graph is a compile or a recompile) and
dynamo's recompile reasons (``torch._dynamo.utils.guard_failures``, filled on every guard failure).

Whole-model compilation is ``torch.compile(model)``; regional compilation is diffusers'
``ModelMixin.compile_repeated_blocks`` (each module of a class named in ``_repeated_blocks``
compiled on its own), or, for a model that declares none, the same per-module compile on the
classes given.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.fx

#: Placeholder / value devices that count as "the model's" (anything but the CPU when probing on meta).
HOST = "cpu"


@dataclass
class GraphRecord:
    """One graph dynamo compiled."""

    name: str
    nodes: int
    cpu_nodes: list[str]
    cpu_inputs: list[str]
    mutated_inputs: list[str]
    ops: Counter = field(default_factory=Counter)

    @property
    def selects(self) -> bool:
        """Whether the graph runs selection (``toma::facility_location``)."""
        return self.ops["facility_location"] > 0


def _value(node: torch.fx.Node) -> Any:
    return node.meta.get("example_value", node.meta.get("val"))


def _on_host(value: Any, device: str) -> bool:
    return device != HOST and isinstance(value, torch.Tensor) and value.device.type == HOST


def _touches_host(node: torch.fx.Node, device: str) -> bool:
    """A node whose value or any tensor argument is on the CPU (a host op, or a copy to or from it)."""
    args = [a for a in node.all_input_nodes]
    return _on_host(_value(node), device) or any(_on_host(_value(a), device) for a in args)


def _in_place(node: torch.fx.Node) -> bool:
    """An op that writes its first argument: ``x.add_(1)``, ``torch.Tensor.copy_``, ``aten.add_``."""
    target = node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    if isinstance(target, torch._ops.OpOverload):
        return any(a.alias_info is not None and a.alias_info.is_write for a in target._schema.arguments)
    return name.endswith("_") and not name.endswith("__")


def _toma_op(node: torch.fx.Node) -> str | None:
    target = node.target
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)) and target.namespace == "toma":
        return str(target._opname if hasattr(target, "_opname") else target.__name__).split(".")[0]
    return None


def record_graph(gm: torch.fx.GraphModule, device: str, name: str) -> GraphRecord:
    """Read one dynamo graph: node count, host nodes and inputs, mutated inputs, ToMA ops."""
    computing = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")]
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    mutated = {n.args[0].name for n in computing
               if _in_place(n) and n.args and isinstance(n.args[0], torch.fx.Node) and n.args[0].op == "placeholder"}
    ops: Counter = Counter(op for n in computing if (op := _toma_op(n)) is not None)
    return GraphRecord(
        name=name,
        nodes=len(computing),
        cpu_nodes=[n.name for n in computing if _touches_host(n, device)],
        cpu_inputs=[n.name for n in placeholders if _on_host(_value(n), device)],
        mutated_inputs=sorted(mutated),
        ops=ops,
    )


class RecordingBackend:
    """A ``torch.compile`` backend that records each graph (:func:`record_graph`) and runs it as traced."""

    def __init__(self, device: str):
        self.device = device
        self.graphs: list[GraphRecord] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        self.graphs.append(record_graph(gm, self.device, f"graph{len(self.graphs)}"))
        return gm.forward


@dataclass
class Probe:
    """A compiled run: its graphs in compile order, the graphs made at each step, recompile reasons."""

    mode: str
    graphs: list[GraphRecord]
    per_step: list[int]
    recompile_reasons: list[str]

    def made_at(self) -> list[int]:
        """The step (call index) at which each graph was compiled."""
        return [step for step, n in enumerate(self.per_step) for _ in range(n)]

    def summary(self) -> dict[str, Any]:
        return dict(
            mode=self.mode, graphs=len(self.graphs), graphs_per_step=self.per_step,
            nodes=sum(g.nodes for g in self.graphs),
            cpu_nodes=sum(len(g.cpu_nodes) for g in self.graphs),
            cpu_inputs=sum(len(g.cpu_inputs) for g in self.graphs),
            mutated_inputs=sum(len(g.mutated_inputs) for g in self.graphs),
            selecting_graphs=sum(g.selects for g in self.graphs),
            recompiles=len(self.recompile_reasons),
        )


def regional_classes(model: torch.nn.Module) -> list[str]:
    """The block classes regional compilation compiles: the model's ``_repeated_blocks``."""
    return list(getattr(model, "_repeated_blocks", None) or [])


def compile_regions(model: torch.nn.Module, backend: Callable[..., Any], classes: Iterable[str] | None = None) -> int:
    """Compile every module of a class in ``classes`` (default: the model's ``_repeated_blocks``) on
    its own, as diffusers' ``compile_repeated_blocks`` does; returns how many were compiled."""
    names = set(classes if classes is not None else regional_classes(model))
    if not names:
        raise ValueError(f"{type(model).__name__} declares no _repeated_blocks; name the block classes to compile")
    compile_repeated: Callable[..., None] | None = getattr(model, "compile_repeated_blocks", None)
    if classes is None and compile_repeated is not None:
        compile_repeated(backend=backend)
        return sum(type(m).__name__ in names for m in model.modules())
    count = 0
    for module in model.modules():
        if type(module).__name__ in names:
            module.compile(backend=backend)
            count += 1
    return count


def probe(model: torch.nn.Module, kwargs: dict[str, Any], *, steps: int = 6, regional: bool = False,
          classes: Iterable[str] | None = None, step_kwargs: Callable[[int], dict[str, Any]] | None = None,
          reset: Callable[[], None] | None = None) -> Probe:
    """Compile ``model`` (whole, or ``regional``: its repeated blocks) with a recording backend and
    run ``steps`` calls of one generation (``reset()`` first when given; ``step_kwargs(i)`` overrides
    inputs per step, e.g. the timestep). The model's device is that of its first parameter.

    Regional compilation compiles modules in place (``module.compile``): probe a copy if the model
    is used afterwards.
    """
    import torch._dynamo
    from torch._dynamo.utils import guard_failures

    device = next(model.parameters()).device.type
    backend = RecordingBackend(device)
    torch._dynamo.reset()
    guard_failures.clear()
    call: Callable[..., Any]
    if regional:
        compile_regions(model, backend, classes)
        call = model
    else:
        call = torch.compile(model, backend=backend)
    if reset is not None:
        reset()
    per_step = []
    with torch.no_grad():
        for i in range(steps):
            before = len(backend.graphs)
            call(**dict(kwargs, **(step_kwargs(i) if step_kwargs else {})))
            per_step.append(len(backend.graphs) - before)
    reasons = list(itertools.chain.from_iterable(guard_failures.values()))
    torch._dynamo.reset()
    return Probe("regional" if regional else "whole", backend.graphs, per_step, reasons)


# -- targets (scripts/compile_probe.py) -------------------------------------------------------------
#: Probe targets on the meta device: bench workload, model override, ToMA configuration (a name of
#: ``launches.CONFIGS``), Flux image grid. ``flux`` is Flux.1 width at 2 + 4 blocks.
TARGETS: dict[str, tuple[str, str | None, str, tuple[int, int] | None]] = {
    "sdxl-tiny": ("sdxl-tiny-unet", None, "fast", None),
    "flux": ("flux", None, "default", (64, 64)),
    "sdxl": ("sdxl-unet", None, "fast", None),
}


@dataclass
class TargetProbe:
    target: str
    config: str
    regional: bool
    unmerged: Probe
    toma: Probe


def probe_target(target: str, regional: bool, steps: int = 6) -> TargetProbe:
    """Probe a target (:data:`TARGETS`) unmerged and with ToMA, whole-model or regional."""
    import toma_export
    from toma_export.bench.launches import CONFIGS, meta_flux_grid
    from toma_export.bench.workloads import Options, get_workload, shared_clone
    from toma_export.config import ToMAConfig

    workload, model, config, grid = TARGETS[target]
    built = get_workload(workload).build(Options(device="meta", model=model))
    with meta_flux_grid(grid, read=False):
        plain = probe(shared_clone(built.model), built.kwargs, steps=steps, regional=regional)
        clone = shared_clone(built.model)
        toma_export.apply(clone, ToMAConfig(**CONFIGS[config]))
        try:
            toma = probe(clone, built.kwargs, steps=steps, regional=regional, reset=lambda: toma_export.reset(clone))
        finally:
            toma_export.remove(clone)
    return TargetProbe(target, config, regional, plain, toma)


def markdown(probes: list[TargetProbe]) -> str:
    """One line per target, mode and row; then each ToMA run's recompile reasons, shortened."""
    lines = ["| model | compile | row | graphs | graphs per step | nodes | CPU nodes | CPU inputs | mutated inputs "
             "| graphs with selection | recompiles |", "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for p in probes:
        for label, run in (("unmerged", p.unmerged), (f"ToMA {p.config}", p.toma)):
            s = run.summary()
            lines.append(f"| {p.target} | {s['mode']} | {label} | {s['graphs']} | {s['graphs_per_step']} | {s['nodes']} "
                         f"| {s['cpu_nodes']} | {s['cpu_inputs']} | {s['mutated_inputs']} | {s['selecting_graphs']} "
                         f"| {s['recompiles']} |")
    reasons = [(p, r) for p in probes for r in dict.fromkeys(_short(x) for x in p.toma.recompile_reasons)]
    if reasons:
        lines += ["", "Recompile reasons of the ToMA runs (distinct, first line):", ""]
        lines += [f"- {p.target} {'regional' if p.regional else 'whole'}: `{r}`" for p, r in reasons]
    return "\n".join(lines) + "\n"


def _short(reason: str) -> str:
    """A guard failure's first line, without the compile id and the source comment."""
    line = reason.splitlines()[0]
    line = line.split(": ", 1)[-1]
    return line.split("  #")[0][:160]
