"""The FLOP ceiling of a bench workload: how fast merging could make it if time followed FLOPs.

``ceiling(r) = FLOPs(unmerged forward) / FLOPs(ideal forward)``, where the ideal is the bench's own
ideal row at ratio ``r`` (:mod:`toma_export.bench.ideal`, the workload's ``ideal(r)``): the merged
sub-layers on ``(1 - r)·N`` tokens and no merge cost. A measured speed-up is read against it: the
ideal row's measured speed-up says how much of the FLOP saving the hardware turns into time, the
ToMA row's how much is left after the merge machinery.

What is counted: :func:`toma_export.graph.flops.count_flops`, the one FLOP count (torch's
``FlopCounterMode`` table: matmuls, convolutions, attention, a multiply-add as 2 FLOPs; plus the CPU
SDPA kernel and ToMA's custom ops as their batched matmuls, the eager CUDA path's fused Triton ops and
selection's tile similarity included; no elementwise work), so the ceiling is that of the
matmul/conv/attention work. ``inspect`` counts graph nodes with the same table.

How: every model is built and run on the ``meta`` device (``load_model(..., device="meta")`` and
meta inputs), so FLOPs come from shapes alone and the real-size models (SDXL 1024², Flux, SD3.5,
Wan, Qwen-Image) take seconds and no weight memory; meta and CPU counts agree exactly
(tests/test_flop_ceiling.py). The unmerged and ideal rows build on meta for every workload. The
ToMA row mostly does too; its one host read, Flux's image grid from ``img_ids`` (meta tensors hold
no values), is answered from the workload's known grid. Should a ToMA row still fail on meta, it is
counted with real compute on CPU only when the unmerged forward is small (``real_limit`` FLOPs),
else recorded as None with the reason. The ToMA count is one forward right after a reset, i.e. a
step that selects (the single-forward workloads time exactly that; a loop's reuse steps skip
selection, whose similarity matmuls are a small share).

Loop workloads (``sdxl-loop``, ``flux-loop``) run the same forward every step, so their ceiling is
that of one forward of their model.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from toma_export.bench.launches import meta_flux_grid
from toma_export.bench.workloads import Built, Options, get_workload, shared_clone
from toma_export.config import ToMAConfig
from toma_export.graph.flops import count_flops

#: Unmerged forwards at most this many FLOPs may fall back to real CPU compute for the ToMA row
#: (about a second on 2 cores); larger ones are never run for real here.
REAL_LIMIT = 200e9

WHAT_IS_COUNTED = (
    "torch.utils.flop_counter FLOPs (matmul, conv, SDPA; multiply-add = 2), plus the CPU SDPA kernel and "
    "ToMA's custom ops (selection similarity, merge weights, merge, unmerge) as batched matmuls; "
    "elementwise work (norms, softmax, activations) not counted. Models built and run on the meta device."
)


# -- counting: toma_export.graph.flops ------------------------------------------------------------
def forward_flops(module: torch.nn.Module, kwargs: dict[str, Any]) -> int:
    """FLOPs of one ``module(**kwargs)``."""
    return count_flops(lambda: module(**kwargs))[0]


# -- which model: a bench JSON names it in its meta -------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """The model a bench row ran: workload, embedded model (None = the workload's default), size, config.

    Enough to rebuild the workload's model and ideal (dtype and batch do not change the ratio).
    """

    workload: str
    model: str | None = None
    height: int | None = None
    width: int | None = None
    config: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def make(cls, workload: str, model: str | None = None, height: int | None = None, width: int | None = None,
             config: dict[str, Any] | None = None) -> Spec:
        get_workload(workload)  # an unknown name is refused here, naming the known ones
        items = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (config or {}).items()))
        return cls(workload, model, height, width, items)

    @classmethod
    def from_meta(cls, workload: str, meta: dict[str, Any]) -> Spec:
        """From a bench JSON's ``meta``: its workload description names model and size
        ("UNet sdxl at 1024x1024 px", "Flux flux-full at ...", "... BasicTransformerBlock, 4096 tokens
        (64x64)"), its ``options`` the run's model/size overrides where recorded, its ``config`` the
        ToMAConfig overrides (they decide the UNet's merged levels)."""
        describe = str((meta.get("workloads") or {}).get(workload, ""))
        model, h, w = None, None, None
        if m := re.match(r"\S+ (\S+) at (\d+)x(\d+) px", describe):
            model, h, w = m.group(1), int(m.group(2)), int(m.group(3))
        elif m := re.search(r"tokens \((\d+)x(\d+)\)", describe):  # sdxl-block: its grid, 16 px per token
            h, w = 16 * int(m.group(1)), 16 * int(m.group(2))
        opts = meta.get("options") or {}  # the run's overrides, recorded since 2026-11-23, win where given
        model, h, w = opts.get("model") or model, opts.get("height") or h, opts.get("width") or w
        return cls.make(workload, model, h, w, dict(meta.get("config") or {}))

    def options(self, device: str) -> Options:
        return Options(model=self.model, height=self.height, width=self.width, device=device,
                       config=dict(self.config))

    def toma_config(self, ratio: float) -> ToMAConfig:
        return ToMAConfig(**{**dict(self.config), "ratio": ratio, "method": "toma"})

    def label(self) -> str:
        """Short name for tables and plots: ``sdxl-unet: sdxl, max_downsample=4``."""
        parts = [self.model] if self.model else []
        parts += [f"{k}={'x'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in self.config]
        return self.workload + (": " + ", ".join(parts) if parts else "")

    def key(self, ratio: float) -> str:
        """Cache key: everything that changes the count."""
        size = f"{self.height}x{self.width}" if self.height or self.width else "default"
        cfg = json.dumps(dict(self.config), sort_keys=True)
        return f"{self.workload}|{self.model or 'default'}|{size}|{cfg}|r={ratio:g}"


@dataclass
class Ceiling:
    """Counted FLOPs of one workload at one ratio."""

    spec: Spec
    ratio: float
    unmerged_flops: int
    ideal_flops: int
    toma_flops: int | None = None
    counted_on: str = "meta"
    toma_note: str = ""
    seconds: float = 0.0

    @property
    def ceiling(self) -> float:
        return self.unmerged_flops / self.ideal_flops

    @property
    def toma_ratio(self) -> float | None:
        """FLOPs(unmerged) / FLOPs(ToMA row): the speed-up ToMA would have if time followed FLOPs."""
        return self.unmerged_flops / self.toma_flops if self.toma_flops else None

    def to_dict(self) -> dict[str, Any]:
        return dict(
            workload=self.spec.workload, model=self.spec.model, height=self.spec.height, width=self.spec.width,
            config=dict(self.spec.config), ratio=self.ratio, label=self.spec.label(),
            unmerged_flops=self.unmerged_flops, ideal_flops=self.ideal_flops, toma_flops=self.toma_flops,
            ceiling=self.ceiling, toma_flop_ratio=self.toma_ratio, counted_on=self.counted_on,
            toma_note=self.toma_note, seconds=round(self.seconds, 2),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Ceiling:
        spec = Spec.make(d["workload"], d.get("model"), d.get("height"), d.get("width"), d.get("config"))
        return cls(spec, float(d["ratio"]), int(d["unmerged_flops"]), int(d["ideal_flops"]),
                   None if d.get("toma_flops") is None else int(d["toma_flops"]), d.get("counted_on", "meta"),
                   d.get("toma_note", ""), float(d.get("seconds", 0.0)))


class CeilingError(RuntimeError):
    """A workload whose unmerged or ideal forward could not be counted."""


def _toma_flops(built: Built, spec: Spec, ratio: float, grid: tuple[int, int] | None) -> int:
    """One ToMA forward after a reset (a selecting step); an uncounted call first, so a graph pass's
    capture (eager apply on FLUX.2/Qwen-Image/SD3.5/Wan traces on first call) is not counted."""
    clone = shared_clone(built.model)
    handle = built.patch(clone, spec.toma_config(ratio))
    try:
        with meta_flux_grid(grid, read=False):
            handle.reset()
            with torch.no_grad():
                clone(**built.kwargs)
            handle.reset()
            return forward_flops(clone, built.kwargs)
    finally:
        handle.remove()


def flop_ceilings(spec: Spec, ratios: list[float], *, device: str = "meta", toma: bool = True,
                  real_limit: float = REAL_LIMIT) -> list[Ceiling]:
    """Count the unmerged forward once and the ideal (and, with ``toma``, the ToMA row) per ratio.

    ``device="meta"`` (default) counts from shapes; ``"cpu"`` runs for real (small models only).
    Raises :class:`CeilingError` naming the workload when the unmerged or ideal forward cannot run.
    """
    for r in ratios:
        if not 0.0 <= r < 1.0:
            raise ValueError(f"ratio {r} must be in [0, 1): the share of tokens removed")
    start = time.perf_counter()
    workload = get_workload(spec.workload)
    try:
        built = workload.build(spec.options(device))
        unmerged = forward_flops(built.model, built.kwargs)
    except Exception as exc:
        raise CeilingError(
            f"{spec.label()}: the unmerged forward could not be counted on {device} ({type(exc).__name__}: {exc})"
            + ("; try device='cpu' if the model is small" if device == "meta" else "")
        ) from exc
    grid = built.token_grid
    shared = (time.perf_counter() - start) / max(1, len(ratios))  # build + unmerged count, split evenly
    out = []
    for r in ratios:
        t0 = time.perf_counter()
        made = built.ideal(r)
        if made is None:
            raise CeilingError(f"{spec.label()}: the workload has no ideal reference, so no ceiling")
        try:
            ideal = forward_flops(*made)
        except Exception as exc:
            raise CeilingError(f"{spec.label()}: the ideal forward at r={r:g} could not be counted on {device} "
                               f"({type(exc).__name__}: {exc})") from exc
        c = Ceiling(spec, r, unmerged, ideal, counted_on=device)
        if toma:
            _count_toma(c, built, grid, device, real_limit)
        c.seconds = time.perf_counter() - t0 + shared
        out.append(c)
    return out


def _count_toma(c: Ceiling, built: Built, grid: tuple[int, int] | None, device: str, real_limit: float) -> None:
    """Fill ``c.toma_flops``: on ``device``, else on CPU when the model is small, else leave a note."""
    try:
        c.toma_flops = _toma_flops(built, c.spec, c.ratio, grid)
        return
    except Exception as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    if device != "cpu" and c.unmerged_flops <= real_limit:
        try:
            cpu = get_workload(c.spec.workload).build(c.spec.options("cpu"))
            c.toma_flops = _toma_flops(cpu, c.spec, c.ratio, grid)
            c.toma_note = f"counted on cpu (on {device}: {reason})"
            return
        except Exception as exc:
            reason += f"; on cpu: {type(exc).__name__}: {exc}"
    c.toma_note = f"not counted ({reason})"


# -- measured rows against the ceiling ------------------------------------------------------------
@dataclass(frozen=True)
class SpeedRow:
    """A ToMA row of a bench JSON with the same run's ideal row: what the ceiling is compared with."""

    spec: Spec
    machine: str
    backend: str
    ratio: float
    source: str
    toma: float
    ideal: float | None

    @property
    def key(self) -> str:
        return self.spec.key(self.ratio)


def machine_label(meta: dict[str, Any]) -> str:
    """``H100`` for a CUDA run (the GPU's model), ``CPU 2-core`` otherwise: what the time was taken on."""
    if str(meta.get("device", "")).startswith("cuda") and meta.get("cuda"):
        name = str(meta["cuda"]).replace("NVIDIA ", "").split()
        return name[0] if name else "GPU"
    cores = meta.get("cpu_count")
    return f"CPU {cores}-core" if cores else "CPU"


def speed_rows(result: dict[str, Any], source: str) -> list[SpeedRow]:
    """The plain ``toma`` rows (ToMAConfig defaults plus the run's config; sub-layer variants such as
    ``toma[attn]`` are left out) that ran, each with its ideal row's speed-up (None when the run had none)."""
    meta, rows = result.get("meta") or {}, result["results"]
    machine = machine_label(meta)
    ideal = {(r["workload"], r["backend"], r["ratio"]): r.get("speedup") for r in rows if r.get("method") == "ideal"}
    specs: dict[str, Spec] = {}
    out = []
    for r in rows:
        if r.get("method") != "toma" or r.get("variant", "toma") not in (None, "toma") or not r.get("speedup"):
            continue
        w = r["workload"]
        spec = specs.setdefault(w, Spec.from_meta(w, meta))
        out.append(SpeedRow(spec, machine, r["backend"], float(r["ratio"]), source, float(r["speedup"]),
                            ideal.get((w, r["backend"], r["ratio"]))))
    return out


def saving_share(speedup: float | None, ceiling: float | None) -> float | None:
    """Share of the ceiling's time saving a speed-up achieves: ``(1 - 1/s) / (1 - 1/c)`` (the bench's
    overhead efficiency with the FLOP ceiling in place of the measured ideal)."""
    if speedup is None or ceiling is None or ceiling <= 1.0:
        return None
    return (1 - 1 / speedup) / (1 - 1 / ceiling)


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}x"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def ceiling_table(rows: list[SpeedRow], ceilings: dict[str, Ceiling]) -> str:
    """Markdown: one line per ToMA row with its ideal, the FLOP ceiling and the shares of its saving
    that ToMA and the ideal row turned into time."""
    lines = ["| workload | ratio | backend | machine | run | ToMA speed-up | ideal speed-up | FLOP ceiling "
             "| ToMA FLOP ratio | ToMA % of ceiling saving | ideal % of ceiling saving |", "|" + "---|" * 11]
    for r in rows:
        c = ceilings.get(r.key)
        ceiling = c.ceiling if c else None
        lines.append(f"| {r.spec.label()} | {r.ratio:g} | {r.backend} | {r.machine} | {r.source} | {_x(r.toma)} "
                     f"| {_x(r.ideal)} | {_x(ceiling)} | {_x(c.toma_ratio if c else None)} "
                     f"| {_pct(saving_share(r.toma, ceiling))} | {_pct(saving_share(r.ideal, ceiling))} |")
    return "\n".join(lines) + "\n"
