"""``apply`` / ``remove`` / ``reset`` / ``state``: eager ToMA on diffusers pipelines and models.

``apply`` registers diffusers hooks (no class is swapped, no forward copied), validates before
touching the model and rolls back on any failure, so a model is either fully patched or left as
it was. The step hook is stateful, so diffusers' own reset after each pipeline call starts the
next call at step 0 in every pipeline that shares the model.
"""

from __future__ import annotations

from typing import Any

import torch

from toma_export.config import ToMAConfig
from toma_export.eager import flux, unet
from toma_export.eager.graph_hook import HOOK_NAME as GRAPH_HOOK
from toma_export.eager.graph_hook import GraphPassHook
from toma_export.eager.hooks import Installed
from toma_export.eager.state import MergeContext
from toma_export.errors import ToMAError, ToMATypeError, UnsupportedModelError
from toma_export.input_rules import check_config_arg
from toma_export.models.registry import model_family

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
    if isinstance(obj, torch.nn.Module):
        return _uncompiled(obj)
    for attr in ("unet", "transformer"):
        inner = getattr(obj, attr, None)
        if isinstance(inner, torch.nn.Module):
            return _uncompiled(inner)
    raise UnsupportedModelError(
        f"cannot apply ToMA to a {type(obj).__name__}: pass a diffusers pipeline with .unet or .transformer, "
        "or the UNet2DConditionModel / FluxTransformer2DModel itself."
    )


def _eager_family(model: torch.nn.Module) -> str:
    """``"unet"`` / ``"flux"`` (hand-written hook adapters) or ``"transformer"`` (the graph pass behind a
    hook, :mod:`toma_export.eager.graph_hook`: accepted at its first call only where sites match).
    The Flux adapter is for ``FluxTransformer2DModel`` itself: look-alikes with the same attribute
    names (Chroma, ...) differ inside their blocks, so they take the graph pass, which matches structure."""
    family = model_family(model)
    if family == "flux":
        from diffusers import FluxTransformer2DModel

        if not isinstance(model, FluxTransformer2DModel):
            return "transformer"
    return family


def uses_graph_hook(model: torch.nn.Module) -> bool:
    """Whether eager ``apply`` runs ``model`` through the graph pass behind a hook (no hand-written
    adapter): then ``build`` also takes ToDo through the key/value graph pass, as eager does."""
    return _eager_family(model) == "transformer"


def install(model: torch.nn.Module, config: ToMAConfig, **options: Any) -> Installed:
    """Register the hooks for ``model``'s family; nothing stays registered when this raises."""
    family = _eager_family(model)
    try:
        if family == "unet":
            installed = unet.install(model, config, **options)
        elif family == "flux":
            installed = flux.install(model, config)
        else:
            if options:
                raise TypeError(f"options {sorted(options)} apply to UNets only")
            from toma_export.methods import get as get_method

            method = get_method(config.method)
            if config.active and not (method.graph_pass or method.graph_kv):
                raise UnsupportedModelError(
                    f"{type(model).__name__}: eager apply runs this architecture through the graph pass, which "
                    f"implements ToMA and ToDo only; {config.method!r} has eager adapters for UNets and Flux.1 "
                    "transformers."
                )
            hook = GraphPassHook(config)
            installed = Installed(model, hook)  # type: ignore[arg-type]  # its root has reset_state/active too
            installed.add(model, hook, GRAPH_HOOK)
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
    _eager_family(model)  # refuse unsupported models before removing anything
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
