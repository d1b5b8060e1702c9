"""``load_engine(pipe, folder)``: put an artifact into a user's diffusers pipeline as its denoiser.

The artifact replaces ``pipe.unet`` / ``pipe.transformer`` with a
:class:`~toma_export.runtime.ToMADenoiser` that runs the engine; everything else in the pipeline
(scheduler, VAE, text encoders, tokenizers, callbacks) stays the user's. The pipeline's denoiser
must be the model the artifact was built from (same class and config); the engine carries its own
weights, so the pipeline's denoiser weights are not used (``check_weights=True`` compares them).

Dtype and device: the wrapper reports and returns the pipeline's dtype and device (taken from the
denoiser it replaces, and moved by later ``pipe.to(...)`` calls) and feeds the engine in the
artifact's precision (``extra.precision``: fp32, fp16 or bf16), converting at its boundary, so
a bf16 or fp16 pipeline works with an fp32 engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from toma_export.engines.load import LoadedArtifact, load_artifact, precision_dtype
from toma_export.errors import ToMAError
from toma_export.models.spec import denoiser_of, spec_for

__all__ = ["denoiser_attribute", "load_engine", "swap_denoiser"]

def denoiser_attribute(pipe: Any) -> str:
    """``"unet"`` or ``"transformer"``: where ``pipe`` holds its denoiser (its spec's ``denoiser_attribute``)."""
    if denoiser_of(pipe) is not pipe:
        return spec_for(pipe).denoiser_attribute
    raise ToMAError(
        f"{type(pipe).__name__} has no unet or transformer to replace: load_engine takes a diffusers pipeline "
        "(StableDiffusionXLPipeline, FluxPipeline, ...) whose denoiser the artifact was built from."
    )


def _check_model(model: torch.nn.Module, loaded: LoadedArtifact, attr: str, check_weights: bool) -> None:
    from toma_export.models.identity import config_hash, weights_hash

    want = loaded.manifest.model
    where = f"the artifact at {loaded.folder} was built from {want.name!r}"
    got_class = type(model).__name__
    if got_class != want.class_name:
        raise ToMAError(
            f"pipe.{attr} is a {got_class}, but {where}, a {want.class_name}. Use a pipeline of that model, "
            "or build an artifact for this one (toma-export build)."
        )
    got_config = config_hash(model)
    if got_config != want.config_hash:
        raise ToMAError(
            f"pipe.{attr} is a {got_class} with another config (config hash {got_config}, the artifact's "
            f"{want.config_hash}): {where}. Use the pipeline of that model, or build an artifact for "
            "this one (toma-export build)."
        )
    if check_weights:
        if model.device.type == "meta":
            raise ToMAError(f"pipe.{attr} has no weights (meta device) to compare; pass check_weights=False.")
        got_weights = weights_hash(model)
        if got_weights != want.weights_hash:
            raise ToMAError(
                f"pipe.{attr} has other weights (hash {got_weights}, the artifact's {want.weights_hash}; "
                f"hashes are over the weights in the dtype they were built in): {where}. Build an artifact "
                "from these weights, or pass check_weights=False to run the artifact's own weights."
            )


def swap_denoiser(pipe: Any, loaded: LoadedArtifact, *, check: bool = True, check_weights: bool = False) -> Any:
    """Replace ``pipe``'s denoiser with a :class:`ToMADenoiser` running ``loaded``; returns ``pipe``.

    ``check``: refuse a denoiser of another class or config than the artifact's model.
    """
    from toma_export.runtime.wrapper import ToMADenoiser

    attr = denoiser_attribute(pipe)
    current = getattr(pipe, attr)
    if isinstance(current, ToMADenoiser):  # a second load_engine: compare with the model it stands for
        model, dtype, device = current._shell, current.dtype, current.device
        check_weights = False
    else:
        model = current
        dtype = getattr(current, "dtype", torch.float32)
        device = getattr(current, "device", torch.device("cpu"))
    if device.type == "meta":
        device = torch.device("cpu")
    if not dtype.is_floating_point:
        dtype = torch.float32
    if check:
        _check_model(model, loaded, attr, check_weights)
    denoiser = ToMADenoiser(
        loaded.runner,
        model,
        recompute_every=loaded.manifest.config.recompute_every,
        dtype=dtype,
        device=device,
        engine_dtype=precision_dtype(loaded.manifest),
        spec=loaded.manifest.model.spec,
    )
    # Assigning a registered component re-registers it in the pipeline's config, as diffusers does.
    setattr(pipe, attr, denoiser)
    return pipe


def load_engine(pipe: Any, folder: str | Path, *, check_weights: bool = False, cuda_graphs: bool = False) -> Any:
    """Load the artifact at ``folder`` and make it ``pipe``'s denoiser; returns ``pipe``.

    The artifact is checked first (manifest, version, every file's hash:
    :func:`~toma_export.engines.load.load_artifact`); the pipeline's ``unet``/``transformer`` must be
    the artifact's model (same class and config, else :class:`~toma_export.errors.ToMAError`; with
    ``check_weights`` also the same weights). The pipeline keeps its dtype and device: a bf16 or fp16
    pipeline runs an fp32 engine, the wrapper converting inputs and outputs at its boundary. Call
    ``pipe(...)`` as usual; each call is a new generation for the destination schedule.
    ``cuda_graphs``: an AOTInductor artifact's variants run as CUDA graphs captured once per shape.
    """
    return swap_denoiser(pipe, load_artifact(folder, cuda_graphs=cuda_graphs), check=True, check_weights=check_weights)
