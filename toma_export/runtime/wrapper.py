"""``ToMADenoiser``: stands in for ``pipe.unet`` / ``pipe.transformer`` and runs an engine per step.

The pipeline calls it exactly as it calls the diffusers model (same signature, same outputs).
It owns the destination state: on scheduled steps the engine selects destinations in-graph and
returns them; on the others the wrapper feeds the previous ones back, so selection does not run.
A new generation is detected by the pipeline's timestep schedule restarting (the timestep rises
again), which needs no change to the pipeline; ``reset()`` forces it.

Attributes the pipeline reads from the model (``config``, ``add_embedding``, ``cache_context``,
...) come from a weightless meta-device copy of the original, so no second set of weights is held.

Dtype and device boundary: the pipeline sees the wrapper in the pipeline's dtype and device
(``dtype``/``device``, moved by ``pipe.to(...)`` like any component); the engine sees its own dtype
(``engine_dtype``, the artifact's precision). Floating inputs are cast to the engine's dtype on the
way in — except the inputs the artifact takes in float32 whatever its precision
(:attr:`ModelSpec.float32_inputs <toma_export.models.spec.ModelSpec.float32_inputs>`) — and the
output is cast back to the pipeline's dtype and device on the way out, so a bf16 or fp16 pipeline
runs an fp32 engine (and an fp32 pipeline a half-precision one).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Protocol

import torch

from toma_export.models.spec import ModelSpec, spec_for
from toma_export.schedule import StepSchedule


class StepRunner(Protocol):
    """One denoiser step on an engine.

    ``inputs``: the model's keyword arguments as the pipeline passed them (``None`` ones dropped).
    ``schedule``: the generation's step state; the runner reads the recompute decision from it and
    stores fresh destinations in it (:class:`toma_export.engines.load.ProgramRunner`). Returns the
    model output.
    """

    def __call__(self, inputs: dict[str, Any], schedule: StepSchedule) -> torch.Tensor: ...


def _cast(value: Any, dtype: torch.dtype, keep: frozenset[str], name: str = "") -> Any:
    """``value`` with every floating tensor in ``dtype`` (those named in ``keep``: float32), recursively."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            return value
        return value.to(torch.float32 if name in keep else dtype)
    if isinstance(value, dict):
        return {k: _cast(v, dtype, keep, f"{name}.{k}" if name else k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype, keep, name) for v in value)
    return value


def _meta_shell(model: torch.nn.Module) -> torch.nn.Module:
    """The model's class rebuilt from its config on the meta device: attributes without weights."""
    with torch.device("meta"):
        cls: Any = type(model)  # a diffusers ModelMixin (untyped for mypy)
        return cls.from_config(model.config)


class ToMADenoiser(torch.nn.Module):
    """Drop-in replacement for a diffusers UNet/transformer that runs a :class:`StepRunner`."""

    #: The weightless meta-device copy of the model it stands in for (a diffusers model: untyped for mypy).
    _shell: Any

    def __init__(
        self,
        runner: StepRunner,
        model: torch.nn.Module,
        *,
        recompute_every: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        output_class: Callable[..., Any] | None = None,
        engine_dtype: torch.dtype = torch.float32,
        spec: ModelSpec | None = None,
    ):
        """``dtype``/``device``: the pipeline's (what the pipeline reads and gets back); ``engine_dtype``:
        the artifact's precision (what the engine is fed); ``spec``: the model's family facts as the
        artifact's manifest records them (default: resolved from ``model``)."""
        super().__init__()
        self.runner = runner
        self.schedule = StepSchedule(recompute_every)
        object.__setattr__(self, "_shell", model if model.device.type == "meta" else _meta_shell(model))
        self._signature = inspect.signature(type(self._shell).forward)
        self._dtype = dtype
        self._device = torch.device(device)
        self._output_class = output_class
        self.engine_dtype = engine_dtype
        self.spec = spec if spec is not None else spec_for(self._shell)
        self._float32_inputs = self.spec.float32_inputs

    # What pipelines read off the model ------------------------------------------------------
    @property
    def config(self) -> Any:
        return self._shell.config

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

    def to(self, *args: Any, **kwargs: Any) -> "ToMADenoiser":  # type: ignore[override]
        """Move the pipeline-facing side (what the wrapper returns and reports): ``pipe.to(...)`` calls this.

        The engine keeps its own dtype and device; the wrapper converts at its boundary."""
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None:
            if not dtype.is_floating_point:
                raise TypeError(f"ToMADenoiser.to: {dtype} is not a floating dtype.")
            self._dtype = dtype
        if device is not None:
            self._device = torch.device(device)
        return self

    def half(self) -> "ToMADenoiser":  # type: ignore[override]
        return self.to(torch.float16)

    def bfloat16(self) -> "ToMADenoiser":  # type: ignore[override]
        return self.to(torch.bfloat16)

    def float(self) -> "ToMADenoiser":  # type: ignore[override]
        return self.to(torch.float32)

    def cpu(self) -> "ToMADenoiser":  # type: ignore[override]
        return self.to("cpu")

    def cuda(self, device: Any = None) -> "ToMADenoiser":  # type: ignore[override]
        return self.to(torch.device("cuda", device) if isinstance(device, int) else device or "cuda")

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
        self.schedule.observe_timestep(float(t.flatten()[0]) if on_cpu and isinstance(t, torch.Tensor) else None)
        out = self.runner(_cast(inputs, self.engine_dtype, self._float32_inputs), self.schedule)
        out = out.to(device=self._device, dtype=self._dtype)
        self.schedule.advance()
        if not return_dict:
            return (out,)
        if self._output_class is None:
            from diffusers.models.modeling_outputs import Transformer2DModelOutput
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            cls = UNet2DConditionOutput if self.spec.output_class == "UNet2DConditionOutput" else Transformer2DModelOutput
            return cls(sample=out)
        return self._output_class(sample=out)
