"""``ModelSpec``: what the toolchain needs to know about a denoiser family, one record per family.

The question "what kind of model is this, and which path does it take?" is answered once, by
:func:`_decide`, from a model, a pipeline (its ``unet``/``transformer``), a weightless shell, or a
config (``_class_name`` plus fields, before loading: an embedded entry or a folder's ``config.json``).
Build, example inputs, verify, run, the drop-in wrapper, serving and bench read the record instead of
asking again; the route a method takes on it is :func:`toma_export.methods.route`.

Torch-free: records and the decision need only class names and config fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Final, Literal, Mapping, Sequence

from toma_export.errors import UnsupportedModelError

#: Pixels per latent row/column (every VAE here downsamples by 8).
VAE_FACTOR: Final = 8
#: Pixels per token side of 2x2-packed latents (Flux, FLUX.2, Qwen-Image).
PACKED_TOKEN_PIXELS: Final = 16

#: Coarse kind, recorded in manifests as ``model.family``.
Kind = Literal["unet", "flux", "transformer"]
#: Which hand-written eager hook adapter applies (None: eager ``apply`` runs the graph pass behind a hook).
Adapter = Literal["unet", "flux"]


@dataclass(frozen=True)
class ModelSpec:
    """One denoiser family."""

    #: Family name: the example-input builder of :func:`toma_export.models.inputs.example_inputs` for it.
    family: str
    kind: Kind
    adapter: Adapter | None
    #: Where a pipeline holds the denoiser.
    denoiser_attribute: Literal["unet", "transformer"]
    #: Token layout: ``"latent-map"`` (UNet conv features), ``"packed"`` (2x2-packed latent sequence),
    #: ``"patched"`` (latents patchified inside the model), ``"patched-video"`` (plus a frame axis),
    #: ``"per-sample"`` (lists of per-sample latents).
    token_layout: str
    #: The example inputs' default text length.
    text_len: int = 8
    #: Inputs an artifact takes in float32 at every precision (position ids; the UNet's timestep);
    #: names of nested inputs are ``parent.child``.
    float32_inputs: frozenset[str] = frozenset()
    #: The diffusers output class the denoiser returns (``return_dict=True``).
    output_class: Literal["UNet2DConditionOutput", "Transformer2DModelOutput"] = "Transformer2DModelOutput"
    #: Its pipeline runs the denoiser on 2 x images under classifier-free guidance (SDXL), so an artifact's
    #: batch is twice the images.
    cfg_doubles_batch: bool = False
    #: The encoder-free pipeline :func:`toma_export.models.pipelines.build_pipeline` builds around it (None:
    #: none; a local pipeline folder brings its own).
    embedded_pipeline: Literal["sdxl", "flux"] | None = None
    #: What its timestep means: ``"ddpm"`` (step of 1000 of a DDPM schedule), ``"flow"`` (flow-matching
    #: noise level s, on the scale its pipeline passes: s, or 1000 s), ``"flow-reversed"`` (1 - s: Z-Image's
    #: pipeline passes ``(1000 - timestep) / 1000``, so 1 is the clean image).
    timestep: Literal["ddpm", "flow", "flow-reversed"] = "flow"

    @property
    def packed(self) -> bool:
        """Latents are 2x2-packed into tokens: image sides in multiples of 16 px."""
        return self.token_layout == "packed"

    @property
    def video(self) -> bool:
        """Inputs have a frame axis (:func:`toma_export.models.architectures.latent_frames` is the frame rule)."""
        return self.token_layout == "patched-video"

    @property
    def pixel_multiple(self) -> int:
        """Image sides must be multiples of this many pixels."""
        return PACKED_TOKEN_PIXELS if self.packed else VAE_FACTOR


_FLUX_IDS = frozenset({"img_ids", "txt_ids"})

UNET = ModelSpec("unet", "unet", "unet", "unet", "latent-map", text_len=77, float32_inputs=frozenset({"timestep"}),
                 output_class="UNet2DConditionOutput", cfg_doubles_batch=True, embedded_pipeline="sdxl",
                 timestep="ddpm")
FLUX = ModelSpec("flux", "flux", "flux", "transformer", "packed", text_len=16, float32_inputs=_FLUX_IDS,
                 embedded_pipeline="flux")
#: Flux.1-style blocks in another class (Chroma, ...): Flux's inputs, but the blocks differ inside, so
#: eager takes the graph pass (which matches structure), not the Flux adapter.
FLUX_LIKE = ModelSpec("flux", "flux", None, "transformer", "packed", text_len=16, float32_inputs=_FLUX_IDS,
                      embedded_pipeline="flux")
FLUX2 = ModelSpec("flux2", "transformer", None, "transformer", "packed", float32_inputs=_FLUX_IDS)
QWEN_IMAGE = ModelSpec("qwen-image", "transformer", None, "transformer", "packed")
SD35 = ModelSpec("sd35", "transformer", None, "transformer", "patched")
WAN = ModelSpec("wan", "transformer", None, "transformer", "patched-video")
Z_IMAGE = ModelSpec("z-image", "transformer", None, "transformer", "per-sample", timestep="flow-reversed")
#: Any other diffusers denoiser: the graph pass takes it where its sites match; inputs as Flux's.
TRANSFORMER = ModelSpec("flux", "transformer", None, "transformer", "packed", text_len=16, float32_inputs=_FLUX_IDS)

#: diffusers class name -> its family's spec (subclasses included, by MRO).
SPECS_BY_CLASS: Final[Mapping[str, ModelSpec]] = {
    "UNet2DConditionModel": UNET,
    "FluxTransformer2DModel": FLUX,
    "Flux2Transformer2DModel": FLUX2,
    "QwenImageTransformer2DModel": QWEN_IMAGE,
    "SD3Transformer2DModel": SD35,
    "WanTransformer3DModel": WAN,
    "ZImageTransformer2DModel": Z_IMAGE,
}

#: Family name -> its spec (the adapter's: Flux.1 itself for ``flux``).
SPECS_BY_FAMILY: Final[Mapping[str, ModelSpec]] = {s.family: s for s in (UNET, FLUX, FLUX2, QWEN_IMAGE, SD35, WAN, Z_IMAGE)}

#: Where pipelines hold their denoiser (``model_index.json`` components too), in the order looked up.
DENOISER_ATTRIBUTES: Final = ("unet", "transformer")


def _decide(classes: Sequence[str], config_has: Callable[[str], bool], has: Callable[[str], bool] | None,
            configured: bool) -> ModelSpec:
    """The one decision of model kind. ``classes``: the class and its bases' names; ``config_has``: whether
    the config has a field; ``has``: whether the model has an attribute (None: only a config is known, a
    UNet config then implies its blocks); ``configured``: a diffusers model with a config."""
    if config_has("down_block_types") and (has is None or has("down_blocks")):
        return UNET
    known = next((SPECS_BY_CLASS[c] for c in classes if c in SPECS_BY_CLASS), None)
    if known is not None and known is not UNET:
        return known
    if has is not None and all(has(a) for a in ("transformer_blocks", "single_transformer_blocks", "pos_embed")):
        return FLUX_LIKE
    if configured:
        return TRANSFORMER
    raise UnsupportedModelError(
        f"{classes[0] if classes else 'this object'} is not supported: toma-export takes diffusers denoisers "
        "(UNet2DConditionModel, FluxTransformer2DModel and other diffusers transformers), or pipelines holding one "
        "as .unet/.transformer."
    )


def denoiser_of(obj: Any) -> Any:
    """``obj`` itself when it is a model (has a ``config`` and a ``forward``), else a pipeline's ``unet`` /
    ``transformer`` (``obj`` when it holds neither)."""
    if hasattr(obj, "config") and hasattr(obj, "forward"):
        return obj
    for attr in DENOISER_ATTRIBUTES:
        inner = getattr(obj, attr, None)
        if inner is not None:
            return inner
    return obj


def spec_for(obj: Any) -> ModelSpec:
    """The spec of a model, a weightless shell, a drop-in wrapper (the model it stands in for) or a
    pipeline's denoiser; unsupported objects are refused."""
    model = denoiser_of(obj)
    model = getattr(model, "_shell", model)  # a drop-in wrapper (ToMADenoiser): the model it stands in for
    cfg = getattr(model, "config", None)
    return _decide(
        [c.__name__ for c in type(model).__mro__],
        lambda f: cfg is not None and hasattr(cfg, f),
        lambda a: hasattr(model, a),
        configured=cfg is not None and hasattr(model, "from_config") and hasattr(model, "forward"),
    )


def spec_for_config(config: Mapping[str, Any]) -> ModelSpec:
    """The spec of a denoiser config (``_class_name`` and fields: an embedded entry, a folder's
    ``config.json``), before anything is loaded."""
    name = config.get("_class_name")
    return _decide([name] if isinstance(name, str) else [], config.__contains__, None, configured=True)
