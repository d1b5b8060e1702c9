"""Complex tensors to real pairs, for exporters without complex support (ONNX).

Some denoisers keep RoPE as complex numbers (Qwen-Image: a complex64 frequency table, rotated as
``view_as_real(view_as_complex(x) * freqs)``). ``torch.onnx`` has complex kernels for a handful of ATen
ops only, so such a graph fails to export at the first ``split``/``unsqueeze``/``gather`` of the table.
:func:`lower_complex` rewrites every complex-valued value of an exported program to its real view
(``(..., 2)``, real part first, as ``torch.view_as_real`` lays it out): complex buffers and constants
become real ones, shape ops move their dimensions past the trailing pair, products become
``(ar·br − ai·bi, ar·bi + ai·br)``, and ``view_as_complex``/``view_as_real`` become no-ops. The result
computes the same numbers in the same order, so it is exact against the complex graph.

An op the table does not know, on a complex value, raises :class:`~toma_export.errors.ToMAError` naming
it and the way out.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch._guards import detect_fake_mode

from toma_export.errors import ToMAError

__all__ = ["has_complex", "lower_complex"]

aten = torch.ops.aten
#: ops whose only complex-specific argument is one dim: op -> (position of the dim, its default)
_DIM_ARG: dict[Any, tuple[int, int]] = {
    aten.slice.Tensor: (1, 0), aten.select.int: (1, 0), aten.index_select.default: (1, 0),
    aten.squeeze.dim: (1, 0), aten.unbind.int: (1, 0), aten.split_with_sizes.default: (2, 0),
    aten.split.Tensor: (2, 0),
}
_REAL_OF = {torch.complex64: torch.float32, torch.complex128: torch.float64, torch.complex32: torch.float16}


def _is_complex(node: Any) -> bool:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if isinstance(val, (list, tuple)):
        return any(isinstance(v, torch.Tensor) and v.is_complex() for v in val)
    return isinstance(val, torch.Tensor) and val.is_complex()


def has_complex(ep: torch.export.ExportedProgram) -> bool:
    """Whether any value of ``ep``'s graph is complex (so :func:`lower_complex` is needed for ONNX)."""
    return any(_is_complex(n) for n in ep.graph.nodes)


def _dim(d: int) -> int:
    """A complex tensor's dim index on its real view: negative dims shift past the trailing pair."""
    return d - 1 if d < 0 else d


