"""Typed readers of captured ATen graph nodes, and the op sets the graph passes share.

FX types a node argument as ``Argument``, a wide union (node, number, list, slice, ...); the passes
read them as the ATen schemas define them. These helpers narrow once, with a clear error when a
graph is not what the schema promises, so the pass modules type-check without casts. Op sets that
more than one module asks about live here; a set only one module uses stays with that module.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, TypeGuard

import torch
from torch._guards import detect_fake_mode
from torch.fx import Graph, GraphModule, Node
from torch.fx.node import Argument, Target, map_arg

from toma_export.errors import UnsupportedModelError

aten = torch.ops.aten

#: Attention kernels as ``torch.export`` records them (the composite op and the CPU/CUDA kernels).
SDPA: frozenset[Target] = frozenset({
    aten.scaled_dot_product_attention.default,
    aten._scaled_dot_product_flash_attention.default,
    aten._scaled_dot_product_efficient_attention.default,
    aten._scaled_dot_product_flash_attention_for_cpu.default,
})
LINEAR: frozenset[Target] = frozenset({aten.linear.default})
#: Norms over the trailing ``normalized_shape`` dims (``args[1]``).
LAST_DIM_NORMS: frozenset[Target] = frozenset({aten.layer_norm.default, aten.native_layer_norm.default, aten.rms_norm.default})
NORMS: frozenset[Target] = LAST_DIM_NORMS | {aten.group_norm.default, aten.native_group_norm.default}
ACTIVATIONS: frozenset[Target] = frozenset({
    aten.gelu.default, aten.silu.default, aten.relu.default, aten.gelu_.default, aten.silu_.default,
})
#: Value-preserving casts and copies (FP32LayerNorm's ``float -> norm -> type_as``).
CASTS: frozenset[Target] = frozenset({
    aten.to.dtype, aten.to.dtype_layout, aten._to_copy.default, aten.type_as.default, aten.clone.default,
})
#: ``view``-like ops whose second argument is the full target shape.
VIEWS: frozenset[Target] = frozenset({aten.view.default, aten.reshape.default, aten._unsafe_view.default})
#: Ops that only regroup dims (no value moves between positions of the flattened tensor).
RESHAPES: frozenset[Target] = VIEWS | {
    aten.unflatten.int, aten.flatten.using_ints, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default,
    aten.unsqueeze.default, aten.view_as_real.default, aten.view_as_complex.default,
}
#: Ops that cut a tensor into pieces along a dim (``getitem`` takes one out).
SPLITS: frozenset[Target] = frozenset({
    aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default, aten.unsafe_split.Tensor,
})


class Slot:
    """Where an op takes one argument: its position (None: keyword only) and its keyword name."""

    __slots__ = ("pos", "name")

    def __init__(self, pos: int | None, name: str):
        self.pos = pos
        self.name = name

    def get(self, n: Node) -> Argument:
        if self.pos is not None and len(n.args) > self.pos:
            return n.args[self.pos]
        return n.kwargs.get(self.name)

    def set(self, n: Node, value: Node) -> None:
        if self.pos is not None and len(n.args) > self.pos:
            n.args = tuple(value if i == self.pos else a for i, a in enumerate(n.args))
        else:
            n.kwargs = {**n.kwargs, self.name: value}


#: Per SDPA overload: where it takes its attention mask (bias; None: it takes none) and ``is_causal``.
SDPA_SLOTS: dict[Target, tuple[Slot | None, Slot]] = {
    aten.scaled_dot_product_attention.default: (Slot(3, "attn_mask"), Slot(5, "is_causal")),
    aten._scaled_dot_product_flash_attention_for_cpu.default: (Slot(None, "attn_mask"), Slot(4, "is_causal")),
    aten._scaled_dot_product_efficient_attention.default: (Slot(3, "attn_bias"), Slot(6, "is_causal")),
    aten._scaled_dot_product_flash_attention.default: (None, Slot(4, "is_causal")),
}


def mask_slot(sdpa: Node) -> Slot | None:
    """Where the attention op ``sdpa`` takes its mask; None for ops without one (or not attention)."""
    slots = SDPA_SLOTS.get(sdpa.target)
    return slots[0] if slots else None


# -- node values (the fake tensors torch.export records in ``meta["val"]``) ---------------------------
def meta_val(n: object) -> Any:
    """``n``'s recorded value (a fake tensor, a list of them, a SymInt), or None when ``n`` is no node."""
    return n.meta.get("val") if isinstance(n, Node) else None


def tensor_val(n: object) -> torch.Tensor | None:
    """``n``'s value when it is a tensor, else None."""
    v = meta_val(n)
    return v if isinstance(v, torch.Tensor) else None


def shape_of(n: object) -> tuple[Any, ...] | None:
    """The shape of a tensor-valued node (ints, or SymInts for a dynamic batch), else None."""
    v = tensor_val(n)
    return tuple(v.shape) if v is not None else None


