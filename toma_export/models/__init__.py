"""Model adapters: embedded architecture configs, local-folder loading, tiny pipelines."""

from toma_export.models.registry import EMBEDDED_MODELS, load_model, model_family

__all__ = ["EMBEDDED_MODELS", "load_model", "model_family"]
