"""Trial configs as data: a diffusers class, a tiny config, and its inputs as its pipeline builds them.

A :class:`Trial` is one row of :data:`toma_export.models.trial_configs.TRIALS` (the table
``scripts/try_architectures.py`` runs). Its config and inputs are plain values plus a small vocabulary
(:class:`Randn`, :class:`Fill`, :class:`Tensor`, :class:`Arange`, :class:`PrefixMask`, :class:`Cat`,
:class:`Call`) whose sizes are expressions over the trial's named dims (:data:`DEFAULT_DIMS` and the
row's own, e.g. ``f: "lat(5, 4)"``), so a row says how its pipeline shapes the inputs without a
function per model. A row with no inputs takes the one example-input builder of its family
(:func:`toma_export.models.inputs.example_inputs`, via the class's :class:`~toma_export.models.spec.ModelSpec`).
"""

from __future__ import annotations

import ast
import importlib
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Union

import torch

#: A size: an int, or an expression over the trial's dims (``"s8"``, ``"f * s16 * s16"``, ``"lat(5, 4)"``).
Dim = Union[int, str]

#: Dims every trial has, from the image side ``size`` in pixels: latent sides at a VAE factor of 8, 16
#: and 32 (a 16-px side is also the token side of 2x2-packed 8x latents) and the text length ``L``.
DEFAULT_DIMS: Mapping[str, str] = {"s8": "size // 8", "s16": "size // 16", "s32": "size // 32", "L": "8"}


def lat(pixel_frames: int, temporal: int) -> int:
    """Latent frames a causal video VAE with this temporal factor makes of ``pixel_frames`` (1 + k*t -> 1 + k)."""
    return (pixel_frames - 1) // temporal + 1


_OPS: Mapping[type, Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
}


def dim(expr: Dim, dims: Mapping[str, int]) -> int:
    """The value of a size: ints, dim names, ``+ - * //`` and ``lat(pixel_frames, temporal)``."""
    if isinstance(expr, int):
        return expr

    def ev(n: ast.AST) -> int:
        if isinstance(n, ast.Constant) and isinstance(n.value, int):
            return n.value
        if isinstance(n, ast.Name) and n.id in dims:
            return dims[n.id]
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            return _OPS[type(n.op)](ev(n.left), ev(n.right))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "lat" and len(n.args) == 2:
            return lat(ev(n.args[0]), ev(n.args[1]))
        raise ValueError(f"size {expr!r}: {ast.unparse(n)} is not an int, a dim ({', '.join(dims)}), "
                         "+ - * // or lat(frames, temporal)")

    return ev(ast.parse(expr, mode="eval").body)


@dataclass(frozen=True)
class D:
    """A size where a plain value goes (a config value, an int argument, a tensor's contents)."""

    expr: Dim


@dataclass(frozen=True)
class Randn:
    """Standard normal values, seeded by the sum of the shape (reproducible per input, independent of order)."""

    shape: tuple[Dim, ...]


@dataclass(frozen=True)
class Fill:
    """A tensor of one value (``dtype`` None: torch's default for the value: float32, int64 or bool)."""

    shape: tuple[Dim, ...]
    value: float | int | bool
    dtype: torch.dtype | None = None


def zeros(*shape: Dim, dtype: torch.dtype = torch.float32) -> Fill:
    return Fill(shape, 0, dtype)


def ones(*shape: Dim, dtype: torch.dtype = torch.float32) -> Fill:
    return Fill(shape, 1, dtype)


@dataclass(frozen=True)
class Tensor:
    """``torch.tensor(value)``; ``value`` may hold :class:`D` sizes."""

    value: Any
    dtype: torch.dtype | None = None


@dataclass(frozen=True)
class Arange:
    """``torch.arange(start, stop)`` (int64), with a leading batch axis of 1 if ``batch``."""

    stop: Dim
    start: Dim = 0
    batch: bool = False


@dataclass(frozen=True)
class PrefixMask:
    """A (1, length) bool mask, True on the first ``valid`` positions (text padded to a fixed length)."""

    length: Dim
    valid: Dim


