"""CUDA-graph runners: the select and the reuse computation captured once per shape, replayed on
the host schedule (``torch.cuda.CUDAGraph``).

A replay runs no Python, so the schedule stays on the host around it: the host decides select or
reuse (:class:`~toma_export.schedule.StepSchedule`), copies the step's inputs into the graph's
static input buffers, replays the matching graph and does the step's host bookkeeping. Carried
destinations are the schedule's persistent buffers: the select graph writes them in place, the
reuse graph reads them, so nothing but the step's inputs is copied per step.

- :class:`GraphedVariant`: a variant on flat tensors (a rewritten program's select/reuse graph
  module, an artifact's AOTInductor package) captured per input signature; the one stepper
  (:func:`~toma_export.schedule.run_step`) drives it like any variant.
- :class:`GraphedModel`: an eager-applied (or unpatched) diffusers model, called like the model.
  Its step hook's host code runs around the replay; the model body (with the site hooks) is what
  is captured, one graph per (variant, input signature).

Outputs are copied out of the graph's static outputs (one device copy), so a caller may keep them
across steps. Not thread-safe: one runner per stream of generations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from toma_export.errors import ToMAError


def require_cuda(what: str) -> None:
    if not torch.cuda.is_available():
        raise ToMAError(f"{what} needs a CUDA GPU (torch.cuda.is_available() is False); run the eager or "
                        "compiled path instead.")


def signature(flat: Sequence[Any]) -> Hashable:
    """What a captured graph is valid for: each leaf's shape, dtype and device, other leaves' values."""
    return tuple((tuple(t.shape), t.dtype, str(t.device)) if isinstance(t, torch.Tensor) else ("V", repr(t))
                 for t in flat)


@dataclass
class Captured:
    graph: Any  # torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]  # static input buffers, in the order of the call's tensor leaves
    outputs: Any  # static outputs (the captured call's return value)
    extra: Any = None  # what the capture observed (GraphedModel: the keys the select step wrote)


@dataclass
class GraphCache:
    """Captures per key; ``warmup`` eager runs on a side stream before each capture (as CUDA graphs
    require: lazy initialisation, cuBLAS workspaces, Triton autotuning happen outside the capture).
    Each graph has its own memory pool: select and reuse replay in no fixed order, which a shared
    pool would require."""

    warmup: int = 2
    graphs: dict[Hashable, Captured] = field(default_factory=dict)
    captures: int = 0
    replays: int = 0

    def capture(self, key: Hashable, run: Callable[[list[torch.Tensor]], Any], tensors: list[torch.Tensor],
                before: Callable[[], None] = lambda: None) -> Captured:
        """Capture ``run(static inputs)`` for ``key``; ``before()`` runs before every warm-up run and
        the capture (per-call host state the run expects)."""
        static = [t.detach().clone() for t in tensors]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                before()
                run(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        before()
        with torch.cuda.graph(graph):
            out = run(static)
        self.graphs[key] = entry = Captured(graph, static, out)
        self.captures += 1
        return entry

    def replay(self, entry: Captured, tensors: list[torch.Tensor]) -> Any:
        for dst, src in zip(entry.inputs, tensors):
            if dst.data_ptr() != src.data_ptr():
                dst.copy_(src)
        entry.graph.replay()
        self.replays += 1
        return entry.outputs


def _copy_out(out: Any) -> Any:
    leaves, spec = tree_flatten(out)
    return tree_unflatten([t.clone() if isinstance(t, torch.Tensor) else t for t in leaves], spec)


class GraphedVariant:
    """A variant on flat tensors, captured per input signature and replayed."""

    def __init__(self, fn: Callable[[list[torch.Tensor]], Sequence[torch.Tensor]], cache: GraphCache | None = None):
        require_cuda("a CUDA-graph variant")
        self.fn = fn
        self.cache = cache or GraphCache()

    def __call__(self, flat: list[torch.Tensor]) -> list[torch.Tensor]:
        key = (id(self), signature(flat))
        entry = self.cache.graphs.get(key)
        if entry is None:
            entry = self.cache.capture(key, lambda static: list(self.fn(list(static))), list(flat))
        return [t.clone() for t in self.cache.replay(entry, list(flat))]


def graphed_variants(variants: dict[str, Callable[[list[torch.Tensor]], Sequence[torch.Tensor]]]) -> dict[str, GraphedVariant]:
    """Every variant of a runner captured (one cache: its captures and replays counted together)."""
    cache = GraphCache()
    return {name: GraphedVariant(fn, cache) for name, fn in variants.items()}


class GraphedModel(torch.nn.Module):
    """A diffusers model (ToMA applied with ``toma_export.apply``, or not) run as CUDA graphs.

    Per call: the step hook's host code (grid, buffers, the select/reuse decision), then the replay
    of the captured body for that decision and input signature, then the step's end. Call it with
    the model's keyword arguments, as a pipeline does."""

    def __init__(self, model: torch.nn.Module, warmup: int = 2):
        super().__init__()
        require_cuda("the CUDA-graph runner")
        self.model = model
        self.cache = GraphCache(warmup=warmup)

    @property
    def _installed(self) -> Any:
        return getattr(self.model, "_toma_installed", None)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if args:
            raise TypeError("call the CUDA-graph runner with the model's keyword arguments")
        leaves, spec = tree_flatten(kwargs)
        tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        installed = self._installed
        root = getattr(installed, "root", None)
        if root is None or not hasattr(root, "pre_forward") or not hasattr(root, "fn_ref"):
            return _copy_out(self._replay(("plain", signature(leaves)), self.model, leaves, spec, tensors))
        root.pre_forward(self.model, **kwargs)  # host: grid, buffers, the decision
        ctx = root.active
        schedule = ctx.schedule
        selecting = schedule.selecting
        body = root.fn_ref.forward  # the model beneath its step hook (site hooks stay)
        key = ("select" if selecting else "reuse", id(ctx), signature(leaves))
        entry = self.cache.graphs.get(key)
        if entry is None:
            entry = self._capture_step(key, body, leaves, spec, tensors, ctx)
            out = entry.outputs
        else:
            out = self.cache.replay(entry, tensors)
        if selecting:
            schedule._fresh[:] = list(entry.extra)  # what the captured select step writes
        out = _copy_out(out)
        return root.post_forward(self.model, out)  # host: the step's end

    def _replay(self, key: Hashable, fn: Callable[..., Any], leaves: list, spec: Any, tensors: list[torch.Tensor]) -> Any:
        entry = self.cache.graphs.get(key)
        if entry is None:
            entry = self.cache.capture(key, lambda static: fn(**_rebuild(leaves, spec, static)), tensors)
            entry.graph.replay()  # the capture ran nothing: this call's outputs now
            return entry.outputs
        return self.cache.replay(entry, tensors)

    def _capture_step(self, key: Hashable, body: Callable[..., Any], leaves: list, spec: Any,
                      tensors: list[torch.Tensor], ctx: Any) -> Captured:
        schedule = ctx.schedule

        def before() -> None:  # every run of the body starts a fresh step's scratch
            ctx.begin_step()
            schedule._fresh.clear()

        entry = self.cache.capture(key, lambda static: body(**_rebuild(leaves, spec, static)), tensors, before)
        entry.extra = tuple(dict.fromkeys(schedule._fresh))
        schedule._fresh.clear()
        entry.graph.replay()  # the capture ran nothing: this step's outputs (and buffer writes) now
        return entry


def _rebuild(leaves: list, spec: Any, tensors: list[torch.Tensor]) -> dict[str, Any]:
    it = iter(tensors)
    return tree_unflatten([next(it) if isinstance(t, torch.Tensor) else t for t in leaves], spec)
