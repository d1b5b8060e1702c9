"""Named regions for ``torch.profiler`` traces of the merge machinery (off unless asked for).

``scripts/profile_sites.py`` turns them on to split a merged model's time into selection, merge
weights, merge, unmerge and position gathers. Off by default, and always off while tracing
(torch.export, torch.compile), so no profiler op ever enters an exported graph.

:class:`OpCounter` counts the operators a region dispatches by name (on the meta device, or fake
tensors of any device: no GPU needed), the launch budget of the merge machinery per site;
``bench.launches.LaunchCounter`` classifies a whole forward's ops (kernels, views, CPU ops,
copies, device reads).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_enabled = False


@contextlib.contextmanager
def regions_enabled() -> Iterator[None]:
    """Label the merge machinery's regions while this context is open."""
    global _enabled
    before, _enabled = _enabled, True
    try:
        yield
    finally:
        _enabled = before


def region(name: str) -> contextlib.AbstractContextManager:
    """``torch.profiler.record_function(f"toma::{name}")`` when enabled and not tracing, else a no-op."""
    if not _enabled or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return contextlib.nullcontext()
    return torch.profiler.record_function(f"toma::{name}")


class OpCounter(TorchDispatchMode):
    """Counts the operators dispatched while open that launch work: views, ``_unsafe_view``, device
    queries and reading a CPU scalar (host state such as the step count) are free. A custom op
    (``toma::``) counts once, whatever its kernel does."""

    FREE = frozenset({"aten._unsafe_view.default"})

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = str(func)
        host_read = func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "cpu"
        if not (func.is_view or func.namespace == "prim" or name in self.FREE or host_read):
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))
