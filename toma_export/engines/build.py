"""Build an artifact folder: capture -> rewrite -> export -> engine files, plus a manifest.

ToMA goes through the graph pass (``toma_export.rewrite``): the artifact holds two variants of
the rewritten model, *select* (selects destinations in-graph and returns them) and *reuse*
(takes them as inputs, runs no selection). Other methods have no per-step state, so the eager
patch is exported as one *single* variant; ToDo on architectures without an eager adapter is the
key/value graph pass's program (``graph.kv_downsample``), also one *single* variant. Methods that
cannot become a static graph are refused with the reason.

Everything is written into a temporary sibling folder and renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, cast

import torch
from tqdm.auto import tqdm

import toma_export
from toma_export.config import ToMAConfig
from toma_export.dtypes import precision_dtype
from toma_export.engines import BACKENDS
from toma_export.engines.artifact import artifact_folder, library_versions, write_manifest
from toma_export.engines.manifest import BuildDetails, Manifest, ModelRecord, Shapes, SiteRecord
from toma_export.engines.signature import dump_spec
from toma_export.errors import ToMAConfigError, ToMAError, ToMATypeError
from toma_export.graph import Captured, capture
from toma_export.input_rules import MAX_BATCH
from toma_export.models.identity import model_identity
from toma_export.models.inputs import example_inputs
from toma_export.methods import get as get_method
from toma_export.methods.route import Route, check_backend, route
from toma_export.models.registry import load_model
from toma_export.models.spec import VAE_FACTOR, ModelSpec, spec_for, spec_for_config
from toma_export.vocabulary import SELECTIONS, Precision, Selection

#: The largest image side ``build`` accepts, in pixels (checked before the model is loaded).
MAX_SIDE = 4096


@dataclasses.dataclass
class BuildRequest:
    """What to build. ``config`` is the full :class:`ToMAConfig`; ``ratio`` / ``method`` /
    ``recompute_every``, when given, override its fields (shorthands for existing callers)."""

    model: str
    method: str | None = None
    ratio: float | None = None
    backend: str = "onnxruntime"
    height: int = 256
    width: int = 256
    frames: int = 1  # pixel frames of the clip (video models; models.architectures.latent_frames); 1 for images
    batch: int = 1
    out: Path = Path("engines/out/model")
    selection: Selection = "unrolled"  # ONNX: "unrolled" standard ops or "plugin" node (TensorRT)
    precision: str = "fp32"  # a vocabulary PRECISIONS name: the model is cast to its dtype before capture
    recompute_every: int | None = None
    force: bool = False
    seed: int = 0
    dynamic_batch: bool = False  # one artifact for any batch at this resolution (built at ``batch`` >= 2)
    config: ToMAConfig | None = None
    revision: str | None = None  # Hub ids: the revision (branch, tag or commit)
    variant: str | None = None  # weights variant, e.g. "fp16"
    subfolder: str | None = None  # the denoiser's folder inside a pipeline repo

    def toma_config(self) -> ToMAConfig:
        """The full config: ``config`` (default ``ToMAConfig()``) with the shorthands applied; validated."""
        base = self.config if self.config is not None else ToMAConfig()
        if not isinstance(base, ToMAConfig):
            raise ToMATypeError(f"BuildRequest.config must be a ToMAConfig, got a {type(base).__name__}"
                                + ("; pass ToMAConfig(**d) for a dict d." if isinstance(base, dict) else "."))
        over = {k: getattr(self, k) for k in ("ratio", "method", "recompute_every") if getattr(self, k) is not None}
        return dataclasses.replace(base, **over) if over else base

    @property
    def dtype(self) -> torch.dtype:
        return precision_dtype(self.precision, ToMAConfigError, "--dtype", "choose one of those")


def _folder_config(model: str | Path) -> dict[str, Any]:
    """The denoiser config of a local folder (a pipeline's transformer/config.json, else config.json) that
    names a class, read without loading weights; {} when there is none or it cannot be read (loading
    the model later names what is wrong)."""
    import json

    path = Path(str(model))
    for cfg in (path / "transformer" / "config.json", path / "config.json"):
        try:
            if cfg.is_file() and cfg.stat().st_size < (1 << 20):
                data = json.loads(cfg.read_text())
                if isinstance(data, dict) and isinstance(data.get("_class_name"), str):
                    return data
        except (OSError, ValueError):
            continue  # an unreadable config: loading the model later names what is wrong
    return {}


def spec_for_name(model: str | Path) -> tuple[ModelSpec, dict[str, Any]] | None:
    """The model's spec and config before loading it: from the embedded table or the folder's config.json;
    None for a Hub id or a folder whose config cannot be read here (loading it then names what is wrong)."""
    from toma_export.models.registry import EMBEDDED_MODELS, embedded_config

    key = str(model)
    cfg = embedded_config(key) if key in EMBEDDED_MODELS else _folder_config(key)
    return (spec_for_config(cfg), cfg) if cfg else None


def pixel_multiple(model: str | Path) -> int:
    """Image sides must be multiples of this many pixels (:attr:`ModelSpec.pixel_multiple`: 8 for UNets, the
    VAE factor; 16 for 2x2-packed latents), read without loading weights; 8 when the config cannot be read
    here (loading the model then names what is wrong)."""
    found = spec_for_name(model)
    return found[0].pixel_multiple if found else VAE_FACTOR


def check_frames(model: str | Path, frames: Any) -> int | None:
    """``--frames`` for ``model`` before loading it: the latent frames it gives, or a ToMAConfigError naming
    the counts that work (the rule: :func:`toma_export.models.architectures.latent_frames`). The spec
    comes from the embedded table or the folder's config.json; for a Hub id (no config here before
    loading) only the count itself is checked here, returning None, and building the example inputs
    checks the rest on the loaded model."""
    from toma_export.models.architectures import latent_frames

    found = spec_for_name(model)
    if found is None and not Path(str(model)).exists():
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            latent_frames(None, frames)  # raises: not a positive count
        return None
    spec, cfg = found if found else (None, {})
    return latent_frames(spec, frames, patch_size=cfg.get("patch_size"), model=str(model))


def check_image_size(model: str | Path, height: Any, width: Any) -> None:
    """Image sides: positive ints, at most MAX_SIDE, multiples of what the model needs (before loading it)."""
    multiple = None
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ToMAConfigError(f"--{name} {v!r} must be a positive number of pixels, e.g. --{name} 1024.")
        if v > MAX_SIDE:
            raise ToMAConfigError(
                f"--{name} {v} is above the {MAX_SIDE} px this tool builds for (engines grow with the square of "
                f"the side); use at most --{name} {MAX_SIDE}."
            )
        multiple = multiple or pixel_multiple(model)
        if v % multiple:
            lo = max(multiple, v // multiple * multiple)
            raise ToMAConfigError(
                f"--{name} {v} is not a multiple of {multiple} px, which {model} needs; use e.g. --{name} {lo} "
                f"or {lo + multiple}."
            )


def _check_out(out: Path) -> None:
    """The nearest existing folder above ``out`` must be writable (checked before the model loads)."""
    import os

    probe = Path(os.path.abspath(out)).parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ToMAError(f"--out {out}: {probe} is not a folder you can write to; choose an --out in a writable folder.")


def check_tile_fits(model: str | Path, height: int, width: int, config: ToMAConfig) -> None:
    """Refuse, before loading, a tile larger than every grid the model can have at this image size.

    No merged grid has more tokens per side than one per :func:`pixel_multiple` pixels (the latent of a
    UNet, the packed tokens of Flux), so a tile wider or taller than that grid merges nothing anywhere.
    Tighter cases (a tile that fits the latent but not the attention levels) are refused after the
    rewrite, where the grids are known (:func:`_variants`)."""
    if not (config.active and get_method(config.method).graph_pass):
        return
    multiple = pixel_multiple(model)
    rows, cols = height // multiple, width // multiple
    th, tw = config.tile
    if th > rows or tw > cols:
        need_h, need_w = max(height, th * multiple * 2), max(width, tw * multiple * 2)
        smaller = (f" or a smaller --tile (at most {rows}x{cols})" if rows * cols >= 2 else "")
        raise ToMAConfigError(
            f"--tile {th}x{tw} is larger than every token grid of {model} at --height {height} --width {width} "
            f"(at most {rows}x{cols} tokens: one per {multiple} px), so nothing would merge. Use a larger image "
            f"(e.g. --height {need_h} --width {need_w}){smaller}."
        )


def _check_request_types(req: BuildRequest) -> None:
    """Python callers: each BuildRequest field of the type it must have (a ToMATypeError naming it)."""
    for name in ("height", "width", "frames", "batch", "seed"):
        v = getattr(req, name)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ToMATypeError(f"BuildRequest.{name}={v!r} is a {type(v).__name__}, not an int.")
    for name in ("backend", "selection", "precision"):
        v = getattr(req, name)
        if not isinstance(v, str):
            raise ToMATypeError(f"BuildRequest.{name}={v!r} is a {type(v).__name__}, not a string.")
    if not isinstance(req.model, (str, Path)) or not str(req.model).strip():
        raise ToMAConfigError(f"the model {req.model!r} is empty or not a name/path; give e.g. sdxl-tiny.")
    if not isinstance(req.out, (str, Path)) or not str(req.out).strip():
        raise ToMAConfigError(f"--out {str(req.out)!r} is empty; name the artifact folder, e.g. --out engines/out/sdxl.")


def _validate(req: BuildRequest) -> ToMAConfig:
    _check_request_types(req)
    config = req.toma_config()  # raises on a bad field
    req.dtype  # noqa: B018  (an unknown --dtype raises, naming the precisions)
    check_image_size(req.model, req.height, req.width)
    check_frames(req.model, req.frames)
    if req.backend not in BACKENDS:
        raise ToMAConfigError(f"--backend {req.backend!r} is unknown; choose one of {', '.join(BACKENDS)}.")
    check_backend(config, req.backend)
    if config.active and not config.sublayers:
        raise ToMAConfigError(
            "the configuration merges no sub-layer (merge_attn, merge_cross and merge_mlp are all off), so the "
            "artifact would merge nothing; turn one on (e.g. --merge attn,mlp), or build unmerged with --ratio 0."
        )
    check_tile_fits(req.model, req.height, req.width, config)
    if req.selection not in SELECTIONS:
        raise ToMAConfigError(f"--selection {req.selection!r} is unknown; choose one of {', '.join(SELECTIONS)}.")
    if req.selection == "plugin" and req.backend == "onnxruntime":
        raise ToMAConfigError(
            "--selection plugin writes a `toma` plugin node that only TensorRT runs; ONNX Runtime cannot load it. "
            "Use --selection unrolled (the default) with --backend onnxruntime, or --backend tensorrt."
        )
    if not 1 <= req.batch <= MAX_BATCH:
        raise ToMAConfigError(
            f"--batch {req.batch} is outside 1..{MAX_BATCH} (the denoiser batch; SDXL with guidance runs 2 per "
            f"image); use e.g. --batch 2, or --dynamic-batch for one artifact that runs any batch."
        )
    if req.dynamic_batch and req.batch < 2:
        raise ToMAConfigError(
            f"--dynamic-batch needs --batch >= 2 (got {req.batch}): torch.export fixes a batch of 1 as a "
            "constant. Build with --batch 2 --dynamic-batch; the artifact then runs any batch."
        )
    if req.dynamic_batch and req.backend in ("tensorrt", "torch-tensorrt"):
        raise ToMAConfigError(
            f"--dynamic-batch is not supported with --backend {req.backend} (its engines need an optimisation "
            "profile per batch range); build a fixed --batch for it."
        )
    _check_out(Path(req.out))
    from toma_export.models.registry import EMBEDDED_MODELS, model_shell

    if str(req.model) not in EMBEDDED_MODELS:  # a folder's or Hub id's config, on the meta device: refused here
        model_shell(req.model, revision=req.revision, variant=req.variant, subfolder=req.subfolder)
    if req.backend in ("tensorrt", "torch-tensorrt"):
        from toma_export.engines.trt_engine import require_cuda, require_tensorrt

        require_tensorrt()
        require_cuda()
    return config


def _variants(
    model: torch.nn.Module, kwargs: dict[str, Any], config: ToMAConfig, dynamic_batch: bool = False, *,
    backend: str = "onnxruntime", spec: ModelSpec | None = None,
) -> tuple[dict[str, Any], int, Any]:
    """Exported programs by variant name, the number of destination groups, and the program, on the
    route (:func:`toma_export.methods.route`) ``config`` takes on ``model`` for ``backend``.

    ``dynamic_batch``: every variant takes a symbolic batch (shared by all batch-leading inputs
    and the destinations), so one artifact serves any batch at the built resolution.
    """
    # ToMA's graph pass; ToDo's key/value pass where eager apply runs it (one stateless variant, no groups)
    if route(spec or spec_for(model), config, backend, name=type(model).__name__) in (Route.GRAPH_PASS, Route.KV_PASS):
        program = toma_export.rewrite(model, kwargs, config, dynamic_batch=dynamic_batch)  # refuses 0 merged sites
        _require_one_output(model, program.captured.ep)
        if program.groups:
            return {"select": program.select_exported_program, "reuse": program.exported_program}, len(program.groups), program
        return {"single": program.exported_program}, 0, program
    if config.active:
        toma_export.apply(model, config)
    try:
        with torch.no_grad():
            ep = capture(model, kwargs, dynamic_batch=dynamic_batch).ep  # torch.export, non-strict
    finally:
        toma_export.remove(model)
    _require_one_output(model, ep)
    return {"single": ep}, 0, None


def _require_one_output(model: torch.nn.Module, ep: Any) -> None:
    """Artifacts carry one output tensor (the denoiser's prediction); a model returning several (Z-Image's
    per-sample list at batch > 1) is refused before anything is written, not cut to its first."""
    n = ep.call_spec.out_spec.num_leaves if ep.call_spec.out_spec is not None else 1
    if n > 1:
        raise ToMAError(
            f"{type(model).__name__} returns {n} output tensors at these inputs (a per-sample list, or extra outputs); "
            "an artifact carries one. Build with --batch 1 (one artifact call per sample)."
        )


def _write_engine(req: BuildRequest, name: str, ep: Any, folder: Path, phase: Callable[[str], None]) -> str:
    """Write one variant's engine file(s) into ``folder``; returns its main file name. ``phase`` is told
    each phase as it starts (for the progress bar)."""
    if req.backend == "onnxruntime":
        from toma_export.engines.onnx_export import export_onnx
        from toma_export.engines.onnxruntime import OrtEngine

        phase("ONNX export")
        path = export_onnx(ep, folder / f"{name}.onnx", selection=req.selection)
        phase("ORT session")
        OrtEngine(path)  # the engine must load here (kernels for its dtype), not first at run time
        return path.name
    if req.backend == "inductor":
        from torch._inductor import aoti_compile_and_package

        phase("AOTInductor compile")
        path = folder / f"{name}.pt2"
        aoti_compile_and_package(ep, package_path=str(path))
        return path.name
    if req.backend == "tensorrt":
        from toma_export.engines.onnx_export import export_onnx
        from toma_export.engines.trt_engine import BuildOptions, build_engine

        phase("ONNX export")
        onnx_dir = folder / "onnx"
        onnx_path = export_onnx(ep, onnx_dir / f"{name}.onnx", selection="plugin")
        phase("TensorRT engine")
        build_engine(onnx_path, folder / f"{name}.plan", BuildOptions(precision=req.precision))
        return f"{name}.plan"
    raise ToMAConfigError(
        "--backend torch-tensorrt compiles in process and has no artifact format here; "
        "use toma_export.engines.torch_tensorrt.compile_program on a GPU."
    )


#: Phases of one variant's engine, per backend (the progress bar's steps).
_ENGINE_PHASES = {"onnxruntime": 2, "inductor": 1, "tensorrt": 2}


def cast_model(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``model`` with floating weights and buffers in ``dtype`` (in place). Uses ``nn.Module.to``:
    diffusers' override only adds a warning about modules kept in fp32, which these models lack."""
    if dtype != torch.float32:
        torch.nn.Module.to(model, dtype)
    return model


