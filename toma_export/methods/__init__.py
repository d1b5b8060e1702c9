"""Methods as a torch-free capability table, and the one route decision.

Each :class:`MergeMethod` says what the method supports (token merging, a graph pass, tile order) and
which backends cannot build it, with the reason. :func:`route` answers, for a model family, a config
and a backend, which path implements it (eager adapters, ToMA's graph pass, ToDo's key/value pass) or
why none does; eager ``apply``, ``build``, the bench backends and ``inspect`` ask it instead of
comparing method strings. The eager mergers are in :mod:`toma_export.eager.mergers`.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from toma_export.errors import ToMAConfigError
from toma_export.methods.base import MergeMethod
from toma_export.methods.route import Route, route
from toma_export.vocabulary import METHODS

_TABLE = (
    MergeMethod(
        name="toma",
        summary="token merge with attention (this project)",
        merges_tokens=True,
        graph_pass=True,
        tile_order=True,
        tile_destinations=True,
    ),
    MergeMethod(
        name="tomesd",
        summary="ToMeSD bipartite soft matching (the tomesd package on UNets)",
        merges_tokens=True,
        unet_package_patch=True,
        backend_limits={
            "onnxruntime": "ToMeSD's scatter_reduce(mean) has no exact lowering in the ONNX exporter "
            "(measured: outputs off by 0.26 max abs on sdxl-tiny); use --backend inductor for ToMeSD",
            "tensorrt": "ToMeSD's argsort/scatter_reduce have no exact ONNX lowering for TensorRT",
        },
    ),
    # ToDo: self-attention keys/values from a nearest-neighbour-downsampled token grid; queries and
    # outputs keep every token (no unmerge). UNets and Flux.1 run it through their eager adapters,
    # other transformers through the key/value graph pass.
    MergeMethod(name="todo", summary="ToDo key/value downsampling", keys_only=True, graph_kv=True),
    MergeMethod(
        name="catome",
        summary="CA-ToMe: bipartite matching above a similarity threshold, cached between scheduled steps",
        merges_tokens=True,
        not_static="CA-ToMe merges a data-dependent number of tokens (a threshold read back with .item()), "
        "so its shapes are not static: no compiled backend or fullgraph torch.compile can express it",
    ),
    MergeMethod(name="none", summary="no merging (the unmerged baseline)"),
)

#: Method name -> capabilities, in :data:`toma_export.vocabulary.METHODS` order.
REGISTRY: Mapping[str, MergeMethod] = MappingProxyType(
    {name: next(m for m in _TABLE if m.name == name) for name in METHODS}
)


def get(name: str) -> MergeMethod:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ToMAConfigError(f"method {name!r} is unknown; choose one of {', '.join(REGISTRY)}.") from None


__all__ = ["REGISTRY", "MergeMethod", "Route", "get", "route"]
