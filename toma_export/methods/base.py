"""What a merging method supports, torch-free: whether it merges tokens (an eager merger), whether a
graph pass implements it, and what each compiled backend can or cannot build, with the reason shown
to the user. The mergers themselves are eager code (:mod:`toma_export.eager.mergers`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from toma_export.vocabulary import EngineBackend, Method


@dataclass(frozen=True)
class MergeMethod:
    """One method in the harness: its capabilities."""

    name: Method
    summary: str
    #: It merges tokens at a site and unmerges after (an eager merger, ``eager.mergers``); False for
    #: ToDo (keys/values only) and none.
    merges_tokens: bool = False
    #: ToDo-style: self-attention keys/values are downsampled, queries and outputs keep every token.
    keys_only: bool = False
    #: The graph pass (``toma_export.rewrite``) inserts this method; others export their eager patch.
    graph_pass: bool = False
    #: The key/value graph pass (``graph.kv_downsample``) implements it on architectures without an
    #: eager adapter (ToDo on FLUX.2, Qwen-Image, SD3.5, Wan, ...); UNets and Flux.1 keep their adapters.
    graph_kv: bool = False
    #: Its merger depends only on which tile a token is in and its slot there, never on where the
    #: token sits in the sequence, so a block may run it on tile-major tokens (``TileOrderHook``).
    tile_order: bool = False
    #: It keeps selected destinations per tile between steps, in persistent device buffers the host
    #: step reserves before the forward (``MergeContext.prepare``); others select nothing to carry.
    tile_destinations: bool = False
    #: On UNets it runs as its reference package's own patch (ToMeSD: the ``tomesd`` package).
    unet_package_patch: bool = False
    #: Why no backend can build it as a static graph (None: it can).
    not_static: str | None = None
    #: Backend -> why that backend cannot lower it exactly.
    backend_limits: Mapping[EngineBackend, str] = field(default_factory=dict)

    def refusal(self, backend: str) -> str | None:
        """Why ``backend`` (an engine backend) cannot build this method, or None."""
        return self.not_static or next((why for b, why in self.backend_limits.items() if b == backend), None)
