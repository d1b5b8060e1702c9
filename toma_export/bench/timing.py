"""Interleaved timing: every repeat runs every case once, in a rotating order.

Machine drift (other jobs, thermal state, allocator growth) then hits every case alike, so
ratios between cases measured in the same run stay meaningful on a shared machine.
"""

from __future__ import annotations

import gc
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

#: How peak memory is measured on CPU (named in every JSON file and table).
CPU_MEMORY_METHOD = "rss-peak-delta"
CUDA_MEMORY_METHOD = "cuda-max-allocated"


def interleaved_order(n_cases: int, repeats: int) -> list[list[int]]:
    """Case indices per repeat: repeat ``i`` starts at case ``i mod n`` and wraps around.

    Each case runs once per repeat and takes every position in the order equally often
    (over ``n`` repeats), so no case always runs first (after the idle gap) or last.
    """
    if n_cases < 0 or repeats < 0:
        raise ValueError("n_cases and repeats must be >= 0")
    return [[(r + j) % n_cases for j in range(n_cases)] for r in range(repeats)]


@dataclass
class Stats:
    """Latency of one case over its timed runs, in milliseconds."""

    times_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def min_ms(self) -> float:
        return min(self.times_ms)

    @property
    def max_ms(self) -> float:
        return max(self.times_ms)


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device | str | None = None) -> float:
    """Wall time of one call in ms (device work included: CUDA is synchronised on both sides).

    The garbage collector runs before the call and is off during it (as ``timeit`` does): a
    compiled model holds many Python objects (guards, graphs, kernels), and a full collection
    landing inside one row's call would be charged to that row alone.
    """
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return (time.perf_counter() - start) * 1e3
    finally:
        if enabled:
            gc.enable()


def _status_kb(field_name: str) -> int | None:
    try:
        text = open("/proc/self/status").read()
    except OSError:
        return None
    m = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS so the RSS baseline is not inflated by caches."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the memory probe just reads a less tidy heap
        return


def peak_memory_mb(fn: Callable[[], object], device: torch.device | str | None = None) -> tuple[float | None, str]:
    """Peak memory of one call above the memory in use before it, and how it was measured.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensor memory). CPU: the process's peak resident
    set (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the resident set before the
    call, after ``gc`` and ``malloc_trim``; this counts every allocation (tensors, workspaces,
    compiled code) but allocator caching can hide reused pages, so it is a lower bound.
    Returns ``(None, reason)`` where neither is available.
    """
    gc.collect()
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20, CUDA_MEMORY_METHOD
    _trim_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        fn()
        return None, "unavailable (no /proc/self/clear_refs)"
    rss_before = _status_kb("VmRSS")
    fn()
    peak = _status_kb("VmHWM")
    if rss_before is None or peak is None:
        return None, "unavailable (no VmRSS/VmHWM)"
    return max(0, peak - rss_before) / 1024, CPU_MEMORY_METHOD


def run_interleaved(
    calls: Sequence[Callable[[], object]],
    *,
    repeats: int,
    warmup: int,
    before: Sequence[Callable[[], None]] | None = None,
    device: torch.device | str | None = None,
    measure_memory: bool = True,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Stats], list[tuple[float | None, str]]]:
    """Time ``calls`` round-robin: ``warmup`` untimed rounds, then ``repeats`` timed rounds.

    ``before[i]`` runs untimed before every call of case ``i`` (e.g. reset merge state to
    step 0). Peak memory is probed on the last warm-up round (an extra untimed round when
    ``warmup`` is 0), so compile-time allocations of the first call are not counted.
    ``progress(k)`` is told after every ``k`` calls.
    """
    n = len(calls)
    pre = list(before) if before is not None else [lambda: None] * n
    memory: list[tuple[float | None, str]] = [(None, "not measured")] * n
    mem_round = max(warmup, 1) - 1 if measure_memory else -1
    for r in range(max(warmup, 1 if measure_memory else 0)):
        for i in [(r + j) % n for j in range(n)]:
            pre[i]()
            if r == mem_round:
                memory[i] = peak_memory_mb(calls[i], device)
            else:
                calls[i]()
            if progress:
                progress(1)
    stats = [Stats() for _ in range(n)]
    for order in interleaved_order(n, repeats):
        for i in order:
            pre[i]()
            stats[i].times_ms.append(time_call(calls[i], device))
            if progress:
                progress(1)
    return stats, memory


def calls_total(n_cases: int, repeats: int, warmup: int, measure_memory: bool = True) -> int:
    """How many calls :func:`run_interleaved` makes (for a progress bar)."""
    return n_cases * (repeats + max(warmup, 1 if measure_memory else 0))