class _Lowering:
    """One pass over the graph; ``real[n]`` is the real-pair node standing for complex node ``n``."""

    def __init__(self, graph: torch.fx.Graph) -> None:
        self.graph = graph
        self.real: dict[torch.fx.Node, torch.fx.Node] = {}

    def call(self, target: Any, *args: Any, **kwargs: Any) -> torch.fx.Node:
        """Insert ``target(*args)`` with its fake value computed from the inputs' values."""
        node = self.graph.call_function(target, args, kwargs)
        vals = torch.fx.node.map_arg((args, kwargs), lambda a: a.meta["val"])
        mode = detect_fake_mode(torch.fx.node.map_arg(args, lambda a: a.meta["val"]))
        if mode is None:
            node.meta["val"] = target(*vals[0], **vals[1])
        else:
            with mode:
                node.meta["val"] = target(*vals[0], **vals[1])
        return node

    def r(self, a: Any) -> Any:
        """The real view of a complex argument (nodes, lists of nodes); other arguments as they are."""
        if isinstance(a, torch.fx.Node):
            return self.real.get(a, a)
        if isinstance(a, (list, tuple)):
            return type(a)(self.r(x) for x in a)
        return a

    def parts(self, node: torch.fx.Node) -> tuple[torch.fx.Node, torch.fx.Node]:
        x = self.real[node]
        return self.call(aten.select.int, x, -1, 0), self.call(aten.select.int, x, -1, 1)

    def pair(self, re: torch.fx.Node, im: torch.fx.Node) -> torch.fx.Node:
        return self.call(aten.stack.default, [re, im], -1)

    def lower(self, node: torch.fx.Node) -> torch.fx.Node | None:
        """The replacement of ``node``: a real-pair node for a complex result, a real node for a real
        result computed from complex inputs (``view_as_real``), or None to drop it."""
        t: Any = node.target
        args: Any = node.args  # fx's Argument union: this table knows each op's argument types
        r = self.r
        if t is aten._assert_tensor_metadata.default:
            return None
        if t in (aten.view_as_complex.default, aten.view_as_real.default, aten.clone.default,
                 aten.contiguous.default, aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default):
            return r(args[0])
        if t is operator.getitem:
            return self.call(operator.getitem, r(args[0]), args[1])
        if t in _DIM_ARG:
            at, default = _DIM_ARG[t]
            a = list(args) + [default] * (at + 1 - len(args))
            a[at] = _dim(a[at])
            return self.call(t, r(a[0]), *a[1:])
        if t is aten.unsqueeze.default:
            return self.call(t, r(args[0]), _dim(args[1]))
        if t in (aten.cat.default, aten.stack.default):
            parts = args[0]
            if not all(p in self.real for p in parts):
                raise ToMAError(f"{node.name}: {t} joins complex and real tensors; lower_complex takes complex-only joins.")
            return self.call(t, [r(p) for p in parts], _dim(args[1] if len(args) > 1 else 0))
        if t in (aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.expand.default):
            return self.call(t, r(args[0]), [*args[1], 2])
        if t is aten.permute.default:
            rank = len(node.meta["val"].shape)
            return self.call(t, r(args[0]), [d % rank for d in args[1]] + [rank])
        if t is aten.transpose.int:
            return self.call(t, r(args[0]), _dim(args[1]), _dim(args[2]))
        if t is aten.gather.default:
            index = args[2]
            idx = self.call(aten.unsqueeze.default, index, -1)
            idx = self.call(aten.expand.default, idx, [*index.meta["val"].shape, 2])
            return self.call(t, r(args[0]), _dim(args[1]), idx)
        if t is aten.index.Tensor:
            return self.call(t, r(args[0]), args[1])
        if t is aten.pad_sequence.default and (list(args[2:3]) or [node.kwargs.get("padding_value", 0.0)])[0] == 0:
            # Z-Image pads per-sample RoPE tables: zero padding is zero in both parts (pads dim 0 / 1 only)
            if not all(p in self.real for p in args[0]):
                raise ToMAError(f"{node.name}: pad_sequence mixes complex and real tensors; lower_complex takes complex-only ones.")
            return self.call(t, [r(p) for p in args[0]], *args[1:], **node.kwargs)
        if t in (aten.mul.Tensor, aten.mul.Scalar):
            return self._mul(node)
        if t in (aten.add.Tensor, aten.sub.Tensor) and all(isinstance(a, torch.fx.Node) and a in self.real for a in args[:2]):
            return self.call(t, r(args[0]), r(args[1]), **node.kwargs)
        if t is aten.neg.default:
            return self.call(t, r(args[0]))
        if t is aten.conj.default or t is aten._conj.default:
            re, im = self.parts(args[0])
            return self.pair(re, self.call(aten.neg.default, im))
        if t is aten.real.default or t is aten.imag.default:
            return self.call(aten.select.int, r(args[0]), -1, 0 if t is aten.real.default else 1)
        if t is aten.complex.default:
            return self.pair(args[0], args[1])
        if t is aten.polar.default:
            mag, ang = args
            return self.pair(self.call(aten.mul.Tensor, mag, self.call(aten.cos.default, ang)),
                             self.call(aten.mul.Tensor, mag, self.call(aten.sin.default, ang)))
        if t is aten._to_copy.default:
            dtype: Any = node.kwargs.get("dtype")
            if dtype is None or dtype in _REAL_OF:
                kw = {k: v for k, v in node.kwargs.items() if k != "dtype"}
                return self.call(t, r(args[0]), **({"dtype": _REAL_OF[dtype]} if dtype else {}), **kw)
        raise ToMAError(
            f"{node.name}: complex-valued {t} has no real-pair lowering, so this graph cannot be exported to ONNX "
            "(which has no complex tensors). Run it on the inductor backend, or keep RoPE real (cos/sin) in the model."
        )

    def _mul(self, node: torch.fx.Node) -> torch.fx.Node:
        a: Any = node.args[0]
        b: Any = node.args[1]
        ca, cb = a in self.real, isinstance(b, torch.fx.Node) and b in self.real
        if ca and cb:
            ar, ai = self.parts(a)  # type: ignore[arg-type]
            br, bi = self.parts(b)  # type: ignore[arg-type]
            mul, sub, add = aten.mul.Tensor, aten.sub.Tensor, aten.add.Tensor
            re = self.call(sub, self.call(mul, ar, br), self.call(mul, ai, bi))
            im = self.call(add, self.call(mul, ar, bi), self.call(mul, ai, br))
            return self.pair(re, im)
        z, s = (a, b) if ca else (b, a)
        if isinstance(s, torch.fx.Node):  # real tensor: broadcast over the pair
            s = self.call(aten.unsqueeze.default, s, -1)
        return self.call(aten.mul.Tensor, self.real[z], s)  # type: ignore[index]


