"""Named ToMA variants shared by the block benchmark, the fidelity evaluation and the site
profiler, so a speed row and a fidelity row of one name are the same configuration.

- ``SUBLAYERS``: which sub-layers run on merged tokens (how the defaults were chosen).
- ``CUTS``: the overhead cuts, each beside the path before it: ``toma[per-site order]`` splits and
  joins at every merged sub-layer (the path before the tile-order cut), ``toma[tile order]`` keeps
  tile-major order through each block (the default), then shared merge weights and merged
  cross-attention on top of it.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from toma_export.bench.runner import Variant

SUBLAYERS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "toma[attn]": MappingProxyType(dict(merge_attn=True, merge_cross=False, merge_mlp=False)),
    "toma[attn+mlp]": MappingProxyType(dict(merge_attn=True, merge_cross=False, merge_mlp=True)),
    "toma[attn+cross+mlp]": MappingProxyType(dict(merge_attn=True, merge_cross=True, merge_mlp=True)),
})

CUTS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "toma[per-site order]": MappingProxyType(dict(keep_tile_order=False)),
    "toma[tile order]": MappingProxyType(dict(keep_tile_order=True)),
    "toma[tile order, shared weights]": MappingProxyType(dict(weights="group")),
    "toma[tile order, +cross]": MappingProxyType(dict(merge_cross=True)),
    "toma[tile order, +cross, shared weights]": MappingProxyType(dict(merge_cross=True, weights="group")),
})


def toma_variants(named: Mapping[str, Mapping[str, Any]], ratio: float) -> list[Variant]:
    """Bench rows of ToMA at ``ratio`` for each named configuration."""
    return [Variant("toma", ratio, tuple(cfg.items()), name) for name, cfg in named.items()]
