"""Model identity for manifests: what a built artifact was built from, checkable on load."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from toma_export.models.registry import model_family


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


def model_identity(model: torch.nn.Module, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "family": model_family(model),
        "class": type(model).__name__,
        "config_hash": config_hash(model),
        "weights_hash": weights_hash(model),
    }
