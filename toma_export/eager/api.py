"""``apply`` / ``remove`` / ``reset`` / ``state``: eager ToMA on diffusers pipelines and models.

``apply`` registers diffusers hooks (no class is swapped, no forward copied), validates before
touching the model and rolls back on any failure, so a model is either fully patched or left as
it was. The step hook is stateful, so diffusers' own reset after each pipeline call starts the
next call at step 0 in every pipeline that shares the model.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from toma_export.config import ToMAConfig
from toma_export.eager import flux, unet
from toma_export.eager.graph_hook import HOOK_NAME as GRAPH_HOOK
from toma_export.eager.graph_hook import GraphPassHook
from toma_export.eager.hooks import Installed
from toma_export.eager.state import MergeContext
from toma_export.errors import ToMAError, ToMATypeError, UnsupportedModelError
from toma_export.input_rules import check_config_arg
from toma_export.methods import route
from toma_export.models.spec import denoiser_of, spec_for

_INSTALLED_ATTR = "_toma_installed"


def _uncompiled(module: torch.nn.Module) -> torch.nn.Module:
    """The module a ``torch.compile`` wrapper (``OptimizedModule``) holds, else ``module``.

    The hooks go on the wrapped module (the wrapper calls its forward, hooks included), and the
    installed record lives there too: the wrapper forwards attribute writes to it but not
    ``__dict__`` lookups, so ``remove``/``state`` on the wrapper must look at the same module."""
    from torch._dynamo.eval_frame import OptimizedModule

    while isinstance(module, OptimizedModule):
        module = module._orig_mod
    return module


def _denoiser(obj: Any) -> torch.nn.Module:
    """The model to patch: ``obj`` itself or a pipeline's ``unet`` / ``transformer`` (through a
    ``torch.compile`` wrapper)."""
    model = obj if isinstance(obj, torch.nn.Module) else denoiser_of(obj)
    if isinstance(model, torch.nn.Module):
        return _uncompiled(model)
    raise UnsupportedModelError(
        f"cannot apply ToMA to a {type(obj).__name__}: pass a diffusers pipeline with .unet or .transformer, "
        "or the UNet2DConditionModel / FluxTransformer2DModel itself."
    )


def uses_graph_hook(model: torch.nn.Module) -> bool:
    """Whether eager ``apply`` runs ``model`` through the graph pass behind a hook (no hand-written
    adapter, :attr:`ModelSpec.adapter`)."""
    return spec_for(model).adapter is None


def _graph_pass_hook(model: torch.nn.Module, config: ToMAConfig) -> Installed:
    """Models without a hand-written adapter: the graph pass behind one hook on the root."""
    route(spec_for(model), config, name=type(model).__name__)  # refuses methods no graph pass implements
    hook = GraphPassHook(config)
    installed = Installed(model, hook)  # type: ignore[arg-type]  # its root has reset_state/active too
    installed.add(model, hook, GRAPH_HOOK)
    return installed


def _no_options(installer: Callable[[torch.nn.Module, ToMAConfig], Installed]) -> Callable[..., Installed]:
    def install(model: torch.nn.Module, config: ToMAConfig, **options: Any) -> Installed:
        if options:
            raise TypeError(f"options {sorted(options)} apply to UNets only (the attention levels of a UNet)")
        return installer(model, config)
    return install


#: :attr:`ModelSpec.adapter` -> what installs ToMA's hooks on such a model (None: no adapter).
INSTALLERS: dict[str | None, Callable[..., Installed]] = {
    "unet": unet.install,
    "flux": _no_options(flux.install),
    None: _no_options(_graph_pass_hook),
}


def install(model: torch.nn.Module, config: ToMAConfig, **options: Any) -> Installed:
    """Register the hooks for ``model``'s route (:func:`toma_export.methods.route`); nothing stays
    registered when this raises."""
    try:
        installed = INSTALLERS[spec_for(model).adapter](model, config, **options)
    except BaseException:
        _strip(model)
        raise
    _join_pipeline_reset(model, installed)
    return installed


def _join_pipeline_reset(model: torch.nn.Module, installed: Installed) -> None:
    """Pipelines end every call with ``component._reset_stateful_cache()`` on components that have
    it (diffusers' ``CacheMixin`` models). UNets lack it, so it is given to this instance (removed
    with the hooks): the stateful step hook then resets after each call as on Flux."""
    if hasattr(model, "_reset_stateful_cache"):
        return
    from diffusers.hooks import HookRegistry

    def _reset_stateful_cache(recurse: bool = True) -> None:
        HookRegistry.check_if_exists_or_initialize(model).reset_stateful_hooks(recurse=recurse)

    model.__dict__["_reset_stateful_cache"] = _reset_stateful_cache
    installed.cleanup.append(lambda: model.__dict__.pop("_reset_stateful_cache", None))


def _strip(model: torch.nn.Module) -> None:
    """Take off any ToMA hook (hooks named ``toma_*``) and tomesd patch left by a failed install."""
    if hasattr(model, "_tome_info"):
        import tomesd

        tomesd.remove_patch(model)
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is None:
            continue
        for name in [n for n in registry.hooks if n.startswith("toma_")]:
            registry.remove_hook(name, recurse=False)


def apply(obj: Any, config: ToMAConfig | None = None, **options: Any) -> Any:
    """Patch ``obj`` (pipeline or model) in place with ``config`` (or ``ToMAConfig(**options)``)."""
    if config is None:
        config = ToMAConfig(**options)
    elif options:
        raise ToMATypeError("pass either a ToMAConfig or keyword options, not both")
    config = check_config_arg(config)
    model = _denoiser(obj)
    spec_for(model)  # refuse unsupported models before removing anything
    remove(obj)
    installed = install(model, config)
    setattr(model, _INSTALLED_ATTR, installed)
    if obj is not model:
        flux.follow_pipeline(obj, installed)  # a Flux pipeline tells each call's image grid
    return obj


def remove(obj: Any) -> Any:
    """Undo :func:`apply`; a no-op on an unpatched object."""
    model = _denoiser(obj)
    installed: Installed | None = model.__dict__.pop(_INSTALLED_ATTR, None)
    if installed is not None:
        installed.remove()
    return obj


def state(obj: Any) -> MergeContext:
    """The merge state of a patched pipeline or model (the cache context last run, or the default);
    for architectures run through the graph pass, the program of the last call (``.step``,
    ``.selections``, ``.sites``), None before the first call."""
    installed = getattr(_denoiser(obj), _INSTALLED_ATTR, None)
    if installed is None:
        raise ToMAError("this model is not patched: call toma_export.apply(model, config) first.")
    return installed.root.active


def reset(obj: Any) -> None:
    """Start a new generation: step 0, carried destinations dropped (pipelines do this after each call)."""
    installed = getattr(_denoiser(obj), _INSTALLED_ATTR, None)
    if installed is None:
        raise ToMAError("this model is not patched: call toma_export.apply(model, config) first.")
    installed.root.reset_state(installed.model)
