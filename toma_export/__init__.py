"""toma-export: token merge with attention (ToMA) for diffusion transformers, built to survive compilation."""

from toma_export.config import METHODS, ToMAConfig
from toma_export.eager import apply, remove, reset, state
from toma_export.errors import ToMAConfigError, ToMAError, UnsupportedModelError
from toma_export.graph import rewrite

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "ToMAConfig",
    "ToMAConfigError",
    "ToMAError",
    "UnsupportedModelError",
    "__version__",
    "apply",
    "remove",
    "reset",
    "rewrite",
    "state",
]
