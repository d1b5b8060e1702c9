"""An artifact's manifest against the engine files it describes, before any of them is opened.

:func:`~toma_export.engines.artifact.read_manifest` proves that the files are the ones the manifest
lists (hashes) and that the manifest is well formed; it cannot tell whether the manifest still
describes them: an edited ``backend``, ``input_spec``, ``input_dtypes``, ``precision`` or ``shapes``,
or engine files swapped between variants with their hashes rewritten, pass it and then fail deep
inside ONNX Runtime, a zip reader or ``json``. :func:`check_engine_files` reads what each engine
file says about itself (an ONNX graph's inputs and outputs, without its weights; an AOTInductor
package's zip directory) and refuses any disagreement as an inconsistent artifact, naming the entry.
:func:`check_shapes_fit_model` checks the recorded resolution against the input shapes on the
model's weightless shell.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from toma_export.dtypes import DTYPES
from toma_export.engines.manifest import ArtifactError, Manifest

__all__ = ["check_engine_files", "check_shapes_fit_model"]

#: The file suffix each backend writes (engines.build._write_engine).
SUFFIXES = {"onnxruntime": ".onnx", "inductor": ".pt2", "tensorrt": ".plan"}
#: torch dtype -> ONNX TensorProto element type.
_ONNX_ELEM = {torch.float32: 1, torch.uint8: 2, torch.int8: 3, torch.int32: 6, torch.int64: 7, torch.bool: 9,
              torch.float16: 10, torch.float64: 11, torch.bfloat16: 16}
_REBUILD = "the artifact is inconsistent (the manifest or the engine files were edited or swapped); rebuild it " \
           "(toma-export build ... --force --out FOLDER)"


def _inconsistent(folder: Path, what: str) -> ArtifactError:
    return ArtifactError(f"{folder}: {what}: {_REBUILD}.")


def _dtype(name: Any) -> torch.dtype | None:
    d = getattr(torch, str(name).removeprefix("torch."), None) if isinstance(name, str) else None
    return d if isinstance(d, torch.dtype) else None


def recorded_dtypes(folder: Path, manifest: Manifest) -> list[torch.dtype]:
    """``extra.input_dtypes`` as torch dtypes, one per input, checked against ``extra.precision`` (the
    schema has checked that each is a known precision and a list of names)."""
    names, precision = manifest.extra.input_dtypes, manifest.extra.precision
    n = len(manifest.shapes.inputs)
    if len(names) != n:
        raise _inconsistent(folder, f"extra.input_dtypes {names!r} must name one dtype per input ({n} inputs in "
                                    "shapes.inputs)")
    found = [_dtype(x) for x in names]
    dtypes = [d for d in found if d is not None]
    if len(dtypes) != n:
        raise _inconsistent(folder, f"extra.input_dtypes {names!r} names dtypes torch does not have")
    floats = {d for d in dtypes if d.is_floating_point}
    want = DTYPES[precision]
    if floats and want not in floats:
        shown = ", ".join(sorted(str(d).removeprefix("torch.") for d in floats))
        raise _inconsistent(folder, f"extra.precision says {precision}, but the recorded inputs are {shown} (an {precision} "
                                    f"engine takes {str(want).removeprefix('torch.')} latents): a precision mismatch")
    return dtypes


def _input_spec_leaves(folder: Path, manifest: Manifest) -> None:
    """``extra.input_spec`` is a tree spec of the model's keyword arguments, with room for every input."""
    import torch.utils._pytree as pytree

    text = manifest.extra.input_spec
    try:
        spec = pytree.treespec_loads(text)
        kwargs_spec = spec.child(1) if hasattr(spec, "child") else spec.children_specs[1]
        keys = list(kwargs_spec.context)
    except Exception as err:  # noqa: BLE001 - json, key and type errors of an edited spec alike
        raise _inconsistent(folder, f"extra.input_spec is not the input structure toma-export writes "
                                    f"({type(err).__name__}: {str(err)[:160]})") from None
    n = len(manifest.shapes.inputs)
    if not all(isinstance(k, str) for k in keys) or spec.num_leaves < n:
        raise _inconsistent(folder, f"extra.input_spec has {spec.num_leaves} inputs (keys {keys}), fewer than the "
                                    f"{n} of shapes.inputs")


