"""Embedded default models (random weights, real architectures), local diffusers folders, Hub ids.

Names build a model from a config in code; a path loads a local diffusers folder with
``local_files_only``; a Hugging Face Hub id (``ORG/NAME``, with ``revision``/``variant``/``subfolder``)
loads through diffusers' ``from_pretrained`` and the HF cache, without network access when
``HF_HUB_OFFLINE`` is set or the revision is cached (see :func:`load_model`). Embedded models are
seeded, so a name always gives the same weights.

- ``sdxl-tiny`` / ``flux-tiny``: seconds on CPU, the architecture at toy width; for tests.
- ``sdxl``: SDXL-base UNet config at full width and depth (2.6 B parameters).
- ``sdxl-lite``: ``sdxl`` with 2 transformer layers per attention level instead of (1, 2, 10):
  same widths and token counts, 0.9 B parameters, for compiled-engine benchmarks on 24 GiB.
- ``flux``: Flux.1 transformer at full width (3072, 24 heads of 128) and the real RoPE axes, but
  depth-reduced from 19 double + 38 single blocks to 2 + 4 to fit 24 GiB in fp32.
- ``sd15-tiny``: an SD1.5-style UNet (attention at full latent resolution), for generality.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from toma_export.errors import UnsupportedModelError
from toma_export.quiet import library_noise
from toma_export.models.spec import DENOISER_ATTRIBUTES

SDXL_TINY: dict[str, Any] = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 2),
    attention_head_dim=(2, 4, 4),
    cross_attention_dim=32,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 32,
    norm_num_groups=32,
)

SDXL: dict[str, Any] = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)

#: SDXL-base's depth (blocks and transformer layers) at SDXL-tiny's width: every op costs about what
#: dispatching it costs, so a forward's CPU time is the host time a GPU run pays (scripts/host_time.py).
SDXL_DEEP_TINY: dict[str, Any] = dict(
    SDXL_TINY, layers_per_block=SDXL["layers_per_block"], transformer_layers_per_block=SDXL["transformer_layers_per_block"]
)

#: SDXL widths and token counts with 2 transformer layers at each attention level (SDXL: 1, 2, 10):
#: 0.9 B parameters, so compiled engines (ONNX export, ONNX Runtime sessions) fit in 24 GiB.
SDXL_LITE: dict[str, Any] = dict(SDXL, transformer_layers_per_block=(1, 2, 2))

SD15_TINY: dict[str, Any] = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=4,
    cross_attention_dim=32,
    norm_num_groups=32,
)

FLUX_TINY: dict[str, Any] = dict(
    patch_size=1,
    in_channels=16,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    guidance_embeds=False,
    axes_dims_rope=(4, 6, 6),
)

FLUX: dict[str, Any] = dict(
    patch_size=1,
    in_channels=64,
    num_layers=2,
    num_single_layers=4,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)

#: The Flux.1 [dev] transformer at full depth (19 double- + 38 single-stream blocks, 11.9 B
#: parameters: 24 GB in bf16). For GPU benchmarks; build it with ``load_model(..., device="cuda")``.
FLUX_FULL: dict[str, Any] = dict(FLUX, num_layers=19, num_single_layers=38)


def _unet(cfg: dict[str, Any]) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        from diffusers import UNet2DConditionModel

        model: Any = UNet2DConditionModel(**cfg)  # diffusers' ModelMixin is untyped for mypy
        return model

    return build


def _flux(cfg: dict[str, Any]) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        from diffusers import FluxTransformer2DModel

        model: Any = FluxTransformer2DModel(**cfg)
        return model

    return build


#: name -> (diffusers class name, config, builder). The class name and config are what
#: :func:`embedded_config` gives :func:`toma_export.models.spec.spec_for_config` before anything is built.
EMBEDDED_MODELS: dict[str, tuple[str, dict[str, Any], Callable[[], torch.nn.Module]]] = {
    "sdxl-tiny": ("UNet2DConditionModel", SDXL_TINY, _unet(SDXL_TINY)),
    "sdxl-deep-tiny": ("UNet2DConditionModel", SDXL_DEEP_TINY, _unet(SDXL_DEEP_TINY)),
    "sdxl": ("UNet2DConditionModel", SDXL, _unet(SDXL)),
    "sdxl-lite": ("UNet2DConditionModel", SDXL_LITE, _unet(SDXL_LITE)),
    "sd15-tiny": ("UNet2DConditionModel", SD15_TINY, _unet(SD15_TINY)),
    "flux-tiny": ("FluxTransformer2DModel", FLUX_TINY, _flux(FLUX_TINY)),
    "flux": ("FluxTransformer2DModel", FLUX, _flux(FLUX)),
    "flux-full": ("FluxTransformer2DModel", FLUX_FULL, _flux(FLUX_FULL)),
}
# FLUX.2, Qwen-Image, SD3.5 and Wan tiny configs: toma_export/models/architectures.py
from toma_export.models.architectures import ARCHITECTURES as _ARCHITECTURES  # noqa: E402

EMBEDDED_MODELS.update(_ARCHITECTURES)


def embedded_config(name: str) -> dict[str, Any]:
    """An embedded model's config as a ``config.json`` would hold it (``_class_name`` and fields)."""
    cls, cfg, _ = EMBEDDED_MODELS[name]
    return {"_class_name": cls, **cfg}


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a denoiser comes from: what a manifest records and what loads it (or its pipeline) again.

    ``kind``: ``"embedded"`` (a name in :data:`EMBEDDED_MODELS`), ``"local"`` (a folder) or ``"hub"``
    (a Hugging Face Hub id, read through the HF cache). ``root``: the folder or repo id as given;
    ``subfolder``: where the denoiser sits under it (``unet``/``transformer`` in a pipeline, or the
    user's ``--subfolder``); ``component``: the pipeline's denoiser attribute when ``root`` is a
    pipeline (it has ``model_index.json``), else None; ``commit``: the Hub snapshot the files came from.
    """

    kind: str
    root: str
    revision: str | None = None
    variant: str | None = None
    subfolder: str | None = None
    component: str | None = None
    commit: str | None = None

    @property
    def is_pipeline(self) -> bool:
        return self.component is not None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


#: How long :func:`hub_reachable` waits for a TCP connection to the Hub (or the proxy), DNS included.
PROBE_TIMEOUT_S = 1.0
_PROBES: dict[tuple[str, int], tuple[float, bool]] = {}


def _hub_address() -> tuple[str, int]:
    """Where a Hub request would connect first: the HTTPS proxy when one is set, else ``HF_ENDPOINT``."""
    import urllib.request
    from urllib.parse import urlparse

    from huggingface_hub import constants

    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    proxy = urllib.request.getproxies().get(endpoint.scheme or "https")
    url = urlparse(proxy) if proxy and not urllib.request.proxy_bypass(endpoint.hostname or "") else endpoint
    return url.hostname or "", url.port or (80 if url.scheme == "http" else 443)


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the Hub (or the proxy to it) accepts a TCP connection within ``timeout`` seconds.

    Without network, huggingface_hub's own requests retry for about a minute before failing; this
    probe answers in ``timeout`` (the lookup and connect run in a daemon thread, so a hanging DNS
    lookup cannot hold the caller). The answer is kept for 30 s per address.
    """
    import socket
    import threading
    import time

    address = _hub_address()
    now = time.monotonic()
    cached = _PROBES.get(address)
    if cached is not None and now - cached[0] < 30:
        return cached[1]
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(address, timeout=timeout):
                result.append(True)
        except Exception:  # noqa: BLE001 - any failure to connect means: not reachable now
            result.append(False)

    thread = threading.Thread(target=probe, name="toma-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    ok = bool(result and result[0])
    _PROBES[address] = (now, ok)
    return ok


def hub_cache_dir() -> str:
    """The HF hub cache as the environment says now: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else the default.

    Read at call time (huggingface_hub and diffusers read it once, at import), so the cache a caller
    points at is the one used.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def is_hub_id(name: str) -> bool:
    """Whether ``name`` is shaped like a Hub repo id ``ORG/NAME``.

    Bare names (legacy ids such as ``gpt2``) are not taken as Hub ids, so a mistyped embedded name fails
    at once instead of trying the network.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.count("/") != 1:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _not_found(key: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"model {key!r} is neither an embedded model ({', '.join(EMBEDDED_MODELS)}), an existing local "
        "folder, nor a Hugging Face Hub id (ORG/NAME). Pass one of those: a name, the path of a diffusers "
        "model or pipeline folder, or a Hub id."
    )


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsupportedModelError(f"{path} is not a readable JSON config ({exc}); re-save the model with "
                                    "save_pretrained or point at another folder.") from exc
    if not isinstance(data, dict):
        raise UnsupportedModelError(f"{path} holds no JSON object; re-save the model with save_pretrained.")
    return data


def _component(index: dict[str, Any]) -> str | None:
    """The pipeline's denoiser attribute: ``unet`` or ``transformer`` where ``model_index.json`` names a class."""
    return next((c for c in DENOISER_ATTRIBUTES if isinstance(index.get(c), list) and any(index[c])), None)


class _Hub:
    """Files of one Hub repo revision, read through the HF cache (offline when set or cached)."""

    def __init__(self, repo_id: str, revision: str | None):
        self.repo_id, self.revision, self.cache_dir = repo_id, revision, hub_cache_dir()
        self.offline = _hub_offline()
        # Cached (this revision's model_index.json or config.json in the snapshot): no network at all.
        self.local_files_only = self.offline or any(
            isinstance(self._cached(f), str) for f in ("model_index.json", "config.json", "unet/config.json",
                                                       "transformer/config.json")
        )
        #: Not cached and the Hub cannot be reached: only the cache is read, and a miss says so at once.
        self.unreachable = not self.local_files_only and not hub_reachable()
        self.local_files_only = self.local_files_only or self.unreachable
        self.commit: str | None = None

    def _cached(self, filename: str) -> Any:
        from huggingface_hub import try_to_load_from_cache

        return try_to_load_from_cache(self.repo_id, filename, cache_dir=self.cache_dir, revision=self.revision)

    def json(self, filename: str, subfolder: str | None = None) -> dict[str, Any] | None:
        """The file parsed, or None when the repo (revision) has no such file."""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            local = hf_hub_download(self.repo_id, filename, subfolder=subfolder, revision=self.revision,
                                    cache_dir=self.cache_dir, local_files_only=self.local_files_only)
        except (EntryNotFoundError, LocalEntryNotFoundError):
            return None
        except Exception as exc:  # repository/revision not found, gated, network: the Hub's own message
            raise UnsupportedModelError(
                f"Hub model {self.repo_id!r}{self._at()} could not be read: {exc}. Check the id and --revision, "
                "log in for gated models (hf auth login), or pass a local folder."
            ) from exc
        parts = Path(local).parts
        if "snapshots" in parts:
            self.commit = parts[parts.index("snapshots") + 1]
        return _read_config(Path(local))

    def _at(self) -> str:
        return f" at revision {self.revision!r}" if self.revision else ""

    def missing(self) -> UnsupportedModelError:
        if self.unreachable:
            host, port = _hub_address()
            return UnsupportedModelError(
                f"Hub model {self.repo_id!r}{self._at()} is not in the Hugging Face cache at {self.cache_dir}, and "
                f"there is no network ({host}:{port} cannot be reached). Pass a local folder (the model saved with "
                f"save_pretrained), or download it where there is network (hf download {self.repo_id}) into this "
                "cache (HF_HUB_CACHE / HF_HOME); HF_HUB_OFFLINE=1 then reads only the cache."
            )
        where = f"in the Hugging Face cache at {self.cache_dir}" + (
            " (HF_HUB_OFFLINE is set)" if self.offline else "" if self.local_files_only else " and could not download it"
        )
        return UnsupportedModelError(
            f"Hub model {self.repo_id!r}{self._at()} has no model_index.json or config.json {where}. Download it "
            f"first (hf download {self.repo_id}), unset HF_HUB_OFFLINE, check --revision/--subfolder, or pass "
            "a local folder."
        )


def resolve_model(
    name_or_path: str | Path, *, revision: str | None = None, variant: str | None = None, subfolder: str | None = None
) -> tuple[ModelSource, dict[str, Any] | None]:
    """Where ``name_or_path`` is and the denoiser's config (None for embedded names).

    Order: an embedded name, then an existing local folder, then a Hub id. A pipeline (a
    ``model_index.json`` at the root) gives its ``unet``/``transformer``; ``subfolder`` picks another.
    """
    key = str(name_or_path)
    if key in EMBEDDED_MODELS:
        given = [f"--{n} {v}" for n, v in (("revision", revision), ("variant", variant), ("subfolder", subfolder)) if v]
        if given:
            raise UnsupportedModelError(
                f"{' '.join(given)} does not apply to the embedded model {key!r} (built in code); drop it, or pass "
                "a local folder or Hub id."
            )
        return ModelSource("embedded", key), None
    path = Path(key)
    if path.exists():
        if revision:
            raise UnsupportedModelError(f"--revision {revision} applies to Hub ids, not to the local folder {key}.")
        index_file = path / "model_index.json"
        component = _component(_read_config(index_file)) if index_file.is_file() else None
        sub = subfolder or component
        folder = path / sub if sub else path
        if not (folder / "config.json").is_file():
            raise UnsupportedModelError(
                f"{folder} has no config.json: point at a diffusers model or pipeline folder"
                + ("" if subfolder else ", or name the denoiser's folder with --subfolder") + "."
            )
        if subfolder and component != subfolder:
            component = None
        return ModelSource("local", key, None, variant, sub, component), _read_config(folder / "config.json")
    if not is_hub_id(key):
        raise _not_found(key)
    hub = _Hub(key, revision)
    index = hub.json("model_index.json") if subfolder in (None, "unet", "transformer") else None
    component = _component(index) if index is not None else None
    sub = subfolder or component
    config = hub.json("config.json", sub)
    if config is None:
        raise hub.missing()
    if subfolder and component != subfolder:
        component = None
    return ModelSource("hub", key, revision, variant, sub, component, hub.commit), config


def _model_class(config: dict[str, Any], where: str) -> Any:
    """The diffusers model class a folder's ``config.json`` names: any diffusers model (``ModelMixin``);
    whether ToMA can merge it is for the eager adapters or the graph pass to say, by structure."""
    import diffusers

    class_name = config.get("_class_name", "")
    cls = getattr(diffusers, class_name, None) if isinstance(class_name, str) and class_name else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise UnsupportedModelError(
            f"{where} holds a {class_name or 'model of unknown class'}, which is not a diffusers model class in "
            f"diffusers {diffusers.__version__}; toma-export takes diffusers denoisers (UNet2DConditionModel, "
            "FluxTransformer2DModel, Flux2/QwenImage/SD3/Wan transformers, ...): point it at the denoiser's folder "
            "(unet/ or transformer/) or upgrade diffusers."
        )
    return cls


def load_model(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    variant: str | None = None,
    subfolder: str | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.nn.Module:
    """An embedded model by name (seeded random weights), a local diffusers folder, or a Hub id.

    - Local folders load with ``local_files_only``; a pipeline folder gives its ``unet``/``transformer``.
    - Hub ids (``ORG/NAME``) load through diffusers' ``from_pretrained`` and the HF cache
      (``HF_HUB_CACHE`` / ``HF_HOME`` as set at call time): with no network access when
      ``HF_HUB_OFFLINE`` is set or this revision is already cached; downloaded otherwise.
    - ``revision`` (Hub: branch, tag or commit), ``variant`` (weights file variant, e.g. ``fp16``),
      ``subfolder`` (the denoiser's folder in the repo or folder; default: a pipeline's
      ``unet``/``transformer``, else the root). ``dtype``: default float32.

    The model carries its :class:`ModelSource` as ``model._toma_source``, which
    :func:`toma_export.models.identity.model_identity` records in manifests.
    """
    dtype = dtype or torch.float32
    source, config = resolve_model(name_or_path, revision=revision, variant=variant, subfolder=subfolder)
    if source.kind == "embedded":
        _, _, build = EMBEDDED_MODELS[source.root]
        target = torch.device(device or "cpu")
        cuda = [target] if target.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), target:
            torch.manual_seed(seed)
            model = build()
        with library_noise():
            model = (model if dtype == torch.float32 else model.to(dtype)).eval()
    elif source.kind == "local":
        folder = Path(source.root) / source.subfolder if source.subfolder else Path(source.root)
        model = _load_local(folder, dtype, config or {}, variant=variant)
    else:
        model = _load_hub(source, dtype, config or {})
    if device is not None:
        model = model.to(device)
    object.__setattr__(model, "_toma_source", source)
    return model


def _not_buildable(where: str, cls: Any, exc: BaseException, fix: str) -> UnsupportedModelError:
    """Diffusers refused to build ``cls`` from a folder's config, or its weights do not fit that config."""
    first = (str(exc).strip().splitlines() or [""])[0][:400]
    return UnsupportedModelError(
        f"{where}: diffusers could not build a {cls.__name__} from it ({type(exc).__name__}: {first}): its "
        f"config.json is one diffusers rejects, or its weights do not fit that config. {fix}"
    )


def _load_local(path: Path, dtype: torch.dtype, config: dict[str, Any], *, variant: str | None = None) -> torch.nn.Module:
    cls = _model_class(config, str(path))
    try:
        model: Any = cls.from_pretrained(path, local_files_only=True, torch_dtype=dtype, variant=variant)
    except OSError as exc:  # diffusers: "Error no file named diffusion_pytorch_model..." (missing weights)
        raise UnsupportedModelError(
            f"{path}: the weights could not be loaded ({exc}). Re-save the model with save_pretrained"
            + (f", or check --variant {variant}" if variant else "") + "."
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a config diffusers rejects, weights of other shapes: the folder's fault
        raise _not_buildable(str(path), cls, exc, "Re-save the model with save_pretrained, or point at another "
                             "folder.") from exc
    return model.eval()


def _load_hub(source: ModelSource, dtype: torch.dtype, config: dict[str, Any]) -> torch.nn.Module:
    cls = _model_class(config, f"Hub model {source.root!r}" + (f"/{source.subfolder}" if source.subfolder else ""))
    hub = _Hub(source.root, source.revision)
    try:
        model: Any = cls.from_pretrained(
            source.root, subfolder=source.subfolder, revision=source.commit or source.revision, variant=source.variant,
            torch_dtype=dtype, cache_dir=hub.cache_dir, local_files_only=hub.local_files_only,
        )
    except OSError as exc:  # diffusers' "no file named diffusion_pytorch_model..." / not cached
        raise UnsupportedModelError(
            f"Hub model {source.root!r}: the weights could not be loaded ({exc}). Download them "
            f"(hf download {source.root}), check --variant/--subfolder, or unset HF_HUB_OFFLINE."
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - as for local folders
        raise _not_buildable(f"Hub model {source.root!r}", cls, exc, "Check --revision/--subfolder, or pass a "
                             "local folder.") from exc
    return model.eval()


def model_shell(
    name_or_path: str | Path, *, revision: str | None = None, variant: str | None = None, subfolder: str | None = None
) -> torch.nn.Module:
    """The model's architecture on the meta device: its config and attributes, no weights or memory.

    Takes what :func:`load_model` takes (embedded name, local folder, Hub id); reads only the config.
    """
    source, config = resolve_model(name_or_path, revision=revision, variant=variant, subfolder=subfolder)
    with torch.device("meta"):
        if config is None:
            shell: Any = EMBEDDED_MODELS[source.root][2]()
        else:
            cls = _model_class(config, source.root)
            try:
                shell = cls.from_config(config)
            except Exception as exc:  # noqa: BLE001 - a config diffusers rejects: the folder's fault
                raise _not_buildable(source.root, cls, exc, "Re-save the model with save_pretrained, or point at "
                                     "another folder.") from exc
    object.__setattr__(shell, "_toma_source", source)
    return shell
