"""``ToMADenoiser``: stands in for ``pipe.unet`` / ``pipe.transformer`` and runs an engine per step.

The pipeline calls it exactly as it calls the diffusers model (same signature, same outputs).
It owns the destination state: on scheduled steps the engine selects destinations in-graph and
returns them; on the others the wrapper feeds the previous ones back, so selection does not run.
A new generation is detected by the pipeline's timestep schedule restarting (the timestep rises
again), which needs no change to the pipeline; ``reset()`` forces it.

Attributes the pipeline reads from the model (``config``, ``add_embedding``, ``cache_context``,
...) come from a weightless meta-device copy of the original, so no second set of weights is held.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Protocol

import torch

from toma_export.schedule import StepSchedule


class StepRunner(Protocol):
    """One denoiser step on an engine.

    ``inputs``: the model's keyword arguments as the pipeline passed them (``None`` ones dropped).
    ``schedule``: the generation's step state; the runner reads the recompute decision from it and
    stores fresh destinations in it (:class:`toma_export.engines.load.ProgramRunner`). Returns the
    model output.
    """

    def __call__(self, inputs: dict[str, Any], schedule: StepSchedule) -> torch.Tensor: ...


def _meta_shell(model: torch.nn.Module) -> torch.nn.Module:
    """The model's class rebuilt from its config on the meta device: attributes without weights."""
    with torch.device("meta"):
        return type(model).from_config(model.config)  # type: ignore[attr-defined]


class ToMADenoiser(torch.nn.Module):
    """Drop-in replacement for a diffusers UNet/transformer that runs a :class:`StepRunner`."""

    def __init__(
        self,
        runner: StepRunner,
        model: torch.nn.Module,
        *,
        recompute_every: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        output_class: Callable[..., Any] | None = None,
    ):
        super().__init__()
        self.runner = runner
        self.schedule = StepSchedule(recompute_every)
        object.__setattr__(self, "_shell", model if model.device.type == "meta" else _meta_shell(model))
        self._signature = inspect.signature(type(self._shell).forward)
        self._dtype = dtype
        self._device = torch.device(device)
        self._output_class = output_class

    # What pipelines read off the model ------------------------------------------------------
    @property
    def config(self) -> Any:
        return self._shell.config  # type: ignore[attr-defined]

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_shell"), name)

    def reset(self) -> None:
        """Start a new generation (also detected automatically from the timestep schedule)."""
        self.schedule.reset()

    def _reset_stateful_cache(self, recurse: bool = True) -> None:
        """Diffusers pipelines call this on their components after every call: a new generation."""
        self.schedule.reset()

    # The step -------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        bound = self._signature.bind(self._shell, *args, **kwargs)
        return_dict = bound.arguments.pop("return_dict", True)
        # Absent, None and empty-container arguments (e.g. joint_attention_kwargs={}) carry nothing.
        inputs = {
            k: v
            for k, v in list(bound.arguments.items())[1:]
            if v is not None and not (isinstance(v, (dict, list, tuple)) and not v)
        }
        t = inputs.get("timestep")
        on_cpu = isinstance(t, torch.Tensor) and t.device.type == "cpu"
        self.schedule.observe_timestep(float(t.flatten()[0]) if on_cpu else None)  # type: ignore[union-attr]
        out = self.runner(inputs, self.schedule)
        self.schedule.advance()
        if not return_dict:
            return (out,)
        if self._output_class is None:
            from diffusers.models.modeling_outputs import Transformer2DModelOutput
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            cls = UNet2DConditionOutput if hasattr(self.config, "down_block_types") else Transformer2DModelOutput
            return cls(sample=out)
        return self._output_class(sample=out)