def _onnx_io(path: Path) -> tuple[list[tuple[int, list[int | None]]], int]:
    """(element type, dims; None where symbolic) per graph input that is not an initializer, and the output count."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as err:  # noqa: BLE001 - DecodeError and friends: not an ONNX model
        raise ArtifactError(f"{path} is not an ONNX model ({type(err).__name__})") from None
    inits = {i.name for i in graph.initializer}
    inputs = []
    for v in graph.input:
        if v.name in inits:
            continue
        t = v.type.tensor_type
        inputs.append((t.elem_type, [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]))
    return inputs, len(graph.output)


def _check_onnx(folder: Path, manifest: Manifest, name: str, rel: str, dtypes: list[torch.dtype]) -> None:
    path = folder / rel
    try:
        inputs, n_out = _onnx_io(path)
    except ArtifactError:
        raise _inconsistent(folder, f"{rel} (variant {name!r}) is not an ONNX model, but backend is "
                                    f"{manifest.backend!r}") from None
    shapes = manifest.shapes.inputs
    groups = len(manifest.extra.groups)
    want_in = len(shapes) + (groups if name == "reuse" else 0)
    want_out = 1 + (groups if name == "select" else 0)
    if len(inputs) != want_in or n_out < want_out:
        raise _inconsistent(
            folder, f"{rel} takes {len(inputs)} inputs and gives {n_out} outputs, but a {name!r} variant of this manifest "
            f"takes {want_in} ({len(shapes)} model inputs" + (f" + {groups} destination groups" if name == "reuse" else "")
            + f") and gives {want_out} or more")
    dynamic = manifest.shapes.dynamic_batch
    for i, ((elem, dims), want) in enumerate(zip(inputs, shapes)):
        fits = len(dims) == len(want) and all(d is None and dynamic or d == w for d, w in zip(dims, want))
        if not fits:
            shown = [d if d is not None else "?" for d in dims]
            raise _inconsistent(folder, f"{rel} input {i} has shape {shown}, but shapes.inputs[{i}] records {want}")
        if _ONNX_ELEM.get(dtypes[i]) not in (None, elem):
            got = next((str(d).removeprefix("torch.") for d, e in _ONNX_ELEM.items() if e == elem), f"type {elem}")
            claim = str(dtypes[i]).removeprefix("torch.")
            what = (f"a precision mismatch: extra.precision {manifest.extra.precision} / input_dtypes "
                    f"say {claim}, but {rel} takes {got} at input {i}" if dtypes[i].is_floating_point
                    else f"{rel} takes {got} at input {i}, but extra.input_dtypes records {claim}")
            raise _inconsistent(folder, what)


def check_engine_files(folder: str | Path, manifest: Manifest) -> list[torch.dtype]:
    """Refuse a manifest that does not describe its engine files (see the module doc); returns the
    per-input dtypes as recorded. Reads no weights."""
    folder = Path(folder)
    dtypes = recorded_dtypes(folder, manifest)
    _input_spec_leaves(folder, manifest)
    suffix = SUFFIXES.get(manifest.backend)
    if suffix is None:
        raise _inconsistent(folder, f"backend {manifest.backend!r} is not one this runtime loads "
                                    f"({', '.join(SUFFIXES)})")
    for name, rel in manifest.extra.variants.items():
        if not rel.endswith(suffix):
            raise _inconsistent(folder, f"variant {name!r} is {rel}, but backend {manifest.backend!r} writes {suffix} "
                                        "files")
        if manifest.backend == "onnxruntime":
            _check_onnx(folder, manifest, name, rel, dtypes)
        elif manifest.backend == "inductor" and not zipfile.is_zipfile(folder / rel):
            raise _inconsistent(folder, f"{rel} (variant {name!r}) is not an AOTInductor package (a zip archive)")
    return dtypes


def check_shapes_fit_model(folder: str | Path, manifest: Manifest, shell: torch.nn.Module) -> None:
    """The recorded batch, resolution and frames give the recorded input structure and shapes on the
    model's weightless shell (``shapes.height`` edited to another size is refused here, not deep in a run)."""
    from toma_export.models.inputs import example_inputs

    s = manifest.shapes
    try:
        kwargs = example_inputs(shell, batch=s.batch, height=s.height, width=s.width, frames=s.frames, device="meta")
    except (ValueError, TypeError) as err:
        raise _inconsistent(Path(folder), f"shapes (batch {s.batch}, {s.height}x{s.width}) do not fit the "
                                          f"model ({str(err)[:200]})") from None
    from toma_export.engines.signature import dump_spec

    if dump_spec(kwargs) != manifest.extra.input_spec:
        raise _inconsistent(Path(folder), f"extra.input_spec is not the input structure of {manifest.model.class_name} "
                                          f"(its keyword arguments are {', '.join(kwargs)})")
    got = [list(t.shape) for t in torch.utils._pytree.tree_leaves(kwargs) if isinstance(t, torch.Tensor)]
    if got != s.inputs:
        raise _inconsistent(Path(folder), f"shapes says batch {s.batch} at {s.height}x{s.width}, which gives "
                                          f"inputs {got}, but shapes.inputs records {s.inputs}")
