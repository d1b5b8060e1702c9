"""Runtime: a drop-in denoiser for diffusers pipelines that owns the per-step destination state."""

from toma_export.runtime.wrapper import StepRunner, ToMADenoiser
from toma_export.schedule import StepSchedule

__all__ = ["StepRunner", "StepSchedule", "ToMADenoiser"]
