"""Model adapters: embedded architecture configs, local-folder loading, tiny pipelines."""

from toma_export.models.registry import EMBEDDED_MODELS, load_model
from toma_export.models.spec import ModelSpec, spec_for

__all__ = ["EMBEDDED_MODELS", "ModelSpec", "load_model", "spec_for"]
