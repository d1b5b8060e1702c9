"""Capture: ``torch.export`` of a diffusers denoiser with its own keyword arguments.

The pass works on the lifted ATen graph (parameters are placeholders), so a rewritten graph can be
run directly with the same weights and re-exported without copying them.
"""

from __future__ import annotations

import contextlib
import functools
import io
import sys
from dataclasses import dataclass
from typing import Any

import sympy
import torch
import torch.utils._pytree as pytree
from torch.export import ExportedProgram
from torch.export._tree_utils import reorder_kwargs
from torch.export.graph_signature import InputKind
from torch.utils._sympy.numbers import int_oo

from toma_export.errors import ToMAConfigError, ToMATypeError, UnsupportedModelError
from toma_export.graph.inline_regions import inline_inert_regions


@dataclass
class Captured:
    """An exported model plus what is needed to call its graph with flat tensors."""

    ep: ExportedProgram
    example_kwargs: dict[str, Any]
    #: The model's config (diffusers ``model.config``), for grid hints the inputs cannot give (patch sizes).
    model_config: Any = None

    @property
    def lifted(self) -> list[torch.Tensor]:
        """Parameters, buffers and constants in placeholder order (before the user inputs)."""
        out = []
        for spec in self.ep.graph_signature.input_specs:
            if spec.kind == InputKind.USER_INPUT:
                continue
            if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER) and spec.target in self.ep.state_dict:
                out.append(self.ep.state_dict[spec.target])
            elif spec.target is not None and spec.target in self.ep.constants:
                out.append(self.ep.constants[spec.target])
            else:
                raise UnsupportedModelError(f"cannot bind lifted input {spec.arg} ({spec.kind}) of the exported model")
        return out

    @property
    def user_input_names(self) -> list[str | None]:
        """Per flat user input: its placeholder's name; None for a constant input (export keeps its value)."""
        return [name if isinstance(name, str) else None for name in self.ep.graph_signature.user_inputs]

    @property
    def batch_dims(self) -> list[int | None]:
        """Per flat user input: 0 where its dim 0 is the symbolic batch (``dynamic_batch``), else None."""
        nodes = {n.name: n for n in self.ep.graph.nodes if n.op == "placeholder"}
        out: list[int | None] = []
        for name in self.user_input_names:
            v = nodes[name].meta.get("val") if name is not None and name in nodes else None
            sym = isinstance(v, torch.Tensor) and v.ndim > 0 and isinstance(v.shape[0], torch.SymInt)
            out.append(0 if sym else None)
        return out

    @property
    def batch_range(self) -> tuple[int, int | None] | None:
        """(min, max) batch the captured program is valid for (max None: unbounded); None when static.

        The min is 1: export traces a dynamic dim as >= 2 but its program holds no branch on it
        that differs at 1 (0/1 specialisation only affects tracing); tests check batch 1 exactly.
        """
        nodes = {n.name: n for n in self.ep.graph.nodes if n.op == "placeholder"}
        for name, d in zip(self.user_input_names, self.batch_dims):
            if d is None or name is None:
                continue
            sym = nodes[name].meta["val"].shape[d].node.expr
            vr = self.ep.range_constraints.get(sym)
            upper = None if vr is None or not vr.upper.is_integer or vr.upper in (int_oo, sympy.oo) else int(vr.upper)
            return 1, upper
        return None

    @property
    def dynamic_batch(self) -> bool:
        """Whether the program was captured with a symbolic batch (any batch at the same resolution)."""
        return any(d is not None for d in self.batch_dims)

    def flatten(self, kwargs: dict[str, Any]) -> list[Any]:
        """The model's keyword arguments as the graph's flat user inputs (checked against the spec).

        Every pytree leaf is a graph input, ``None`` and constants included (export specialises them).
        """
        in_spec = self.ep.call_spec.in_spec
        missing = [k for k in self.example_kwargs if k not in kwargs]
        extra = [k for k in kwargs if k not in self.example_kwargs]
        if missing or extra:
            raise ToMAConfigError(
                "the program was captured with the keyword arguments " + ", ".join(self.example_kwargs)
                + (f"; {', '.join(missing)} missing" if missing else "") + (f"; {', '.join(extra)} not among them" if extra else "")
                + ". Pass the same arguments as the example, or rewrite the model with the ones you call it with."
            )
        flat, spec = pytree.tree_flatten(((), reorder_kwargs(kwargs, in_spec) if in_spec else kwargs))
        if in_spec is not None and spec != in_spec:
            raise ToMAConfigError(
                f"arguments do not match the captured call: expected {in_spec}, got {spec}; "
                "pass the same keyword arguments as the example (rewrite again for other ones)."
            )
        self._check_shapes(flat)
        return flat

    @functools.cached_property
    def _input_shapes(self) -> list[tuple[str, list[int | None] | None]]:
        """Per flat user input: its name and shape as captured (None where a dim is symbolic, i.e. the
        dynamic batch), or None for a non-tensor input."""
        nodes = {n.name: n for n in self.ep.graph.nodes if n.op == "placeholder"}
        paths = [pytree.keystr(path[1:]) for path, _ in pytree.tree_flatten_with_path(((), self.example_kwargs))[0]]
        out: list[tuple[str, list[int | None] | None]] = []
        for name, path in zip(self.user_input_names, paths):
            node = nodes.get(name) if isinstance(name, str) else None  # a constant input: its value, no node
            val = node.meta.get("val") if node is not None else None
            shape: list[int | None] | None = (
                [d if isinstance(d, int) else None for d in val.shape] if isinstance(val, torch.Tensor) else None
            )
            out.append((path.lstrip("[").rstrip("]").strip("'") if path.count("[") == 1 else path, shape))
        return out

    def _check_shapes(self, flat: list[Any]) -> None:
        """Each tensor input has the captured shape (a symbolic batch dim takes any size): a call at
        another resolution is refused here, naming the input, instead of failing inside the graph."""
        expected = self._input_shapes
        if len(expected) != len(flat):
            return  # leaves the graph does not take one by one: the graph checks its own inputs
        for (name, want), got in zip(expected, flat):
            if want is None:
                continue
            if not isinstance(got, torch.Tensor):
                raise ToMATypeError(f"input {name} must be a tensor of shape {want}, got a {type(got).__name__}.")
            if got.ndim != len(want) or any(w is not None and g != w for g, w in zip(got.shape, want)):
                shown = "[" + ", ".join("B" if w is None else str(w) for w in want) + "]"
                raise ToMAConfigError(
                    f"input {name} has shape {list(got.shape)}, but the program was rewritten for {shown} (its "
                    "resolution" + (", any batch B" if None in want else " and batch") + "): rewrite the model "
                    "with example inputs of this size (toma_export.rewrite(model, kwargs, config))."
                )

    def unflatten(self, flat_out: list[Any]) -> Any:
        return pytree.tree_unflatten(list(flat_out), self.ep.call_spec.out_spec)


