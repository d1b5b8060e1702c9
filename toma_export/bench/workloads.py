"""Benchmark workloads: a model, its inputs, how a method is installed, what one timed call is.

Each workload builds a pristine model once; every (backend, method, ratio) case gets its own
module tree that shares the pristine weights (:func:`shared_clone`), so patches and compiled
graphs never interfere and a 10 GB UNet is held once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

import toma_export
from toma_export.bench.block import GRID, BlockModel, BlockPatch, block_inputs
from toma_export.bench.ideal import IdealSites
from toma_export.config import ToMAConfig
from toma_export.models.architectures import latent_frames
from toma_export.models.inputs import example_inputs
from toma_export.models.outputs import first_output as first
from toma_export.models.registry import load_model
from toma_export.models.spec import PACKED_TOKEN_PIXELS, spec_for

#: Pixels per image-token side in every transformer workload: 2x2-packed (Flux, FLUX.2, Qwen-Image) or
#: 2x2-patched (SD3.5, Wan, Z-Image) latents of an 8x VAE.
TOKEN_PIXELS = PACKED_TOKEN_PIXELS


class Handle(Protocol):
    def reset(self) -> None: ...

    def remove(self) -> None: ...


class EagerHandle:
    """``toma_export.apply`` on a UNet or Flux model."""

    def __init__(self, model: torch.nn.Module, config: ToMAConfig):
        self.model = toma_export.apply(model, config)

    def reset(self) -> None:
        toma_export.reset(self.model)

    def remove(self) -> None:
        toma_export.remove(self.model)

    @property
    def state(self) -> Any:
        return toma_export.state(self.model)


@dataclass
class Options:
    """Overrides of a workload's defaults (None = the workload's own)."""

    model: str | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    batch: int = 1
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    #: ToMAConfig overrides of the run (--merge, --max-downsample, ...): the ideal rows follow them too.
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class Built:
    """A ready workload.

    ``ideal(ratio)`` returns ``(module, kwargs)`` of the no-merge-cost reference, or None.
    ``run(fn, kwargs)`` makes one timed call (one forward, or a whole denoising loop).
    """

    name: str
    model: torch.nn.Module
    kwargs: dict[str, Any]
    patch: Callable[[torch.nn.Module, ToMAConfig], Handle]
    ideal: Callable[[float], tuple[torch.nn.Module, dict[str, Any]] | None]
    ideal_note: str
    describe: str
    run: Callable[[Callable[..., Any], dict[str, Any]], Any] = field(default=lambda fn, kw: fn(**kw))
    #: rows x columns of image tokens for packed transformers (what their position ids encode), else None
    token_grid: tuple[int, int] | None = None


@dataclass(frozen=True)
class Workload:
    name: str
    summary: str
    build: Callable[[Options], Built]
    repeats: int
    warmup: int
    opt_in: bool = False  # not run by "--workload all"


def shared_clone(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model``'s module tree that shares its parameters and buffers (no weight copy)."""
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


