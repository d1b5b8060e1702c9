"""The one FLOP count: torch's ``torch.utils.flop_counter`` table, extended for what it does not see.

Counted: matmuls (mm, addmm, bmm, baddbmm), convolutions and attention (SDPA, ``2·S_q·S_k·(d_qk + d_v)``
per head), a multiply-add as 2 FLOPs; norms, softmax, activations and other elementwise work are not.
Additions to torch's table, with the same formulas:

- ``aten._scaled_dot_product_flash_attention_for_cpu`` (the CPU SDPA kernel, absent from torch's table);
- ToMA's opaque custom ops as their batched matmuls: ``toma::facility_location`` (selection's tile
  similarity; its greedy steps are elementwise), ``toma::merge_weights``, ``toma::merge``, ``toma::unmerge``,
  so the graph pass (custom ops) and the eager hooks (plain matmuls) count the same merge cost; the eager
  CUDA path's fused Triton ops ``toma::fused_merge``, ``toma::tile_merge`` and ``toma::tile_unmerge`` likewise;
- for graphs (``torch.export`` IR keeps the composite ops): ``aten.linear``, ``aten.matmul``,
  ``aten.conv1d/2d/3d`` and ``aten.scaled_dot_product_attention``, counted as the kernels they dispatch to.

:func:`count_flops` counts a call as it runs (``FlopCounterMode``: ``bench/ceiling.py``); :func:`node_flops`
counts a graph node from its shapes (``inspect``: which regions merging covers). Symbolic sizes count at
the example's value; a data-dependent size without one counts as 0.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch.fx import Graph, Node
from torch.utils.flop_counter import FlopCounterMode, flop_registry, shape_wrapper

from toma_export.graph.fx_util import meta_val, tensor_val

aten = torch.ops.aten

Formula = Callable[..., int]


def _prod(xs: Any) -> int:
    return math.prod(int(x) for x in xs)


def _sdpa(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """``2·S_q·S_k·d_qk`` (scores) + ``2·S_q·S_k·d_v`` (weighted values) per leading index (batch, heads)."""
    *lead, sq, dq = query_shape
    sk, dv = key_shape[-2], value_shape[-1]
    return 2 * _prod(lead) * int(sq) * int(sk) * (int(dq) + int(dv))


def _matmul(a_shape: Any, b_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """``a @ b`` (and ``linear(x, W)``): ``2·prod(out)·K``."""
    return 2 * _prod(out_shape) * int(a_shape[-1])


def _conv(x_shape: Any, w_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """``2·prod(out)·(C_in / groups)·prod(kernel)``: torch's convolution formula, for ``conv1d/2d/3d`` graph nodes."""
    return 2 * _prod(out_shape) * _prod(w_shape[1:])


def _facility_location(features_shape: Any, k: int, *, out_shape: Any = None, **kwargs: Any) -> int:
    """Tile similarity ``X̂ X̂ᵀ`` over features ``(..., S, C)``: ``2·S·S·C`` per tile."""
    *lead, s, c = features_shape
    return 2 * _prod(lead) * int(s) * int(s) * int(c)


def _merge_weights(x_shape: Any, idx_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """Destination-to-token similarity, ``(B, T, k, C) @ (B, T, C, S)``: output ``(B, T, k, S)``."""
    return 2 * _prod(out_shape) * int(x_shape[-1])


def _merge_or_unmerge(x_shape: Any, weights_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """``M @ X`` (merge) or ``A^T @ Y`` (unmerge) per tile, weights ``(B, T, k, S)``: ``2·B·T·k·S·C``."""
    return 2 * _prod(weights_shape) * int(x_shape[-1])


def _fused_merge(x_shape: Any, idx_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """Merge weights and ``M @ X`` in one op (outputs: merged tokens, weights ``(B, T, k, S)``)."""
    return 2 * _merge_or_unmerge(x_shape, out_shape[1])


def custom_mapping() -> dict[Any, Formula]:
    """Formulas for ops torch's table lacks that run as kernels (``FlopCounterMode``'s ``custom_mapping``)."""
    import toma_export.ops  # noqa: F401  (registers torch.ops.toma.*)

    toma = torch.ops.toma
    return {
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa,
        toma.facility_location: _facility_location,
        toma.merge_weights: _merge_weights,
        toma.merge: _merge_or_unmerge,
        toma.unmerge: _merge_or_unmerge,
        toma.fused_merge: _fused_merge,  # the eager path's ops on CUDA (core.merge.uses_kernels)
        toma.tile_merge: _merge_or_unmerge,
        toma.tile_unmerge: _merge_or_unmerge,
    }


def _graph_mapping() -> dict[Any, Formula]:
    """Every formula a graph node may need, called as torch's table calls them (tensors or shapes,
    ``out_val``): torch's table, :func:`custom_mapping`, and the composite ops ``torch.export`` keeps."""
    ours = {**custom_mapping(), aten.linear: _matmul, aten.matmul: _matmul, aten.conv1d: _conv, aten.conv2d: _conv,
            aten.conv3d: _conv, aten.scaled_dot_product_attention: _sdpa}
    return {**flop_registry, **{op: shape_wrapper(f) for op, f in ours.items()}}


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """FLOPs of ``fn()`` as it runs, total and by op.

    ``no_grad``, not ``inference_mode``: the counter's module tracker breaks on parameters that
    require grad inside inference mode.
    """
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=custom_mapping()) as counter:
        fn()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


def _size(d: Any) -> int:
    """A size as a plain int: a symbolic size at the example's value, a data-dependent one as 0."""
    if isinstance(d, int):
        return d
    hint = getattr(getattr(d, "node", None), "hint", None)
    return int(hint) if hint is not None else 0


def _shapes(arg: Any) -> Any:
    """Node arguments with every tensor-valued node replaced by its shape (plain ints)."""
    if isinstance(arg, Node):
        v = meta_val(arg)
        return [_size(d) for d in v.shape] if isinstance(v, torch.Tensor) else v
    if isinstance(arg, (list, tuple)):
        return type(arg)(_shapes(a) for a in arg)
    return arg


_MAPPING: dict[Any, Formula] | None = None


def node_flops(n: Node) -> int:
    """FLOPs of one graph node from its shapes (0 for ops that are not counted)."""
    global _MAPPING
    if n.op != "call_function" or not isinstance(n.target, torch._ops.OpOverload):
        return 0
    if _MAPPING is None:
        _MAPPING = _graph_mapping()
    formula = _MAPPING.get(n.target.overloadpacket)
    if formula is None:
        return 0
    out = tensor_val(n)
    out_shape = [_size(d) for d in out.shape] if out is not None else None
    args = [_shapes(a) for a in n.args]
    kwargs = {k: _shapes(v) for k, v in n.kwargs.items()}
    return int(formula(*args, out_val=out_shape, **kwargs))


def graph_flops(graph: Graph, names: set[str] | None = None) -> int:
    """FLOPs of a graph's nodes (only those named in ``names`` when given)."""
    return sum(node_flops(n) for n in graph.nodes if names is None or n.name in names)
