"""Lowering table: every ``toma::`` op as a Python function of standard ATen ops (the core maths).

``ep.run_decompositions(decompositions())`` turns a rewritten program into plain ATen, for
exporters and compilers that cannot carry custom ops (ONNX without the plugin, AOTInductor).
Selection lowers to the fixed-trip-count, unrolled greedy loop (k argmax steps, no sort/scatter).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from toma_export import ops
from toma_export.core.selection import facility_location


def decompositions(include_selection: bool = True) -> dict[torch._ops.OpOverload, Callable]:
    """{toma op overload: ATen implementation}; ``include_selection=False`` keeps the selection op
    (for backends that implement it as a plugin)."""
    table: dict[torch._ops.OpOverload, Callable] = {
        torch.ops.toma.merge_weights.default: ops.merge_weights_impl,
        torch.ops.toma.merge.default: ops.merge_impl,
        torch.ops.toma.unmerge.default: ops.unmerge_impl,
        torch.ops.toma.merged_positions.default: ops.merged_positions_impl,
        torch.ops.toma.gather_positions.default: ops.gather_positions_impl,
        torch.ops.toma.fused_merge.default: ops.fused_merge_impl,
        torch.ops.toma.tile_merge.default: ops.tile_merge_impl,
        torch.ops.toma.tile_unmerge.default: ops.tile_unmerge_impl,
    }
    if include_selection:
        table[torch.ops.toma.facility_location.default] = facility_location
    return table


#: The merge ops inductor decomposes (selection stays one op: a Triton kernel on CUDA).
FUSIBLE = ("merge_weights", "merge", "unmerge", "merged_positions", "gather_positions")


def fuse_under_inductor() -> None:
    """Register the merge ops' ATen implementations in inductor's decomposition table, so
    ``torch.compile`` and AOTInductor fuse them with the model's ops instead of calling opaque
    kernels; ``toma::facility_location`` stays one op. Idempotent; affects inductor only (eager
    calls and exporters keep the ops)."""
    from torch._inductor import decomposition as inductor_decomp

    table = decompositions(include_selection=False)
    # inductor reads a cached copy of its table (``fast_random_decomps``): made before this call
    # (anything compiled earlier in the process), it needs the entries too.
    cached = getattr(inductor_decomp, "fast_random_decomps", None)
    targets = [inductor_decomp.decompositions] + ([cached()] if callable(cached) else [])
    for name in FUSIBLE:
        op = getattr(torch.ops.toma, name).default
        for target in targets:
            target.setdefault(op, table[op])


def lower(
    ep: torch.export.ExportedProgram, include_selection: bool = True, core_aten: bool = False
) -> torch.export.ExportedProgram:
    """``ep`` with the toma ops decomposed into ATen; ``core_aten`` also applies torch's default
    core-ATen decompositions.

    Without ``core_aten`` the lowered program is bit-identical to the custom-op one. With it, the
    model's own ops (linear, layer_norm, ...) decompose too and their results move by a few ulps,
    which can flip a near-tied greedy pick in selection: compare such programs with destinations
    fed in (the reuse variant), not by their selected indices.
    """
    table: dict[Any, Callable] = dict(torch.export.default_decompositions()) if core_aten else {}
    table.update(decompositions(include_selection))
    return ep.run_decompositions(table)
