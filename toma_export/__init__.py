"""toma-export: token merge with attention (ToMA) for diffusion transformers, built to survive compilation.

The public names load on first use (PEP 562), so ``import toma_export`` (and the command line,
``toma_export.cli``) does not import torch or diffusers until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "ToMAConfig",
    "ToMAConfigError",
    "ToMAError",
    "UnsupportedModelError",
    "__version__",
    "apply",
    "load_engine",
    "remove",
    "reset",
    "rewrite",
    "state",
]

#: Public name -> module that defines it.
_LAZY: dict[str, str] = {
    "METHODS": "toma_export.vocabulary",
    "ToMAConfig": "toma_export.config",
    "apply": "toma_export.eager",
    "remove": "toma_export.eager",
    "reset": "toma_export.eager",
    "state": "toma_export.eager",
    "ToMAConfigError": "toma_export.errors",
    "ToMAError": "toma_export.errors",
    "UnsupportedModelError": "toma_export.errors",
    "rewrite": "toma_export.graph",
    "load_engine": "toma_export.engines.swap",
}

if TYPE_CHECKING:
    from toma_export.config import ToMAConfig
    from toma_export.eager.api import apply, remove, reset, state
    from toma_export.engines.swap import load_engine
    from toma_export.errors import ToMAConfigError, ToMAError, UnsupportedModelError
    from toma_export.graph import rewrite
    from toma_export.vocabulary import METHODS


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'toma_export' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