def _batch_of(example_kwargs: dict[str, Any]) -> int:
    """The example's batch: the leading dim of the first tensor input of rank >= 3 (latents / tokens)."""
    for leaf in pytree.tree_leaves(example_kwargs):
        if isinstance(leaf, torch.Tensor) and leaf.ndim >= 3:
            return int(leaf.shape[0])
    raise UnsupportedModelError(
        "dynamic_batch=True needs a batched latent or token input (rank >= 3) among the example inputs; "
        "none was found. Capture with dynamic_batch=False (static shapes) instead."
    )


def _is_position_ids(path: tuple[Any, ...], leaf: torch.Tensor) -> bool:
    """Flux-style unbatched position ids ``(N, 3)`` (``img_ids`` / ``txt_ids``): no batch dim."""
    key = getattr(path[-1], "key", None) if path else None
    return leaf.ndim == 2 and leaf.shape[-1] == 3 and isinstance(key, str) and key.endswith("_ids")


def batch_dynamic_shapes(example_kwargs: dict[str, Any], dim: Any = None) -> tuple[Any, list[str]]:
    """``dynamic_shapes`` for ``torch.export`` with one shared batch ``Dim`` on every batch-leading input.

    Batch-leading: a tensor whose dim 0 equals the example batch (SDXL: ``sample``,
    ``encoder_hidden_states``, ``added_cond_kwargs.text_embeds/time_ids``; Flux: ``hidden_states``,
    ``encoder_hidden_states``, ``pooled_projections``, ``timestep``, ``guidance``). 0-d inputs (SDXL's
    timestep) and Flux's position ids ``(N, 3)`` have no batch dim. Returns the spec and the names
    of the batch-leading inputs. The example batch must be >= 2: ``torch.export`` specialises a
    size-1 dim to the constant 1.
    """
    batch = _batch_of(example_kwargs)
    if batch < 2:
        raise ToMAConfigError(
            f"dynamic_batch=True needs an example batch >= 2 (got {batch}): torch.export specialises a "
            "batch of 1 to a constant. Capture with batch 2; the program then accepts any batch."
        )
    dim = dim if dim is not None else torch.export.Dim("batch")
    names: list[str] = []

    def spec(path: tuple[Any, ...], leaf: Any) -> Any:
        if not isinstance(leaf, torch.Tensor) or leaf.ndim == 0 or int(leaf.shape[0]) != batch:
            return None
        if _is_position_ids(path, leaf):
            return None
        names.append(".".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path))
        return {0: dim}

    shapes = pytree.tree_map_with_path(spec, dict(example_kwargs))
    return shapes, names


