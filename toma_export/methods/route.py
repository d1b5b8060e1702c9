"""The one route decision: which path implements a config's method on a model family and backend.

- ``UNMERGED``: the config merges nothing (ratio 0 or method none).
- ``ADAPTER``: the hand-written eager hook adapters (UNets, Flux.1); engines export the eager-patched
  model as one *single* variant.
- ``GRAPH_PASS``: ToMA's graph pass (``toma_export.rewrite``): eager behind ``GraphPassHook`` on models
  without an adapter, select/reuse variants on every engine backend.
- ``KV_PASS``: ToDo's key/value graph pass (``graph.kv_downsample``) on models without an adapter.

Anything else is refused with the reason: a backend that cannot lower the method
(:meth:`MergeMethod.refusal`), or a model without an adapter for a method no graph pass implements.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Protocol

from toma_export.errors import ToMAConfigError, UnsupportedModelError

if TYPE_CHECKING:
    from toma_export.config import ToMAConfig

#: The backend name of eager ``apply`` (hooks on the model itself).
EAGER = "eager"


class Route(str, Enum):
    UNMERGED = "unmerged"
    ADAPTER = "adapter"
    GRAPH_PASS = "graph-pass"
    KV_PASS = "kv-pass"


class HasAdapter(Protocol):
    """A model spec (:class:`toma_export.models.spec.ModelSpec`): which eager adapter applies, if any."""

    @property
    def adapter(self) -> str | None: ...


#: Families with a hand-written eager adapter (``eager/unet.py``, ``eager/flux.py``).
ADAPTER_FAMILIES = ("unet", "flux")


def check_backend(config: ToMAConfig, backend: str) -> None:
    """Refuse a method ``backend`` cannot build (before anything is loaded); eager takes every method."""
    from toma_export.methods import get

    reason = get(config.method).refusal(backend) if config.active and backend != EAGER else None
    if reason:
        raise ToMAConfigError(f"--method {config.method} with --backend {backend} cannot be built: {reason}.")


def graph_route(config: ToMAConfig) -> Route:
    """Which graph pass implements ``config`` (what ``toma_export.rewrite`` runs): the key/value pass for
    keys-only methods, ToMA's pass otherwise (unmerged configs run the captured graph as it is)."""
    from toma_export.methods import get

    if not config.active:
        return Route.UNMERGED
    return Route.KV_PASS if get(config.method).graph_kv else Route.GRAPH_PASS


def route(spec: HasAdapter | str, config: ToMAConfig, backend: str = EAGER, *, name: str = "this model") -> Route:
    """The path that implements ``config`` on a model of ``spec`` (a ``ModelSpec``, or a family name:
    ``"unet"``/``"flux"`` have adapters, any other does not) run on ``backend`` (``"eager"``, an engine
    backend, or a bench backend). Raises :class:`ToMAConfigError` for a backend that cannot build the
    method and :class:`UnsupportedModelError` (naming ``name``) for a model no path takes it on."""
    from toma_export.methods import get

    check_backend(config, backend)
    if not config.active:
        return Route.UNMERGED
    method = get(config.method)
    adapter = (spec if spec in ADAPTER_FAMILIES else None) if isinstance(spec, str) else spec.adapter
    if adapter is not None and not (method.graph_pass and backend != EAGER):
        return Route.ADAPTER
    if method.graph_pass or method.graph_kv:
        return graph_route(config)
    raise UnsupportedModelError(
        f"{name}: eager apply runs this architecture through the graph pass, which implements ToMA and ToDo only; "
        f"{config.method!r} has eager adapters for UNets and Flux.1 transformers."
    )


__all__ = ["ADAPTER_FAMILIES", "EAGER", "HasAdapter", "Route", "check_backend", "graph_route", "route"]
