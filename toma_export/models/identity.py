"""Model identity for manifests: what a built artifact was built from, checkable on load."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch


def config_hash(model: torch.nn.Module) -> str:
    cfg = dict(getattr(model, "config", {}) or {})
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_hash(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes), in state-dict order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def model_identity(
    model: torch.nn.Module,
    name: str,
    *,
    revision: str | None = None,
    variant: str | None = None,
    subfolder: str | None = None,
) -> dict[str, Any]:
    """What a manifest records about the model: name, class, hashes, and where it came from (its family
    facts are its :class:`~toma_export.models.spec.ModelSpec`, recorded beside these).

    ``source`` (``embedded``/``local``/``hub``), ``revision``, ``variant``, ``subfolder`` and ``commit``
    (the Hub snapshot) come from the model's :class:`~toma_export.models.registry.ModelSource` when
    :func:`~toma_export.models.registry.load_model` loaded it; keyword arguments given here take
    precedence. ``component`` names the pipeline's denoiser (``unet``/``transformer``) when the model
    came from a pipeline folder or repo, so ``run`` can load that pipeline around the artifact.
    """
    src = getattr(model, "_toma_source", None)
    return {
        "name": name,
        "class": type(model).__name__,
        "config_hash": config_hash(model),
        "weights_hash": weights_hash(model),
        "source": getattr(src, "kind", None),
        "revision": revision if revision is not None else getattr(src, "revision", None),
        "variant": variant if variant is not None else getattr(src, "variant", None),
        "subfolder": subfolder if subfolder is not None else getattr(src, "subfolder", None),
        "component": getattr(src, "component", None),
        "commit": getattr(src, "commit", None),
    }