def _holders(model: torch.nn.Module) -> list[Any]:
    """The objects whose attributes a forward may cache into: every submodule, and the plain
    (non-module) objects they hold (diffusers' RoPE embedders that cache frequency tables)."""
    out: list[Any] = []
    seen: set[int] = set()
    for m in model.modules():
        for obj in (m, *vars(m).values()):
            if id(obj) in seen or isinstance(obj, (torch.Tensor, type)) or not hasattr(obj, "__dict__"):
                continue
            if obj is not m and isinstance(obj, torch.nn.Module):
                continue  # a submodule: visited by modules()
            seen.add(id(obj))
            out.append(obj)
    return out


def _has_fake(value: Any) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    try:
        return any(isinstance(x, FakeTensor) for x in pytree.tree_leaves(value))
    except Exception:  # noqa: BLE001 - an attribute pytree cannot walk holds no fake tensor we could restore
        return False


class _restore_cached_attributes:
    """Undo what tracing cached on the model: a forward that caches a table on first use (``if self.freqs is
    None: self.freqs = ...``) stores a fake tensor while ``torch.export`` traces it, which breaks the next
    capture (and eager calls). Every attribute that holds a fake tensor afterwards gets its old value back
    (or is removed if it did not exist)."""

    def __init__(self, model: torch.nn.Module):
        self.before = [(obj, dict(vars(obj))) for obj in _holders(model)]

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        missing = object()
        for obj, old in self.before:
            for key, value in list(vars(obj).items()):
                if value is old.get(key, missing) or not _has_fake(value):
                    continue
                if key in old:
                    setattr(obj, key, old[key])
                else:
                    delattr(obj, key)


class _bypass_class_caches:
    """Trace the plain functions behind ``functools.lru_cache``/``cache`` methods of the model's classes.

    A cache on a class method (NucleusMoE's RoPE ``_compute_video_freqs``) lives on the class, not the
    instance, so a fake tensor cached while ``torch.export`` traces would be served to the user's next
    eager call and break it (and the next capture). During the export each such attribute is the
    wrapped function itself; the caches are put back, untouched, afterwards."""

    def __init__(self, model: torch.nn.Module):
        self.classes = {klass for obj in _holders(model) for klass in type(obj).__mro__ if klass is not object}
        self.swapped: list[tuple[type, str, Any]] = []

    def __enter__(self) -> None:
        for klass in self.classes:
            for name, attr in list(vars(klass).items()):
                kind = type(attr) if isinstance(attr, (staticmethod, classmethod)) else None
                inner = attr.__func__ if kind is not None else attr
                if isinstance(inner, functools._lru_cache_wrapper):
                    plain = getattr(inner, "__wrapped__")  # the lru_cache wrapper's undecorated function
                    setattr(klass, name, kind(plain) if kind is not None else plain)
                    self.swapped.append((klass, name, attr))

    def __exit__(self, *exc: Any) -> None:
        for klass, name, attr in self.swapped:
            setattr(klass, name, attr)
        self.swapped.clear()


