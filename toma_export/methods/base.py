"""What a merging method declares: its eager merger, whether the graph pass implements it, and
what each compiled backend can or cannot build, with the reason shown to the user."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Hashable, Mapping, Protocol

import torch

if TYPE_CHECKING:
    from toma_export.eager.state import MergeContext


class Merger(Protocol):
    """``merge(x) -> (B, M, C)``, ``unmerge(y) -> (B, N, C)``, ``positions() -> (B, M)`` grid index
    of each merged token (RoPE rows follow it)."""

    def merge(self, x: torch.Tensor) -> torch.Tensor: ...

    def unmerge(self, y: torch.Tensor) -> torch.Tensor: ...

    def positions(self) -> torch.Tensor: ...


#: ``(context, block key, features (B, h*w, C), h, w, first site of the block this step) -> merger``.
MergerFactory = Callable[["MergeContext", Hashable, torch.Tensor, int, int, bool], "Merger | None"]


@dataclass(frozen=True)
class MergeMethod:
    """One method in the harness."""

    name: str
    summary: str
    #: Eager token merger at a site; None for methods that do not merge tokens (ToDo, none).
    merger: MergerFactory | None = None
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
    #: Why no backend can build it as a static graph (None: it can).
    not_static: str | None = None
    #: Backend -> why that backend cannot lower it exactly.
    backend_limits: Mapping[str, str] = field(default_factory=dict)

    def refusal(self, backend: str) -> str | None:
        """Why ``backend`` cannot build this method, or None."""
        return self.not_static or self.backend_limits.get(backend)