def build_artifact(req: BuildRequest, *, progress: bool = True) -> Path:
    """Build ``req`` into ``req.out``; returns the folder. Nothing is left under that name on failure.

    ``progress``: a tqdm bar on stderr over the stages and, inside the export stage, each variant's
    phases (ONNX export, ORT session ...); tqdm shows elapsed time and an estimate from the phases
    done so far. Off when stderr is not a terminal."""
    config = _validate(req)
    bar = tqdm(total=3, desc="build", disable=None if progress else True, unit="step", leave=False)
    timings: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        result = fn()
        timings[name] = round(time.perf_counter() - start, 2)
        bar.update(1)
        return result

    def export_all(variants: dict[str, Any], tmp: Path) -> dict[str, str]:
        files = {}
        for n, ep in variants.items():
            last: list[str] = []

            def phase(what: str, n: str = n, last: list[str] = last) -> None:
                if last:
                    bar.update(1)
                last[:] = [what]
                bar.set_postfix_str(f"{n}: {what}")

            files[n] = _write_engine(req, n, ep, tmp, phase)
            bar.update(1 if last else 0)
        return files

    with contextlib.ExitStack() as stack:
        try:
            tmp = stack.enter_context(artifact_folder(Path(req.out), overwrite=req.force))
        except OSError as err:
            raise ToMAError(
                f"cannot create the artifact at {req.out} ({err.strerror or err}); choose an --out in a folder you "
                "can write to."
            ) from None
        model = stage("load model", lambda: cast_model(load_model(req.model, revision=req.revision, variant=req.variant,
                                                           subfolder=req.subfolder, seed=req.seed), req.dtype))
        try:
            kwargs = example_inputs(model, batch=req.batch, height=req.height, width=req.width, frames=req.frames,
                                    dtype=req.dtype)
        except ToMAConfigError:
            raise  # names its own fix (e.g. --frames)
        except ValueError as err:
            raise ToMAConfigError(f"{err}; pick --height/--width the model accepts.") from None
        spec = spec_for(model)  # resolved once: the route, and the manifest's model record
        variants, n_groups, program = stage(
            "capture + rewrite (torch.export)",
            lambda: _variants(model, kwargs, config, dynamic_batch=req.dynamic_batch, backend=req.backend, spec=spec),
        )
        bar.total = 3 + len(variants) * _ENGINE_PHASES.get(req.backend, 1)
        bar.refresh()
        first = next(iter(variants.values()))
        batch_dims, batch_range = _batch_dims(first), Captured(first, kwargs).batch_range
        if req.dynamic_batch and not any(d is not None for d in batch_dims):
            raise ToMAError("--dynamic-batch: the exported program kept a fixed batch; build without --dynamic-batch.")
        start = time.perf_counter()
        files = export_all(variants, tmp)
        timings["export engines"] = round(time.perf_counter() - start, 2)
        leaves = [t for t in torch.utils._pytree.tree_leaves(kwargs) if isinstance(t, torch.Tensor)]
        manifest = Manifest(
            model=ModelRecord.from_identity(model_identity(model, str(req.model)), spec),
            config=config,
            backend=req.backend,
            shapes=_shapes(req, [list(t.shape) for t in leaves], batch_dims, batch_range),
            versions=library_versions(),
            extra=BuildDetails(
                variants=files,
                groups=[(g.layout.num_tiles, g.k) for g in program.groups] if program is not None else [],
                input_spec=dump_spec(kwargs),
                selection=req.selection if req.backend == "onnxruntime" else "plugin",
                precision=cast(Precision, req.precision),  # a PRECISIONS name (checked by _validate)
                input_dtypes=[str(t.dtype).removeprefix("torch.") for t in leaves],
                sites=[SiteRecord.of(s) for s in program.sites] if program is not None else [],
                build_seconds=timings,
                seed=req.seed,
            ),
        )
        stage("manifest", lambda: write_manifest(tmp, manifest))
    bar.close()
    return Path(req.out)


