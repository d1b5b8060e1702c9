"""Run workloads x backends x methods x ratios and turn timings into rows.

Per workload and backend, every case (the unmerged baseline, each method at each ratio, the
ideal at each ratio) is prepared first, then all are timed together round-robin, so a row's
speed-up is against the baseline of the same backend measured in the same interleaved run.
"""

from __future__ import annotations

import platform
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from toma_export.bench.backends import SELF_MERGING, get_backend
from toma_export.bench.timing import calls_total, run_interleaved, time_call
from toma_export.bench.workloads import Built, Options, get_workload, shared_clone
from toma_export.config import ToMAConfig

IDEAL = "ideal"


def _no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Inference mode for a timed call: no autograd bookkeeping in any row."""

    def call() -> Any:
        with torch.inference_mode():
            return fn()

    return call


@dataclass
class Case:
    """One timed row: a prepared callable plus what to reset before each call."""

    method: str
    ratio: float
    call: Callable[[], Any]
    before: Callable[[], None] = lambda: None
    handle: Any = None
    note: str = ""
    label: str = ""
    first_call_ms: float | None = None
    #: Wall time to make the row's callable: export and engine build/compile for engine backends
    #: (ONNX Runtime, AOTInductor), ~0 where compilation happens at the first call (inductor).
    build_ms: float | None = None


@dataclass(frozen=True)
class Variant:
    """A patched row: ``method`` at ``ratio`` with extra ``ToMAConfig`` fields; ``label`` names it."""

    method: str
    ratio: float
    config: tuple[tuple[str, Any], ...] = ()
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.method


@dataclass
class Plan:
    """What to run; ``config`` holds extra ``ToMAConfig`` fields applied to every method."""

    workloads: Sequence[str]
    methods: Sequence[str] = ("none", "toma", "tomesd", "todo", "catome")
    ratios: Sequence[float] = (0.25, 0.5, 0.75)
    backends: Sequence[str] = ("eager",)
    repeats: int | None = None
    warmup: int | None = None
    ideal: bool = True
    memory: bool = True
    options: Options = field(default_factory=Options)
    config: dict[str, Any] = field(default_factory=dict)
    variants: Sequence[Variant] | None = None  # None = every method at every ratio

    def all_variants(self) -> list[Variant]:
        if self.variants is not None:
            return list(self.variants)
        return [Variant(m, r) for r in self.ratios for m in self.methods if m != "none"]

    def ideal_ratios(self) -> list[float]:
        return list(dict.fromkeys(v.ratio for v in self.all_variants())) if self.ideal else []


def _cases(built: Built, backend_name: str, plan: Plan) -> tuple[list[Case], list[dict[str, Any]]]:
    """Prepared cases for one workload and backend, and error rows for those that failed to build."""
    backend = get_backend(backend_name)
    cases: list[Case] = []
    errors: list[dict[str, Any]] = []

    def add(method: str, ratio: float, make: Callable[[], Case], label: str = "") -> None:
        try:
            start = time.perf_counter()
            case = make()
            case.build_ms = (time.perf_counter() - start) * 1e3
            cases.append(case)
        except Exception as exc:  # a method that cannot run here is a row, not a crash
            errors.append(dict(method=method, ratio=ratio, variant=label or method,
                               status=f"error: {type(exc).__name__}: {exc}"))

    def baseline() -> Case:
        clone = shared_clone(built.model)
        fn = backend(clone, None, built.kwargs)
        return Case("none", 0.0, _no_grad(lambda: built.run(fn, built.kwargs)))

    add("none", 0.0, baseline)
    for v in plan.all_variants():

        def patched(v: Variant = v) -> Case:
            cfg = ToMAConfig(**{**plan.config, **dict(v.config), "ratio": v.ratio, "method": v.method})
            clone = shared_clone(built.model)
            if backend_name in SELF_MERGING:
                fn = backend(clone, cfg, built.kwargs)
                handle = fn.handle  # type: ignore[attr-defined]
            else:
                handle = built.patch(clone, cfg)
                fn = backend(clone, cfg, built.kwargs)
            return Case(v.method, v.ratio, _no_grad(lambda: built.run(fn, built.kwargs)), handle.reset, handle,
                        label=v.name)

        add(v.method, v.ratio, patched, v.name)
    for ratio in plan.ideal_ratios():

        def ideal(ratio: float = ratio) -> Case:
            made = built.ideal(ratio)
            if made is None:
                raise ValueError(f"workload {built.name!r} has no ideal reference; run it with --no-ideal")
            module, kw = made
            fn = backend(module, None, kw)
            return Case(IDEAL, ratio, _no_grad(lambda: built.run(fn, kw)), note=built.ideal_note)

        add(IDEAL, ratio, ideal)
    return cases, errors


def _merged_share(handle: Any) -> float | None:
    """Share of tokens CA-ToMe actually merged at its last matching (its threshold decides)."""
    state = getattr(handle, "state", None)
    blocks = getattr(state, "blocks", None) or {}
    shares = [m.r / m.num_tokens for m, _ in blocks.values() if hasattr(m, "r")]
    return sum(shares) / len(shares) if shares else None


def _probe(
    cases: list[Case], errors: list[dict[str, Any]], progress: Callable[[int], None], device: Any = None
) -> list[Case]:
    """First warm-up call of every case (compiles, allocates; its time is the row's ``first_call_ms``,
    compile time included); failures become error rows."""
    ok = []
    for case in cases:
        try:
            case.before()
            case.first_call_ms = time_call(case.call, device)
            ok.append(case)
        except Exception as exc:
            errors.append(dict(method=case.method, ratio=case.ratio, variant=case.label or case.method,
                               status=f"error: {type(exc).__name__}: {exc}"))
            traceback.print_exc()
        progress(1)
    return ok


def add_derived(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Speed-up vs the baseline of the same workload and backend; overhead efficiency vs the ideal.

    ``speedup = baseline median / row median``; ``efficiency = (base - row) / (base - ideal)`` with
    the ideal row of the same workload, backend and ratio (medians).
    """
    def key(r: dict[str, Any]) -> tuple[str, str]:
        return r["workload"], r["backend"]

    base = {key(r): r["median_ms"] for r in rows if r["method"] == "none" and r.get("median_ms")}
    ideal = {(*key(r), r["ratio"]): r["median_ms"] for r in rows if r["method"] == IDEAL and r.get("median_ms")}
    for r in rows:
        b, m = base.get(key(r)), r.get("median_ms")
        r["speedup"] = b / m if b and m else None
        i = ideal.get((*key(r), r["ratio"]))
        r["overhead_efficiency"] = (
            (b - m) / (b - i) if b and m and i is not None and r["method"] not in ("none", IDEAL) and b != i else None
        )
    return rows