def lower_complex(ep: torch.export.ExportedProgram) -> int:
    """Rewrite ``ep`` in place so that no value is complex; returns how many nodes it replaced.

    Complex user inputs or outputs are refused (the engine's interface is real); complex buffers and
    lifted constants become their real views, in new state dicts (the tensors ``ep`` shared with the
    program it came from are not touched). Call it on a program of your own, as the exporter does on
    its lowered copy: on a refusal part of the graph may already be rewritten.
    """
    graph = ep.graph
    if not has_complex(ep):
        return 0
    sig = ep.graph_signature
    user_inputs = set(sig.user_inputs)
    outputs = next(n for n in graph.nodes if n.op == "output")
    bad_out = [n.name for n in outputs.all_input_nodes if _is_complex(n)]
    if bad_out:
        raise ToMAError(f"outputs {bad_out} are complex; the engine's outputs must be real tensors.")
    state, constants = dict(ep.state_dict), dict(ep.constants)
    to_state = {**sig.inputs_to_buffers, **sig.inputs_to_parameters}
    to_const = dict(sig.inputs_to_lifted_tensor_constants)
    low = _Lowering(graph)
    replaced: list[torch.fx.Node] = []
    for node in list(graph.nodes):
        if node.op == "placeholder":
            if not _is_complex(node):
                continue
            if node.name in user_inputs:
                raise ToMAError(f"input {node.name!r} is complex; pass its real view (torch.view_as_real) instead.")
            key = to_state.get(node.name) or to_const[node.name]
            store = state if key in state else constants  # non-persistent buffers live with the constants
            store[key] = torch.view_as_real(store[key]).clone()
            node.meta["val"] = _real_val(node.meta["val"])
            low.real[node] = node  # now holds the real view itself
            continue
        if node.op != "call_function" or not (_is_complex(node) or any(a in low.real for a in node.all_input_nodes)):
            continue
        with graph.inserting_before(node):
            new = low.lower(node)
        replaced.append(node)
        if new is not None and _is_complex(node):
            low.real[node] = new
        elif new is not None:
            node.replace_all_uses_with(new)
    for node in reversed(replaced):  # users first: every user of a complex node was itself replaced
        graph.erase_node(node)
    ep._state_dict = state  # noqa: SLF001 - the program's own state, swapped whole
    ep._constants = constants  # noqa: SLF001
    ep.graph_module.recompile()
    return len(replaced)


def _real_val(val: torch.Tensor) -> torch.Tensor:
    mode = detect_fake_mode([val])
    if mode is None:
        return torch.view_as_real(val)
    with mode:
        return torch.view_as_real(val)
