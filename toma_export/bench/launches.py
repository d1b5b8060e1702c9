"""Launch and sync counter: the ATen ops one forward issues, sorted by what they cost on a GPU.

Run on the ``meta`` device, a real-size model (SDXL-base UNet at 1024², Flux.1 at full depth) is
counted in seconds with no weights: every op still dispatches, so the count is what a GPU would be
asked to do. A ``TorchDispatchMode`` sees each op and files it under one kind:

- ``kernels``: ops on the model's device that compute (each a kernel launch on a GPU);
- ``views``: aliasing or metadata-only ops (``view``, ``permute``, ``expand``, ``split``,
  ``empty``...): no launch;
- ``cpu_ops``: computing ops whose tensors are all on the CPU while the model is elsewhere: host
  work in the forward (a CPU step counter, an index built with ``torch.arange`` and no
  ``device=``); CPU views count as views;
- ``copies``: CPU <-> device ``_to_copy`` / ``copy_``: a blocking transfer on a GPU;
- ``reads``: device values read on the host (``.item()``, ``bool()``, ``int()``, ``torch.equal``):
  a full sync. A meta tensor holds no value, so such a read answers 0 (``True`` for ``equal``);
  the count is what matters.

Ops are attributed to the innermost module that carries a ToMA hook (a merged site, a block
with its tile-order hook, the denoiser's step hook) and, within it, to the merge machinery's
labelled regions (:mod:`toma_export.core.profiling`: ``select``, ``weights``, ``merge``,
``unmerge``, ``positions``, ``rope_rows``).

The ToMA rows are two consecutive steps of one generation with ``recompute_every=2``: step 0
selects, step 1 reuses, both through the model's own hooks and ``StepSchedule``. One uncounted
call at the shape comes first (grids and layouts cached per shape are then warm).
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

KINDS = ("kernels", "views", "cpu_ops", "copies", "reads")
_aten = torch.ops.aten
_READS = {_aten._local_scalar_dense.default, _aten.equal.default}
_COPIES = {_aten._to_copy.default, _aten.copy_.default, _aten.copy.default, _aten._copy_from.default}
#: Ops that allocate or relabel without a kernel.
_NO_LAUNCH = {_aten.empty.memory_format, _aten.empty_strided.default, _aten.empty_like.default, _aten.detach.default,
              _aten.lift_fresh.default, _aten.alias.default, _aten._unsafe_view.default}


def _aliases(func: Any) -> bool:
    """Whether ``func`` returns a view of an input (schema alias without write): no launch."""
    return any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)


def classify(func: Any, args: tuple, kwargs: dict, out: Any, device: str) -> str | None:
    """The kind of one dispatched op (:data:`KINDS`), None for profiler markers."""
    if func.namespace == "profiler":
        return None
    tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
    devices = {t.device.type for t in tensors}
    if isinstance(kwargs.get("device"), (str, torch.device)):
        devices.add(torch.device(kwargs["device"]).type)
    if func in _COPIES and "cpu" in devices and device in devices:
        return "copies"
    no_launch = func in _NO_LAUNCH or _aliases(func)
    if devices and devices <= {"cpu"} and device != "cpu":
        return "views" if no_launch else "cpu_ops"
    if func in _READS:
        return "reads"
    return "views" if no_launch else "kernels"


@dataclass
class Tally:
    """Counts of one run: per kind, per (owner, region, kind) and per op name of each kind."""

    kinds: Counter = field(default_factory=Counter)
    by_owner: Counter = field(default_factory=Counter)
    ops: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def total(self, kind: str) -> int:
        return int(self.kinds[kind])


class _FusedAttention(TorchFunctionMode):
    """Counts ``F.scaled_dot_product_attention`` as one kernel, as a GPU's fused attention backends
    run it; the meta and CPU devices would dispatch its math decomposition op by op."""

    def __init__(self, counter: LaunchCounter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not torch.nn.functional.scaled_dot_product_attention or self.counter.muted:
            return func(*args, **kwargs)
        self.counter.muted = True
        try:
            out = func(*args, **kwargs)
        finally:
            self.counter.muted = False
        self.counter.record("scaled_dot_product_attention", "kernels")
        return out


class LaunchCounter(TorchDispatchMode):
    """Counts ops by kind (:func:`classify`) for a model on ``device``; see the module doc.

    ``owner()`` names whom an op is charged to (default: nobody); ``region`` follows the profiler
    labels the merge machinery sets while :func:`toma_export.core.profiling.regions_enabled` is on.
    """

    def __init__(self, device: str, owner: Callable[[], str] = lambda: ""):
        super().__init__()
        self.device = device
        self.owner = owner
        self.tally = Tally()
        self.muted = False
        self._regions: list[str] = []
        self._attention = _FusedAttention(self)

    def __enter__(self) -> LaunchCounter:
        super().__enter__()
        self._attention.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._attention.__exit__(*exc)
        super().__exit__(*exc)

    def record(self, op: str, kind: str) -> None:
        t = self.tally
        t.kinds[kind] += 1
        t.by_owner[(self.owner(), self._regions[-1] if self._regions else "", kind)] += 1
        t.ops[kind][op] += 1

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.ops.profiler._record_function_enter_new.default:
            self._regions.append(str(args[0]).removeprefix("toma::"))
        elif func.namespace == "profiler" and self._regions:
            self._regions.pop()
        if func in _READS and any(isinstance(a, torch.Tensor) and a.device.type == "meta" for a in args):
            out: Any = _meta_value(func, args[0])
        else:
            out = func(*args, **kwargs)
        kind = None if self.muted else classify(func, args, kwargs, out, self.device)
        if kind is not None:
            self.record(str(func.overloadpacket.__name__), kind)
        return out


def _meta_value(func: Any, tensor: torch.Tensor) -> Any:
    """What a host read of a meta tensor answers (it holds no value): ``equal`` True, else zero."""
    if func is _aten.equal.default:
        return True
    if tensor.dtype == torch.bool:
        return False
    return 0.0 if tensor.dtype.is_floating_point else 0


class _Owners:
    """Innermost running module among ``names`` (qualified names), by torch forward hooks."""

    def __init__(self, model: torch.nn.Module, names: set[str]):
        self.stack: list[str] = []
        self.handles = []
        for name, module in model.named_modules():
            if name in names:
                self.handles.append(module.register_forward_pre_hook(self._enter(name)))
                self.handles.append(module.register_forward_hook(self._leave, always_call=True))

    def _enter(self, name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any) -> None:
            self.stack.append(name)

        return hook

    def _leave(self, *_: Any) -> None:
        self.stack.pop()

    def __call__(self) -> str:
        return self.stack[-1] if self.stack else ""

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def toma_sites(model: torch.nn.Module) -> set[str]:
    """Qualified names of the sub-modules of an applied model that carry a ToMA hook (the root excluded)."""
    out = set()
    for name, module in model.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        if name and registry is not None and any(n.startswith("toma_") for n in registry.hooks):
            out.add(name)
    return out


@contextlib.contextmanager
def meta_flux_grid(grid: tuple[int, int] | None, *, read: bool = True) -> Iterator[None]:
    """Flux's image grid on meta ids, where the ids hold no values: the hooks' own grid reader runs
    (with ``read``, so a :class:`LaunchCounter` counts its device reads; without, it would fail on
    meta outside one) and its answer is replaced by ``grid``, the workload's known grid. A no-op
    where the Flux adapter reads no ids."""
    import toma_export.eager.flux as flux

    original = getattr(flux, "image_grid", None)
    if original is None or grid is None:
        yield
        return

    def image_grid(img_ids: torch.Tensor) -> tuple[int, int] | None:
        if img_ids.device.type != "meta":
            return original(img_ids)
        if read:
            original(img_ids)  # counted; meta ids read as zeros, so its answer is not the grid
        return grid if grid[0] * grid[1] == img_ids.shape[-2] else None

    flux.image_grid = image_grid
    try:
        yield
    finally:
        flux.image_grid = original


@dataclass
class Row:
    """One counted forward: its label, kinds, per-owner counts and the ops behind each kind."""

    label: str
    tally: Tally

    def kinds(self) -> dict[str, int]:
        return {k: self.tally.total(k) for k in KINDS}


def _count(model: torch.nn.Module, kwargs: dict[str, Any], device: str, owners: _Owners | None) -> Tally:
    from toma_export.core.profiling import regions_enabled

    counter = LaunchCounter(device, owners or (lambda: ""))
    with torch.no_grad(), regions_enabled(), counter:
        model(**kwargs)
    return counter.tally


def count_forwards(model: torch.nn.Module, kwargs: dict[str, Any], config: Any | None, *,
                   grid: tuple[int, int] | None = None) -> list[Row]:
    """Rows for ``model(**kwargs)``: ``unmerged``, and with ``config`` ToMA ``select`` and ``reuse``.

    The ToMA rows apply ``config`` with ``recompute_every=2`` to a weight-sharing copy of ``model``,
    make one uncounted call, reset, and count steps 0 (select) and 1 (reuse) of the new generation.
    Per-owner counts use the applied model's hooked modules for every row, so the unmerged row's
    sites line up with the ToMA rows'. ``grid``: a Flux model's image grid (meta ids hold no values).
    """
    import dataclasses

    import toma_export
    from toma_export.bench.workloads import shared_clone

    device = next(model.parameters()).device.type
    if config is None:
        return [Row("unmerged", _count(model, kwargs, device, None))]
    clone = shared_clone(model)
    toma_export.apply(clone, dataclasses.replace(config, recompute_every=2))
    sites = toma_sites(clone)
    rows = []
    try:
        with meta_flux_grid(grid):
            plain = _Owners(model, sites)
            try:
                rows.append(Row("unmerged", _count(model, kwargs, device, plain)))
            finally:
                plain.remove()
            owners = _Owners(clone, sites)
            try:
                _count(clone, kwargs, device, owners)  # warm-up: the first call at this shape
                toma_export.reset(clone)
                rows.append(Row("select", _count(clone, kwargs, device, owners)))
                rows.append(Row("reuse", _count(clone, kwargs, device, owners)))
            finally:
                owners.remove()
        state = toma_export.state(clone)
        if state.selections == 0:
            raise RuntimeError("the ToMA rows selected nothing: no site merged at this shape")
    finally:
        toma_export.remove(clone)
    return rows


def role(name: str) -> str:
    """A hooked module's role: the last two parts of its name with indices dropped
    (``transformer_blocks.attn1``, ``single_transformer_blocks.attn``, ``attentions.transformer_blocks``
    for a UNet block's own ops)."""
    parts = [p for p in name.split(".") if not p.isdigit()]
    return ".".join(parts[-2:]) if parts else "outside"


def per_module(row: Row, kind: str = "kernels") -> Counter:
    """Ops of ``kind`` per hooked module (qualified name; ``""``: outside every hooked module)."""
    out: Counter = Counter()
    for (owner, _region, k), n in row.tally.by_owner.items():
        out[owner] += n if k == kind else 0
    return out


def per_site(rows: list[Row], kind: str = "kernels") -> dict[str, tuple[int, int, list[float]]]:
    """``role -> (merged modules, modules, mean ops per merged module in each row)`` over rows
    ``unmerged, select, reuse``: a module is merged when a ToMA row issues other ops there than the
    unmerged row (a site on a level the config leaves alone is not)."""
    counts = [per_module(r, kind) for r in rows]
    groups: dict[str, list[str]] = defaultdict(list)
    for name in counts[0].keys() | counts[1].keys():
        if name:
            groups[role(name)].append(name)
    out = {}
    for r, names in sorted(groups.items()):
        merged = [n for n in names if any(c[n] != counts[0][n] for c in counts[1:])]
        means = [sum(c[n] for n in merged) / len(merged) if merged else 0.0 for c in counts]
        out[r] = (len(merged), len(names), means)
    return out


def per_region(row: Row, kind: str = "kernels") -> dict[str, int]:
    """Ops of ``kind`` per labelled merge region (``""``: outside every region)."""
    out: Counter = Counter()
    for (_owner, region, k), n in row.tally.by_owner.items():
        if k == kind:
            out[region] += n
    return dict(out)


# -- the real-size report (scripts/count_launches.py) -------------------------------------------------
#: Configurations counted on the SDXL UNet, by the names issue tables use: the ``fast`` preset, the
#: ToMAConfig defaults (highest-resolution level, attention + MLP) and ``fast`` without cross-attention.
CONFIGS: dict[str, dict[str, Any]] = {
    "fast": {"ratio": 0.5, "merge_attn": True, "merge_cross": True, "merge_mlp": True, "max_downsample": 4},
    "default": {},
    "both-levels": {"ratio": 0.5, "merge_attn": True, "merge_cross": False, "merge_mlp": True, "max_downsample": 4},
}

#: Real-size targets: bench workload, model override, configurations counted, Flux image grid.
TARGETS: dict[str, tuple[str, str | None, tuple[str, ...], tuple[int, int] | None]] = {
    "sdxl": ("sdxl-unet", None, ("fast", "default", "both-levels"), None),
    "flux": ("flux", "flux-full", ("default",), (64, 64)),
}


@dataclass
class Counted:
    """Rows of one target and configuration."""

    target: str
    describe: str
    config: str
    rows: list[Row]


def count_target(target: str, configs: list[str] | None = None, dtype: torch.dtype = torch.float16) -> list[Counted]:
    """Count a real-size target (:data:`TARGETS`) on the meta device, once per configuration."""
    from toma_export.bench.workloads import Options, get_workload
    from toma_export.config import ToMAConfig

    workload, model, names, grid = TARGETS[target]
    built = get_workload(workload).build(Options(device="meta", model=model, dtype=dtype))
    return [Counted(target, built.describe, name,
                    count_forwards(built.model, built.kwargs, ToMAConfig(**CONFIGS[name]), grid=grid))
            for name in (configs or names)]


def markdown(counted: list[Counted]) -> str:
    """Per-forward, per-site and per-region tables of :func:`count_target` results."""
    lines = ["| model | config | step | kernels | vs unmerged | views | CPU ops | host-device copies | device reads |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in counted:
        base = c.rows[0].tally.total("kernels")
        for r in c.rows:
            k = r.kinds()
            lines.append(f"| {c.target} | {c.config} | {r.label} | {k['kernels']} | {k['kernels'] / base:.2f}x "
                         f"| {k['views']} | {k['cpu_ops']} | {k['copies']} | {k['reads']} |")
    lines += ["", "Kernels per merged module (mean over the modules of that role a ToMA step changes):", "",
              "| model | config | module | merged / all | unmerged | select | reuse | ToMA extra (reuse) |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    for c in counted:
        for name, (merged, total, (u, sel, reuse)) in per_site(c.rows).items():
            if merged:
                lines.append(f"| {c.target} | {c.config} | {name} | {merged} / {total} | {u:.1f} | {sel:.1f} "
                             f"| {reuse:.1f} | {reuse - u:+.1f} |")
    lines += ["", "Kernels per forward by merge region (`other`: outside every labelled region; selection is one "
              "op, `toma::facility_location`, outside them):", "",
              "| model | config | step | " + " | ".join(REGIONS[1:]) + " | other |",
              "|---|---|---|" + "---:|" * len(REGIONS)]
    for c in counted:
        for r in c.rows[1:]:
            reg = per_region(r)
            lines.append(f"| {c.target} | {c.config} | {r.label} | " + " | ".join(str(reg.get(x, 0)) for x in REGIONS[1:])
                         + f" | {reg.get('', 0)} |")
    return "\n".join(lines) + "\n"


#: The merge machinery's labelled regions (:mod:`toma_export.core.profiling`).
REGIONS = ("select", "weights", "merge", "unmerge", "positions", "rope_rows")