def fake(n: Argument) -> torch.Tensor:
    """The tensor value of a node the schema says is a tensor; a clear error when it carries none."""
    v = tensor_val(n)
    if v is None:
        what = n.format_node() if isinstance(n, Node) else repr(n)
        raise ValueError(f"expected a tensor-valued graph node with a fake value (meta['val']), got {what}")
    return v


def fakes(n: Node) -> list[torch.Tensor]:
    """The tensor values of a node that returns several (``split``, ``native_layer_norm``)."""
    v = meta_val(n)
    if not isinstance(v, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in v):
        raise ValueError(f"expected {n.format_node()} to carry a list of tensors (meta['val'])")
    return list(v)


# -- arguments -------------------------------------------------------------------------------------
def is_call(n: object, targets: Collection[Target]) -> TypeGuard[Node]:
    """``n`` is a ``call_function`` node of one of ``targets``."""
    return isinstance(n, Node) and n.op == "call_function" and n.target in targets


def arg(n: Node, pos: int, name: str, default: Argument = None) -> Argument:
    """Argument ``pos`` of ``n``, else its keyword ``name``, else ``default``."""
    return n.args[pos] if len(n.args) > pos else n.kwargs.get(name, default)


def int_arg(n: Node, pos: int, name: str = "dim", default: int = 0) -> int:
    """An int argument (a dim, a start, an index) by position, else keyword; ``None`` reads as ``default``."""
    v = arg(n, pos, name, default)
    if v is None:
        return default
    if isinstance(v, torch.SymInt):  # a symbolic start or length: its value (a data-dependent one raises)
        return int(v)
    if not isinstance(v, int):
        raise ValueError(f"argument {pos} ({name}) of {n.format_node()} is {v!r}, not an int")
    return v


def norm_dim(d: int, ndim: int) -> int:
    """``d`` as a non-negative dim of an ``ndim``-d tensor (a 0-d tensor's only dim is 0)."""
    return d % ndim if ndim else 0


def dim_arg(n: Node, pos: int, ndim: int, default: int = 0) -> int:
    """A dim argument of ``n``, non-negative for an ``ndim``-d operand."""
    return norm_dim(int_arg(n, pos, "dim", default), ndim)


def node_arg(n: Node, pos: int = 0) -> Node:
    """Argument ``pos`` of ``n`` where the schema takes a tensor."""
    a = n.args[pos]
    if not isinstance(a, Node):
        raise ValueError(f"argument {pos} of {n.format_node()} is {a!r}, not a graph node")
    return a


def nodes_arg(n: Node, pos: int = 0) -> list[Node]:
    """Argument ``pos`` of ``n`` where the schema takes a list of tensors (``cat``, ``stack``)."""
    a = n.args[pos]
    if not isinstance(a, (list, tuple)) or not all(isinstance(x, Node) for x in a):
        raise ValueError(f"argument {pos} of {n.format_node()} is not a list of graph nodes")
    return [x for x in a if isinstance(x, Node)]


def ints_arg(n: Node, pos: int) -> list[Any]:
    """Argument ``pos`` of ``n`` where the schema takes a size list (ints, or nodes of symbolic sizes)."""
    a = n.args[pos]
    if not isinstance(a, (list, tuple)):
        raise ValueError(f"argument {pos} of {n.format_node()} is {a!r}, not a size list")
    return list(a)


# -- rewriting --------------------------------------------------------------------------------------
def copy_graph_module(gm: GraphModule) -> tuple[GraphModule, dict[Node, Node]]:
    """A structural copy (node metas are shallow copies; tensors in them are shared)."""
    graph = Graph()
    val_map: dict[Node, Node] = {}
    out = graph.graph_copy(gm.graph, val_map)
    graph.output(out)
    return GraphModule(gm, graph), val_map


# -- fake values of new nodes -------------------------------------------------------------------------
def fake_mode_of(gm: GraphModule) -> Any:
    """The fake mode of a captured graph's placeholder values; a clear error for a graph without them."""
    mode = detect_fake_mode([n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"])
    if mode is None:
        raise UnsupportedModelError(
            "the graph carries no fake tensors (meta['val'] on its placeholders): the graph passes rewrite a "
            "graph captured by torch.export; capture the model with toma_export.graph.capture (not symbolic_trace)"
        )
    return mode


def evaluate(n: Node, fake_mode: Any) -> Any:
    """``n``'s op run on its operands' fake values: the value a new or changed node records."""
    target = n.target
    if not callable(target):
        raise ValueError(f"{n.format_node()} calls no function")
    args, kwargs = map_arg((n.args, n.kwargs), lambda a: a.meta["val"])
    with fake_mode:
        return target(*args, **kwargs)


def insert_call(
    graph: Graph, fake_mode: Any, before: Node, target: Callable[..., Any], args: tuple[Argument, ...],
    kwargs: dict[str, Argument] | None = None,
) -> Node:
    """A ``call_function`` node inserted before ``before``, with its fake value and ``before``'s module path."""
    with graph.inserting_before(before):
        n = graph.call_function(target, args, kwargs or {})
    n.meta["val"] = evaluate(n, fake_mode)
    n.meta["nn_module_stack"] = before.meta.get("nn_module_stack", {})
    return n