def _batch_dims(ep: Any) -> list[int | None]:
    """Per tensor user input of an exported program: 0 where its dim 0 is symbolic (the batch)."""
    user = set(ep.graph_signature.user_inputs)
    out: list[int | None] = []
    for n in ep.graph.nodes:
        v = n.meta.get("val")
        if n.op == "placeholder" and n.name in user and isinstance(v, torch.Tensor):
            out.append(0 if v.ndim and isinstance(v.shape[0], torch.SymInt) else None)
    return out


def _shapes(
    req: BuildRequest, flat_shapes: list[list[int]], batch_dims: list[int | None], batch_range: tuple[int, int | None] | None
) -> Shapes:
    """Manifest shapes: the example batch, resolution and pixel frames, per-input shapes; with a dynamic
    batch also which dim of each input is the batch and the largest batch the exported program is valid
    for (``batch_max``, None: unbounded; e.g. 63 for UNets, whose upsampler branches at 64)."""
    if not req.dynamic_batch:
        return Shapes(req.batch, req.height, req.width, flat_shapes, req.frames)
    return Shapes(req.batch, req.height, req.width, flat_shapes, req.frames, dynamic_batch=True,
                  batch_dims=batch_dims[: len(flat_shapes)], batch_max=batch_range[1] if batch_range else None)


def require_same_model(manifest: Manifest, model: torch.nn.Module) -> None:
    """Refuse to pair an artifact with a model other than the one it was built from."""
    got = ModelRecord.from_identity(model_identity(model, manifest.model.name), manifest.model.spec)
    for key in ("class_name", "config_hash", "weights_hash"):
        want, have = getattr(manifest.model, key), getattr(got, key)
        if have != want:
            name = "class" if key == "class_name" else key
            raise ToMAError(f"the artifact was built from another model ({name} {want} != {have}); rebuild it for this model.")