# -- sdxl-block ---------------------------------------------------------------------------
def _build_block(opts: Options) -> Built:
    grid = ((opts.height or GRID[0] * 16) // 16, (opts.width or GRID[1] * 16) // 16)
    model = BlockModel(sample_size=grid[0]).to(opts.device).eval()
    if opts.dtype != torch.float32:
        model = model.to(opts.dtype)
    kwargs = {k: v.to(opts.device) for k, v in block_inputs(opts.batch, grid, dtype=opts.dtype).items()}

    def ideal(ratio: float) -> tuple[torch.nn.Module, dict[str, Any]]:
        cols = max(1, round(grid[1] * (1 - ratio)))
        kw = {k: v.to(opts.device) for k, v in block_inputs(opts.batch, (grid[0], cols), dtype=opts.dtype).items()}
        return shared_clone(model), kw

    n = grid[0] * grid[1]
    return Built(
        "sdxl-block",
        model,
        kwargs,
        BlockPatch,  # type: ignore[arg-type]  # a class whose instances are handles
        ideal,
        f"the same block on a {grid[0]}x(1-r)*{grid[1]} grid ({grid[0] * round(grid[1] / 2)} of {n} tokens at r=0.5)",
        f"SDXL level-1 BasicTransformerBlock, {n} tokens ({grid[0]}x{grid[1]}), 640 ch, 10x64 heads, "
        f"context 77x2048, batch {opts.batch}",
    )


# -- UNets -------------------------------------------------------------------------------
def _unet_ideal(model: torch.nn.Module, kwargs: dict[str, Any], config_for: Callable[[float], ToMAConfig]):
    def ideal(ratio: float) -> tuple[torch.nn.Module, dict[str, Any]]:
        clone = shared_clone(model)
        IdealSites(clone, config_for(ratio))
        return clone, kwargs

    return ideal


def _unet_builder(default_model: str, default_px: int, name: str) -> Callable[[Options], Built]:
    def build(opts: Options) -> Built:
        model = load_model(opts.model or default_model, dtype=opts.dtype, device=opts.device)
        h, w = opts.height or default_px, opts.width or default_px
        kwargs = example_inputs(model, batch=opts.batch, height=h, width=w, dtype=opts.dtype, device=opts.device)
        kwargs["return_dict"] = False
        return Built(
            name,
            model,
            kwargs,
            EagerHandle,
            _unet_ideal(model, kwargs, lambda r: ToMAConfig(**{**opts.config, "ratio": r})),
            "merged sub-layers given the first (1-r)*N tokens and zero-padded back (IdealSites); rest full size",
            f"UNet {opts.model or default_model} at {h}x{w} px, batch {opts.batch}",
        )

    return build


#: The ideal of transformers whose every block merges: the same model on a narrower token grid.
NARROWER_GRID = "the same transformer on (1-r)*N image tokens (narrower grid), same text tokens"


# -- transformers (Flux.1 through its adapter; FLUX.2, Qwen-Image, SD3.5, Wan, Z-Image through the graph pass
# behind a hook: ToMA, and ToDo through the key/value pass, graph.kv_downsample); engine backends build the
# same programs.
def _transformer_builder(
    default_model: str, default_px: int | tuple[int, int], text_len: int, name: str, frames: int = 1
) -> Callable[[Options], Built]:
    def build(opts: Options) -> Built:
        model = load_model(opts.model or default_model, dtype=opts.dtype, device=opts.device)
        spec = spec_for(model)
        px = default_px if isinstance(default_px, tuple) else (default_px, default_px)
        h, w = opts.height or px[0], opts.width or px[1]

        def inputs(width: int) -> dict[str, Any]:
            kw = example_inputs(model, batch=opts.batch, height=h, width=width, frames=frames, text_len=text_len,
                                dtype=opts.dtype, device=opts.device)
            kw["return_dict"] = False
            return kw

        def ideal(ratio: float) -> tuple[torch.nn.Module, dict[str, Any]]:
            cols = max(1, round((w // TOKEN_PIXELS) * (1 - ratio)))
            return shared_clone(model), inputs(cols * TOKEN_PIXELS)

        latent = latent_frames(spec, frames, patch_size=getattr(model.config, "patch_size", None))
        n = (h // TOKEN_PIXELS) * (w // TOKEN_PIXELS) * latent
        clip = f", {frames} frames ({latent} latent)" if frames > 1 else ""
        route = "" if spec.adapter else " (ToMA and ToDo through the graph pass behind a hook)"
        return Built(
            name,
            model,
            inputs(w),
            EagerHandle,
            ideal,
            NARROWER_GRID,
            f"{type(model).__name__} {opts.model or default_model} at {h}x{w} px{clip} = {n} image + {text_len} text "
            f"tokens, batch {opts.batch}{route}",
            token_grid=(h // TOKEN_PIXELS, w // TOKEN_PIXELS),
        )

    return build


# -- denoising loop -------------------------------------------------------------------------
def _loop_builder(
    base: Callable[[Options], Built], name: str, default_steps: int, sample_key: str, t_max: float
) -> Callable[[Options], Built]:
    """``steps`` calls of ``base``'s denoiser with a fixed Euler-style update between them, so the
    recompute schedule's select and reuse steps are both in one timed call. ``t_max``: the first
    timestep as the model takes it (UNet: 999; Flux: 1.0)."""

    def build(opts: Options) -> Built:
        built = base(opts)
        built.name = name
        steps = opts.steps or default_steps
        timesteps = torch.linspace(t_max, 0, steps)
        if t_max > 1:
            timesteps = timesteps.round()

        def run(fn: Callable[..., Any], kwargs: dict[str, Any]) -> torch.Tensor:
            sample = kwargs[sample_key]
            t_like = kwargs["timestep"]
            for t in timesteps:
                t_in = t.to(t_like).expand(t_like.shape) if isinstance(t_like, torch.Tensor) else t
                eps = first(fn(**dict(kwargs, **{sample_key: sample, "timestep": t_in})))
                sample = sample - eps / steps  # the update's cost is negligible next to the model's
            return sample

        built.run = run
        built.describe += f", {steps} denoising steps (recompute schedule active, reuse counted)"
        return built

    return build


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("sdxl-block", "SDXL highest-resolution transformer block, real dims", _build_block, 10, 2),
        Workload("sdxl-unet", "full SDXL-architecture UNet, 1024^2 (~53 s/forward on 2 cores)",
                 _unet_builder("sdxl", 1024, "sdxl-unet"), 3, 1, opt_in=True),
        Workload("sdxl-tiny-unet", "tiny SDXL-architecture UNet, 256^2 (tests)",
                 _unet_builder("sdxl-tiny", 256, "sdxl-tiny-unet"), 5, 1),
        Workload("flux", "Flux.1 width, depth-reduced (2+4 blocks), 4096 image + 512 text tokens",
                 _transformer_builder("flux", 1024, 512, "flux"), 3, 1, opt_in=True),
        Workload("flux-tiny", "tiny Flux transformer, 256^2 = 256 image tokens (tests)",
                 _transformer_builder("flux-tiny", 256, 16, "flux-tiny"), 5, 1),
        Workload("sd35", "SD3.5 Medium width (1536), 2 layers (one dual-attention), 4096 image + 333 text tokens",
                 _transformer_builder("sd35-medium-d2", 1024, 333, "sd35"), 3, 1, opt_in=True),
        Workload("qwen-image", "Qwen-Image width (3072), 2 layers, 4096 image + 512 text tokens",
                 _transformer_builder("qwen-image-d2", 1024, 512, "qwen-image"), 3, 1, opt_in=True),
        Workload("wan", "Wan 2.1 1.3B width (1536), 2 layers, 480x832 px x 17 frames = 5x30x52 latent tokens",
                 _transformer_builder("wan-1.3b-d2", (480, 832), 512, "wan", frames=17), 3, 1, opt_in=True),
        Workload("flux2", "FLUX.2 [dev] width (6144), 1 double + 1 single block, 4096 image + 512 text tokens",
                 _transformer_builder("flux2-dev-d1", 1024, 512, "flux2"), 2, 1, opt_in=True),
        Workload("flux2-klein", "FLUX.2 [klein] 4B width (3072), 2 double + 4 single blocks, 4096 image + 512 text tokens",
                 _transformer_builder("flux2-klein-d2", 1024, 512, "flux2-klein"), 2, 1, opt_in=True),
        Workload("z-image", "Z-Image-Turbo width (3840), 2 layers + 1 + 1 refiner layers, 4096 image + 512 text tokens",
                 _transformer_builder("z-image-d2", 1024, 512, "z-image"), 2, 1, opt_in=True),
        Workload("sd35-tiny", "tiny SD3.5 transformer, 128^2 (tests)", _transformer_builder("sd35-tiny", 128, 8, "sd35-tiny"), 3, 1),
        Workload("sdxl-loop", "denoising loop of n UNet steps with the recompute schedule",
                 _loop_builder(_unet_builder("sdxl-tiny", 1024, "sdxl-loop"), "sdxl-loop", 10, "sample", 999.0), 3, 1),
        Workload("flux-loop", "denoising loop of n Flux steps with the recompute schedule",
                 _loop_builder(_transformer_builder("flux", 1024, 512, "flux-loop"), "flux-loop", 20, "hidden_states", 1.0),
                 2, 1, opt_in=True),
    )
}


def get_workload(name: str) -> Workload:
    if name not in WORKLOADS:
        raise ValueError(f"workload {name!r} is unknown; available: {', '.join(WORKLOADS)}.")
    return WORKLOADS[name]

