"""ToMeSD and CA-ToMe: bipartite soft matching per block (``baselines.bipartite``).

ToMeSD matches anew at every block and step. CA-ToMe keeps only links above a similarity
threshold (a data-dependent count) and reuses a block's matching between scheduled steps.
On UNets ToMeSD runs as the ``tomesd`` package's own patch (see ``eager.unet``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Hashable

import torch

from toma_export.baselines.bipartite import bipartite_match
from toma_export.methods.base import MergeMethod, Merger

if TYPE_CHECKING:
    from toma_export.eager.state import MergeContext


def _merger(ctx: MergeContext, block: Hashable, x: torch.Tensor, h: int, w: int, first: bool, cached: bool) -> Merger | None:
    cfg = ctx.config
    held = ctx.blocks.get(block)
    reuse = cached and not ctx.schedule.recompute_due and held is not None and held[1] == x.shape[0]
    if first and not reuse:
        generator = None
        if cfg.seed is not None:
            generator = torch.Generator(device=x.device).manual_seed(cfg.seed + ctx.step)
        threshold = cfg.threshold if cached else None
        match = bipartite_match(x, h, w, int(h * w * cfg.ratio), generator=generator, threshold=threshold)
        ctx.blocks[block] = (match, x.shape[0])
        if cached:
            ctx.schedule.selections += 1
    held = ctx.blocks.get(block)
    return None if held is None or held[0].r == 0 else held[0]


def tomesd_merger(ctx: MergeContext, block: Hashable, x: torch.Tensor, h: int, w: int, first: bool) -> Merger | None:
    return _merger(ctx, block, x, h, w, first, cached=False)


def catome_merger(ctx: MergeContext, block: Hashable, x: torch.Tensor, h: int, w: int, first: bool) -> Merger | None:
    return _merger(ctx, block, x, h, w, first, cached=True)


TOMESD = MergeMethod(
    name="tomesd",
    summary="ToMeSD bipartite soft matching (the tomesd package on UNets)",
    merger=tomesd_merger,
    backend_limits={
        "onnxruntime": "ToMeSD's scatter_reduce(mean) has no exact lowering in the ONNX exporter "
        "(measured: outputs off by 0.26 max abs on sdxl-tiny); use --backend inductor for ToMeSD",
        "tensorrt": "ToMeSD's argsort/scatter_reduce have no exact ONNX lowering for TensorRT",
    },
)

CATOME = MergeMethod(
    name="catome",
    summary="CA-ToMe: bipartite matching above a similarity threshold, cached between scheduled steps",
    merger=catome_merger,
    not_static="CA-ToMe merges a data-dependent number of tokens (a threshold read back with .item()), "
    "so its shapes are not static: no compiled backend or fullgraph torch.compile can express it",
)