@dataclass(frozen=True)
class Cat:
    """``torch.cat(parts, dim)``."""

    parts: tuple[Any, ...]
    dim: int = 0


@dataclass(frozen=True)
class Call:
    """``fn(*args, **kwargs)`` (``item``: one element of its result), for what its pipeline computes with code:
    ``fn`` is a callable or ``"module:qualname"`` (imported when used); the arguments are resolved first,
    :data:`MODEL` standing for the trial's model."""

    fn: Callable[..., Any] | str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    item: int | None = None


#: Stands for the trial's model in :class:`Call` arguments (pipeline helpers that read it).
MODEL: Any = type("MODEL", (), {"__repr__": lambda self: "MODEL"})()


def imported(path: str) -> Any:
    """The object at ``"module:qualname"``."""
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def resolve(value: Any, dims: Mapping[str, int], model: torch.nn.Module | None = None) -> Any:
    """The concrete value of a config or input: vocabulary items made, containers resolved element-wise."""

    def r(v: Any) -> Any:
        if v is MODEL:
            return model
        if isinstance(v, D):
            return dim(v.expr, dims)
        if isinstance(v, Randn):
            shape = [dim(s, dims) for s in v.shape]
            return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
        if isinstance(v, Fill):
            return torch.full([dim(s, dims) for s in v.shape], v.value, dtype=v.dtype)
        if isinstance(v, Tensor):
            return torch.tensor(r(v.value), dtype=v.dtype)
        if isinstance(v, Arange):
            a = torch.arange(dim(v.start, dims), dim(v.stop, dims))
            return a[None] if v.batch else a
        if isinstance(v, PrefixMask):
            return torch.arange(dim(v.length, dims))[None] < dim(v.valid, dims)
        if isinstance(v, Cat):
            return torch.cat([r(p) for p in v.parts], dim=v.dim)
        if isinstance(v, Call):
            fn = imported(v.fn) if isinstance(v.fn, str) else v.fn
            out = fn(*(r(a) for a in v.args), **{k: r(a) for k, a in v.kwargs.items()})
            return out if v.item is None else out[v.item]
        if isinstance(v, dict):
            return {k: r(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(r(x) for x in v)
        return v

    return r(value)


@dataclass(frozen=True)
class Trial:
    """One diffusers class to try: its config and its inputs as data (sizes over :attr:`dims`)."""

    name: str
    #: The diffusers class (``diffusers.<class_name>``).
    class_name: str
    #: Constructor keyword arguments; :class:`D` for the ones that follow the image size.
    config: Mapping[str, Any]
    #: Forward keyword arguments, or a :class:`Call` making them all; None: the family's example inputs
    #: (:func:`toma_export.models.inputs.example_inputs`) at :attr:`frames` pixel frames.
    inputs: Mapping[str, Any] | Call | None = None
    #: The row's own dims beyond :data:`DEFAULT_DIMS`, evaluated in order (``{"f": "lat(5, 4)"}``).
    dims: Mapping[str, str] = field(default_factory=dict)
    #: Pixel frames for the family's example inputs (video families).
    frames: int = 1
    #: Set-up the config cannot say (attention processors a parent model installs, weights left empty).
    prepare: Callable[[torch.nn.Module], None] | None = None

    def sizes(self, size: int) -> dict[str, int]:
        """Every dim of this row at an image side of ``size`` pixels."""
        out = {"size": size}
        for name, expr in {**DEFAULT_DIMS, **self.dims}.items():
            out[name] = dim(expr, out)
        return out

    def build(self, size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The model (weights from the global seed: seed first) in eval mode, and its inputs at ``size`` px."""
        import diffusers

        dims = self.sizes(size)
        model: torch.nn.Module = getattr(diffusers, self.class_name)(**resolve(self.config, dims))
        if self.prepare is not None:
            self.prepare(model)
        model.eval()
        if self.inputs is None:
            from toma_export.models.inputs import example_inputs

            return model, example_inputs(model, height=size, width=size, frames=self.frames)
        return model, resolve(self.inputs, dims, model)
