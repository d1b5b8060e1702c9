"""Load an artifact folder into a step runner for :class:`toma_export.runtime.ToMADenoiser`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from toma_export.dtypes import DTYPES
from toma_export.engines.artifact import read_manifest
from toma_export.engines.manifest import ArtifactError, Manifest, Shapes
from toma_export.engines.consistency import check_engine_files
from toma_export.engines.signature import flatten_inputs
from toma_export.errors import ToMAError
from toma_export.schedule import StepSchedule, Variant, run_step


def _named(engine: Any) -> Variant:
    return lambda flat: engine(dict(zip(engine.input_names, flat)))


def _open_variant(folder: Path, backend: str, file: str) -> Variant:
    path = folder / file
    if backend == "onnxruntime":
        from toma_export.engines.onnxruntime import OrtEngine

        return _named(OrtEngine(path))
    if backend == "inductor":
        return open_aoti_package(path)
    if backend == "tensorrt":
        from toma_export.engines.trt_engine import TrtEngine

        return _named(TrtEngine(path))
    raise ArtifactError(f"{folder}: backend {backend!r} is not one this runtime can load.")


def open_aoti_package(path: Path) -> Variant:
    """An AOTInductor ``.pt2`` as a variant on flat tensor inputs. The package's own ``__call__`` wants
    the exported call structure (keyword arguments, non-tensor leaves such as ``return_dict``) for a
    model captured with keywords; its loader's ``boxed_run`` takes the flat tensors, in the order
    :func:`~toma_export.engines.signature.flatten_inputs` gives them, for every variant alike."""
    from torch._inductor import aoti_load_package

    loader = aoti_load_package(str(path)).loader
    return lambda flat: list(loader.boxed_run(list(flat)))  # boxed: it may consume the list it is given


class ShapeMismatchError(ToMAError):
    """Inputs whose shapes differ from the ones the artifact was built for."""


@dataclass
class ProgramRunner:
    """Runs the artifact's variants one step at a time on a caller's :class:`StepSchedule`
    (one per generation: the runtime wrapper's, ``verify``'s, a served request's)."""

    variants: dict[str, Variant]
    input_spec: str
    num_groups: int
    shapes: Shapes
    selections: int = 0
    #: Per flat input, the dtype the engine takes (manifest ``extra.input_dtypes``; None: as given).
    #: Floating inputs in another floating dtype are converted (e.g. fp32 latents into an fp16
    #: artifact); outputs come back in the artifact's precision.
    input_dtypes: list[torch.dtype] | None = None

    @property
    def input_shapes(self) -> list[list[int]]:
        return self.shapes.inputs

    def flatten(self, inputs: dict[str, Any]) -> list[torch.Tensor]:
        flat = flatten_inputs(inputs, self.input_spec)
        if self.input_dtypes is not None and len(self.input_dtypes) == len(flat):
            flat = [t.to(d) if t.dtype != d and t.is_floating_point() and d.is_floating_point else t
                    for t, d in zip(flat, self.input_dtypes)]
        got = [list(t.shape) for t in flat]
        if self.shapes.dynamic_batch:
            if not self._fits_dynamic(got):
                raise ShapeMismatchError(
                    f"inputs of shapes {got} do not fit this artifact, built for any batch "
                    f"({self._batches()}, one for all inputs; built at batch {self.shapes.batch}) at "
                    f"{self._size()} "
                    f"(input shapes {self.input_shapes}, dim 0 free where the batch is). Build an artifact for "
                    f"this resolution (toma-export build --height/--width{self._frames_flag()} --dynamic-batch)."
                )
            return flat
        if got != self.input_shapes:
            raise ShapeMismatchError(
                f"inputs of shapes {got} do not fit this artifact, built for batch {self.shapes.batch} at "
                f"{self._size()} (input shapes {self.input_shapes}). Build an artifact for this batch size and "
                f"resolution (toma-export build --batch/--height/--width{self._frames_flag()})."
            )
        return flat

    def _size(self) -> str:
        """``HxW`` and, for a clip, its pixel frames."""
        s = self.shapes
        size = f"{s.height}x{s.width}" if s.height else "?x?"  # bench rows: pixel size not known
        return size + (f" x {s.frames} frames" if s.frames > 1 else "")

    def _frames_flag(self) -> str:
        return "/--frames" if self.shapes.frames > 1 else ""

    def _fits_dynamic(self, got: list[list[int]]) -> bool:
        """Same shapes as built, except dim 0 of the batch-leading inputs: any batch >= 1, one for all."""
        dims = self.shapes.batch_dims or [None] * len(self.input_shapes)
        if len(got) != len(self.input_shapes) or len(dims) != len(got):
            return False
        batches: set[int] = set()
        for g, e, d in zip(got, self.input_shapes, dims):
            if d is None:
                if g != e:
                    return False
                continue
            if len(g) != len(e) or g[:d] + g[d + 1 :] != e[:d] + e[d + 1 :]:
                return False
            batches.add(g[d])
        top = self.shapes.batch_max
        return len(batches) == 1 and min(batches) >= 1 and (top is None or max(batches) <= top)

    def _batches(self) -> str:
        top = self.shapes.batch_max
        return "1 or more" if top is None else f"1 to {top}"

    def _batch(self, flat: list[torch.Tensor]) -> int:
        dims = self.shapes.batch_dims or [0]
        found = next((int(t.shape[d]) for t, d in zip(flat, dims) if d is not None), None)
        return found if found is not None else self.shapes.batch

    def __call__(self, inputs: dict[str, Any], schedule: StepSchedule) -> torch.Tensor:
        """One step: the select variant when ``schedule`` says so (or carries nothing for this batch),
        which stores its destinations there; the reuse variant with the carried ones otherwise."""
        flat = self.flatten(inputs)
        if "single" in self.variants:
            return self.variants["single"](flat)[0]
        # Destinations are per batch: a dynamic-batch artifact seeing another batch selects anew.
        keys = [(g, self._batch(flat)) for g in range(self.num_groups)]
        out = run_step(schedule, keys, self.variants["select"], self.variants["reuse"], flat)
        if schedule.selecting:
            self.selections += 1
        return out[0]


def make_runner(
    variants: Mapping[str, Variant], *, input_spec: str, num_groups: int, shapes: Shapes,
    input_dtypes: Sequence[str] | None = None,
) -> ProgramRunner:
    """The one way a :class:`ProgramRunner` is made: ``input_spec``, ``num_groups`` (destination groups) and
    ``input_dtypes`` (per flat input, its dtype name) as an artifact's manifest records them
    (:class:`~toma_export.engines.manifest.BuildDetails`), ``shapes`` its shapes."""
    return ProgramRunner(
        variants=dict(variants), input_spec=input_spec, num_groups=num_groups, shapes=shapes,
        input_dtypes=parse_input_dtypes(input_dtypes),
    )


def precision_dtype(manifest: Manifest) -> torch.dtype:
    """The artifact's floating dtype (``extra.precision``; the map: :data:`toma_export.dtypes.DTYPES`)."""
    return DTYPES[manifest.extra.precision]


def input_dtypes(manifest: Manifest) -> list[torch.dtype] | None:
    """Per flat input, its dtype as built (``extra.input_dtypes``)."""
    return parse_input_dtypes(manifest.extra.input_dtypes)


def parse_input_dtypes(names: Sequence[str] | None) -> list[torch.dtype] | None:
    """``["float16", "int64", ...]`` as dtypes; None stays None; unknown names are refused."""
    if names is None:
        return None
    found = [getattr(torch, str(n).removeprefix("torch."), None) for n in names]
    dtypes = [d for d in found if isinstance(d, torch.dtype)]
    if len(dtypes) != len(found):
        raise ArtifactError(f"manifest extra.input_dtypes {list(names)!r} names unknown dtypes; rebuild the artifact.")
    return dtypes


@dataclass
class LoadedArtifact:
    folder: Path
    manifest: Manifest
    runner: ProgramRunner


def load_artifact(folder: str | Path, *, cuda_graphs: bool = False) -> LoadedArtifact:
    """Check the artifact, then open each variant on its backend (``cuda_graphs``: AOTInductor
    variants captured as CUDA graphs per shape and replayed, :mod:`toma_export.runtime.cudagraph`).

    :func:`~toma_export.engines.artifact.read_manifest` checks the manifest (bounded read, schema and
    config), that it was built by this toma-export version, that every path it names is a regular
    file inside the folder, that it lists every file, and every file's hash: nothing is opened before.
    """
    from toma_export import __version__

    folder = Path(folder)
    manifest = read_manifest(folder, expect_version=__version__)
    check_engine_files(folder, manifest)  # the manifest describes these engine files, before anything opens
    extra = manifest.extra
    variants = {name: _open_variant(folder, manifest.backend, file) for name, file in extra.variants.items()}
    if cuda_graphs:
        if manifest.backend != "inductor":
            raise ArtifactError(f"{folder}: cuda_graphs=True replays torch variants (AOTInductor, backend 'inductor'); "
                                f"this artifact's backend is {manifest.backend!r}. Load it without cuda_graphs.")
        from toma_export.runtime.cudagraph import graphed_variants

        variants = dict(graphed_variants(variants))
    runner = make_runner(variants, input_spec=extra.input_spec, num_groups=len(extra.groups), shapes=manifest.shapes,
                         input_dtypes=extra.input_dtypes)
    return LoadedArtifact(folder, manifest, runner)
