"""``apply`` / ``remove`` / ``reset``: eager ToMA on diffusers pipelines and models.

``apply`` validates everything before touching the model and rolls back on any failure, so a
model is either fully patched or left as it was. On a pipeline it also resets the destination
state at the start of every ``__call__``, so the step schedule follows the denoising loop.
"""

from __future__ import annotations

from typing import Any

import torch

from toma_export.config import ToMAConfig
from toma_export.eager.flux import FluxPatch
from toma_export.eager.merge_state import ToMAState
from toma_export.eager.unet import UNetPatch
from toma_export.errors import ToMAError, UnsupportedModelError
from toma_export.models.registry import model_family

_PATCH_ATTR = "_toma_patch"


def _denoiser(obj: Any) -> tuple[torch.nn.Module, Any | None]:
    """The model to patch and the pipeline holding it (or None)."""
    for attr in ("unet", "transformer"):
        inner = getattr(obj, attr, None)
        if isinstance(inner, torch.nn.Module) and not isinstance(obj, torch.nn.Module):
            return inner, obj
    if isinstance(obj, torch.nn.Module):
        return obj, None
    raise UnsupportedModelError(
        f"cannot apply ToMA to a {type(obj).__name__}: pass a diffusers pipeline with .unet or .transformer, "
        "or the UNet2DConditionModel / FluxTransformer2DModel itself."
    )


def _reset_on_call(pipe: Any) -> None:
    parent = type(pipe)

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        reset(self)
        return parent.__call__(self, *args, **kwargs)

    pipe.__class__ = type(parent.__name__, (parent,), {"__call__": __call__, "_toma_parent": parent})


def apply(obj: Any, config: ToMAConfig | None = None, **options: Any) -> Any:
    """Patch ``obj`` (pipeline or model) in place with ``config`` (or ``ToMAConfig(**options)``)."""
    if config is None:
        config = ToMAConfig(**options)
    elif options:
        raise TypeError("pass either a ToMAConfig or keyword options, not both")
    model, pipe = _denoiser(obj)
    family = model_family(model)
    remove(obj)
    patch = UNetPatch(model, config) if family == "unet" else FluxPatch(model, config)
    try:
        patch.install()
    except BaseException:
        patch.remove()
        raise
    setattr(model, _PATCH_ATTR, patch)
    if pipe is not None:
        _reset_on_call(pipe)
    return obj


def remove(obj: Any) -> Any:
    """Undo :func:`apply`; a no-op on an unpatched object."""
    model, pipe = _denoiser(obj)
    patch = getattr(model, _PATCH_ATTR, None)
    if patch is not None:
        patch.remove()
        delattr(model, _PATCH_ATTR)
    if pipe is not None and hasattr(type(pipe), "_toma_parent"):
        pipe.__class__ = type(pipe)._toma_parent
    return obj


def state(obj: Any) -> ToMAState:
    """The destination state of a patched pipeline or model."""
    model, _ = _denoiser(obj)
    patch = getattr(model, _PATCH_ATTR, None)
    if patch is None:
        raise ToMAError("this model is not patched: call toma_export.apply(model, config) first.")
    return patch.state


def reset(obj: Any) -> None:
    """Start a new generation: step 0, cached destinations dropped (pipelines do this per call)."""
    state(obj).reset()