def _export(model: torch.nn.Module, example_kwargs: dict[str, Any], dynamic_shapes: Any) -> ExportedProgram:
    """``torch.export``; with a dynamic batch, a range the model's code imposes is taken (once).

    E.g. diffusers' ``Upsample2D`` branches on ``batch >= 64`` (a ``.contiguous()`` workaround), so
    a UNet exports for batch <= 63; export names that range as a suggested fix, which is applied
    and then recorded (:attr:`Captured.batch_range`) and enforced by the artifacts' runtime.
    """
    with torch.no_grad(), _restore_cached_attributes(model), _bypass_class_caches(model):
        try:
            return torch.export.export(model, (), dict(example_kwargs), dynamic_shapes=dynamic_shapes, strict=False)
        except torch._dynamo.exc.UserError as e:
            msg = getattr(e, "msg", str(e))
            if dynamic_shapes is None or "Suggested fixes" not in msg:
                raise
            from torch.export.dynamic_shapes import refine_dynamic_shapes_from_suggested_fixes

            refined = refine_dynamic_shapes_from_suggested_fixes(msg, dynamic_shapes)
            return torch.export.export(model, (), dict(example_kwargs), dynamic_shapes=refined, strict=False)


def export_failure(model: torch.nn.Module, e: BaseException) -> str:
    """Why ``torch.export`` could not capture ``model``, and what to do, from the exception torch raised."""
    name = type(model).__name__
    text = f"{type(e).__name__}: {str(e).strip()}"
    first = text.splitlines()[0][:300]
    low = text.lower()
    if any(k in low for k in ("data-dependent", "data dependent", "guardondatadependent", "unbacked", "symint",
                               "could not guard", "item()", "nonzero")):
        reason = ("its forward reads tensor values to decide shapes or control flow (data-dependent lengths such as "
                  "text lengths taken from an attention mask, per-sample sequence packing, or mixture-of-experts "
                  "routing), which torch.export cannot capture as one static graph")
        fix = ("pass inputs that make those lengths static (e.g. no padding mask / full-length text), use a model "
               "variant without data-dependent routing, or run ToMA eagerly with toma_export.apply")
    else:
        reason = "torch.export failed on its forward"
        fix = "check that model(**example_kwargs) runs with these inputs, or run ToMA eagerly with toma_export.apply"
    return f"{name} cannot be captured for the graph pass: {reason} (torch: {first}). Fix: {fix}."


def capture(model: torch.nn.Module, example_kwargs: dict[str, Any], dynamic_batch: bool = False) -> Captured:
    """``torch.export`` (non-strict) of ``model(**example_kwargs)``.

    A failure is an :class:`UnsupportedModelError` naming the reason and the fix; what torch printed
    to stderr while failing (the whole traced graph, for data-dependent code) is dropped. Shapes are static, or with ``dynamic_batch=True`` every batch-leading input shares one symbolic
    batch dim (see :func:`batch_dynamic_shapes`); all other dims stay static.
    """
    dynamic_shapes = batch_dynamic_shapes(example_kwargs)[0] if dynamic_batch else None
    printed = io.StringIO()  # torch prints the whole traced graph when a data-dependent export fails
    try:
        with contextlib.redirect_stderr(printed):
            ep = _export(model, example_kwargs, dynamic_shapes)
    except Exception as e:
        if not dynamic_batch:
            raise UnsupportedModelError(export_failure(model, e)) from e
        raise UnsupportedModelError(
            f"{type(model).__name__} does not export with a dynamic batch: {str(e).strip()[:2000]}\n"
            "Capture with dynamic_batch=False and rewrite once per batch size."
        ) from e
    sys.stderr.write(printed.getvalue())  # a successful export's warnings are the user's to see
    inline_inert_regions(ep.graph_module)  # disabled-autocast / grad-mode blocks around RoPE and embeddings
    captured = Captured(ep, dict(example_kwargs), getattr(model, "config", None))
    if dynamic_batch and not any(d is not None for d in captured.batch_dims):
        raise UnsupportedModelError("the captured program has no symbolic batch dim; capture with dynamic_batch=False.")
    return captured
