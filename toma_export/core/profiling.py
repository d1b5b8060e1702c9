"""Named regions for ``torch.profiler`` traces of the merge machinery (off unless asked for).

``scripts/profile_sites.py`` turns them on to split a merged model's time into selection, merge
weights, merge, unmerge and position gathers. Off by default, and always off while tracing
(torch.export, torch.compile), so no profiler op ever enters an exported graph.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

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
