"""Build an artifact folder: capture -> rewrite -> export -> engine files, plus a manifest.

ToMA goes through the graph pass (``toma_export.rewrite``): the artifact holds two variants of
the rewritten model, *select* (selects destinations in-graph and returns them) and *reuse*
(takes them as inputs, runs no selection). Other methods have no per-step state, so the eager
patch is exported as one *single* variant; methods that cannot become a static graph are refused
with the reason.

Everything is written into a temporary sibling folder and renamed into place at the end.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

import toma_export
from toma_export import methods
from toma_export.config import ToMAConfig
from toma_export.engines import BACKENDS
from toma_export.engines.artifact import Manifest, atomic_folder, library_versions, write_manifest
from toma_export.engines.signature import dump_spec
from toma_export.errors import ToMAConfigError, ToMAError
from toma_export.graph import Captured, capture
from toma_export.models.identity import model_identity
from toma_export.models.inputs import example_inputs
from toma_export.models.registry import load_model

@dataclasses.dataclass
class BuildRequest:
    model: str
    method: str = "toma"
    ratio: float = 0.5
    backend: str = "onnxruntime"
    height: int = 256
    width: int = 256
    batch: int = 1
    out: Path = Path("engines/out/model")
    selection: str = "unrolled"  # ONNX: "unrolled" standard ops or "plugin" node (TensorRT)
    precision: str = "fp32"
    recompute_every: int = 5
    force: bool = False
    seed: int = 0
    dynamic_batch: bool = False  # one artifact for any batch at this resolution (built at ``batch`` >= 2)

    def config(self) -> ToMAConfig:
        return ToMAConfig(ratio=self.ratio, method=self.method, recompute_every=self.recompute_every)  # type: ignore[arg-type]


def _validate(req: BuildRequest) -> ToMAConfig:
    config = req.config()  # raises on a bad ratio/method
    if req.backend not in BACKENDS:
        raise ToMAConfigError(f"--backend {req.backend!r} is unknown; choose one of {', '.join(BACKENDS)}.")
    refusal = methods.get(config.method).refusal(req.backend) if config.active else None
    if refusal:
        raise ToMAConfigError(f"--method {config.method} with --backend {req.backend} cannot be built: {refusal}.")
    if req.batch < 1:
        raise ToMAConfigError(f"--batch {req.batch} must be >= 1.")
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
    if req.backend in ("tensorrt", "torch-tensorrt"):
        from toma_export.engines.trt_engine import require_cuda, require_tensorrt

        require_tensorrt()
        require_cuda()
    return config


def _variants(
    model: torch.nn.Module, kwargs: dict[str, Any], config: ToMAConfig, dynamic_batch: bool = False
) -> tuple[dict[str, Any], int, Any]:
    """Exported programs by variant name, the number of destination groups, and the program.

    ``dynamic_batch``: every variant takes a symbolic batch (shared by all batch-leading inputs
    and the destinations), so one artifact serves any batch at the built resolution.
    """
    if config.active and methods.get(config.method).graph_pass:
        program = toma_export.rewrite(model, kwargs, config, dynamic_batch=dynamic_batch)
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
    return {"single": ep}, 0, None


def _write_engine(req: BuildRequest, name: str, ep: Any, folder: Path) -> str:
    """Write one variant's engine file(s) into ``folder``; returns its main file name."""
    if req.backend == "onnxruntime":
        from toma_export.engines.onnx_export import export_onnx

        export_onnx(ep, folder / f"{name}.onnx", selection=req.selection)  # type: ignore[arg-type]
        return f"{name}.onnx"
    if req.backend == "inductor":
        from torch._inductor import aoti_compile_and_package

        path = folder / f"{name}.pt2"
        aoti_compile_and_package(ep, package_path=str(path))
        return path.name
    if req.backend == "tensorrt":
        from toma_export.engines.onnx_export import export_onnx
        from toma_export.engines.trt_engine import BuildOptions, build_engine

        onnx_dir = folder / "onnx"
        onnx_path = export_onnx(ep, onnx_dir / f"{name}.onnx", selection="plugin")
        build_engine(onnx_path, folder / f"{name}.plan", BuildOptions(precision=req.precision))
        return f"{name}.plan"
    raise ToMAConfigError(
        "--backend torch-tensorrt compiles in process and has no artifact format here; "
        "use toma_export.engines.torch_tensorrt.compile_program on a GPU."
    )


def build_artifact(req: BuildRequest, *, progress: bool = True) -> Path:
    """Build ``req`` into ``req.out``; returns the folder. Nothing is left under that name on failure."""
    config = _validate(req)
    stages = ["load model", "capture + rewrite", "export engines", "manifest"]
    bar = tqdm(total=len(stages), desc="build", disable=not progress, unit="stage")
    timings: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        result = fn()
        timings[name] = round(time.perf_counter() - start, 2)
        bar.update(1)
        return result

    with atomic_folder(Path(req.out), overwrite=req.force) as tmp:
        model = stage("load model", lambda: load_model(req.model, seed=req.seed))
        kwargs = example_inputs(model, batch=req.batch, height=req.height, width=req.width)
        variants, n_groups, program = stage(
            "capture + rewrite", lambda: _variants(model, kwargs, config, dynamic_batch=req.dynamic_batch)
        )
        first = next(iter(variants.values()))
        batch_dims, batch_range = _batch_dims(first), Captured(first, kwargs).batch_range
        if req.dynamic_batch and not any(d is not None for d in batch_dims):
            raise ToMAError("--dynamic-batch: the exported program kept a fixed batch; build without --dynamic-batch.")
        files = stage("export engines", lambda: {n: _write_engine(req, n, ep, tmp) for n, ep in variants.items()})
        flat_shapes = [list(t.shape) for t in torch.utils._pytree.tree_leaves(kwargs) if isinstance(t, torch.Tensor)]
        groups = [[g.layout.num_tiles, g.k] for g in program.groups] if program is not None else []
        manifest = Manifest(
            model=model_identity(model, str(req.model)),
            config=config.to_dict(),
            backend=req.backend,
            shapes=_shapes(req, flat_shapes, batch_dims, batch_range),
            versions=library_versions(),
            extra={
                "variants": files,
                "groups": groups,
                "input_spec": dump_spec(kwargs),
                "selection": req.selection if req.backend == "onnxruntime" else "plugin",
                "precision": req.precision,
                "sites": [dataclasses.asdict(s) for s in program.sites] if program is not None else [],
                "build_seconds": timings,
                "seed": req.seed,
            },
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
) -> dict[str, Any]:
    """Manifest shapes: the example batch and resolution, per-input shapes; with a dynamic batch also
    ``dynamic_batch``, which dim of each input is the batch and the largest batch the exported program
    is valid for (``batch_max``, None: unbounded; e.g. 63 for UNets, whose upsampler branches at 64)."""
    shapes: dict[str, Any] = {"batch": req.batch, "height": req.height, "width": req.width, "inputs": flat_shapes}
    if req.dynamic_batch:
        shapes.update(dynamic_batch=True, batch_dims=batch_dims[: len(flat_shapes)],
                      batch_max=batch_range[1] if batch_range else None)
    return shapes


def require_same_model(manifest: Manifest, model: torch.nn.Module) -> None:
    """Refuse to pair an artifact with a model other than the one it was built from."""
    ident = model_identity(model, manifest.model["name"])
    for key in ("class", "config_hash", "weights_hash"):
        if ident[key] != manifest.model.get(key):
            raise ToMAError(
                f"the artifact was built from another model ({key} {manifest.model.get(key)} != {ident[key]}); "
                "rebuild it for this model."
            )