def run_plan(
    plan: Plan, progress_bar: bool = True, on_backend: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run ``plan``; returns ``{"meta": ..., "results": [rows]}``. ``on_backend`` gets the result so far
    after each workload x backend (the CLI writes it, so a run killed later keeps what it measured)."""
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    mem_methods: set[str] = set()
    described: dict[str, str] = {}
    for wname in plan.workloads:
        workload = get_workload(wname)
        repeats = workload.repeats if plan.repeats is None else plan.repeats
        warmup = workload.warmup if plan.warmup is None else plan.warmup
        built = workload.build(plan.options)
        described[wname] = built.describe
        for backend in plan.backends:
            cases, errors = _cases(built, backend, plan)
            later = calls_total(len(cases), repeats, max(warmup - 1, 0), plan.memory)
            bar = tqdm(total=len(cases) + later, desc=f"{wname}/{backend}", disable=not progress_bar, unit="call")
            cases = _probe(cases, errors, bar.update, plan.options.device)
            bar.total = len(cases) + calls_total(len(cases), repeats, max(warmup - 1, 0), plan.memory) + len(errors)
            stats, memory = run_interleaved(
                [c.call for c in cases],
                before=[c.before for c in cases],
                repeats=repeats,
                warmup=max(warmup - 1, 0),
                device=plan.options.device,
                measure_memory=plan.memory,
                progress=bar.update,
            )
            bar.close()
            for case, st, (mem, how) in zip(cases, stats, memory):
                mem_methods.add(how)
                row = dict(
                    workload=wname, backend=backend, method=case.method, variant=case.label or case.method,
                    ratio=case.ratio,
                    median_ms=st.median_ms if st.times_ms else None,
                    min_ms=st.min_ms if st.times_ms else None,
                    max_ms=st.max_ms if st.times_ms else None,
                    times_ms=st.times_ms, peak_mem_mb=mem, memory_method=how,
                    repeats=repeats, warmup=warmup, status="ok", note=case.note,
                    first_call_ms=case.first_call_ms, build_ms=case.build_ms,
                )
                share = _merged_share(case.handle) if case.method == "catome" else None
                if share is not None:
                    row["merged_share"] = share
                rows.append(row)
            for err in errors:
                rows.append(dict(workload=wname, backend=backend, median_ms=None, min_ms=None, max_ms=None,
                                 times_ms=[], peak_mem_mb=None, repeats=repeats, warmup=warmup, **err))
            if on_backend is not None:
                on_backend({"meta": machine_meta(plan, dict(described), sorted(mem_methods)),
                            "results": add_derived([dict(r) for r in rows])})
        del built
    meta = machine_meta(plan, described, sorted(mem_methods))
    return {"meta": meta, "results": add_derived(rows)}


def machine_meta(
    plan: Plan, workloads: dict[str, str] | None = None, memory_methods: list[str] | None = None
) -> dict[str, Any]:
    """Where and how the figures were taken."""
    import diffusers

    return dict(
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        machine=platform.platform(),
        processor=platform.processor() or platform.machine(),
        cpu_count=_cpu_count(),
        torch_threads=torch.get_num_threads(),
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        device=plan.options.device,
        cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        **(cuda_meta() if torch.cuda.is_available() else {}),
        dtype=str(plan.options.dtype).replace("torch.", ""),
        workloads=workloads or {w: get_workload(w).summary for w in plan.workloads},
        options=dict(model=plan.options.model, height=plan.options.height, width=plan.options.width,
                     steps=plan.options.steps, batch=plan.options.batch),  # overrides of the workloads' defaults
        config=plan.config,
        memory_methods=memory_methods or [],
        timing="interleaved round-robin after warm-up; speedup = baseline median / row median (same backend, same run)",
    )


def cuda_meta() -> dict[str, Any]:
    """The GPU's driver, CUDA runtime and Triton versions (rows name what produced them)."""
    import subprocess

    try:
        import triton

        triton_version: str | None = triton.__version__
    except ImportError:
        triton_version = None
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
        driver: str | None = proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        driver = None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return dict(cuda_driver=driver, cuda_runtime=torch.version.cuda, triton=triton_version,
                cuda_capability=f"{props.major}.{props.minor}", cuda_memory_gb=round(props.total_memory / 2**30, 1))


def _cpu_count() -> int | None:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()
