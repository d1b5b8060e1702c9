"""The method registry: one module per method, each declaring a :class:`MergeMethod`.

Everything that depends on the method (eager hooks, the graph pass, builds, bench backends) asks
:func:`get` instead of comparing strings.
"""

from __future__ import annotations

from toma_export.errors import ToMAConfigError
from toma_export.methods import bipartite, todo, toma
from toma_export.methods.base import MergeMethod, Merger

NONE = MergeMethod(name="none", summary="no merging (the unmerged baseline)")

REGISTRY: dict[str, MergeMethod] = {m.name: m for m in (toma.METHOD, bipartite.TOMESD, todo.METHOD, bipartite.CATOME, NONE)}


def get(name: str) -> MergeMethod:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ToMAConfigError(f"method {name!r} is unknown; choose one of {', '.join(REGISTRY)}.") from None


__all__ = ["REGISTRY", "MergeMethod", "Merger", "get"]
