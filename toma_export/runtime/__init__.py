"""Runtime: a drop-in denoiser for diffusers pipelines that owns the per-step destination state."""

from toma_export.runtime.wrapper import DestinationSchedule, StepRunner, ToMADenoiser

__all__ = ["DestinationSchedule", "StepRunner", "ToMADenoiser"]
