"""Named ``ToMAConfig`` presets (``--preset NAME`` on the command line), picked from measured points.

Torch-free on purpose: the command line reads this table to build its parser. Each preset is a
partial ``ToMAConfig`` (field -> value); the fields it does not name keep ``ToMAConfig``'s defaults.
The measured points behind them are in BENCHMARKS.md ("Presets"):

- ``quality``: ratio 0.25, self-attention + MLP, the default level (highest-resolution attention
  level only), merge weights once per group and step (``weights="group"``). SDXL block 1.31x,
  fidelity error 0.046 on real photos (the lowest ToMA point).
- ``balanced``: ratio 0.5, self-attention + MLP, the default level. SDXL block 1.94x; full SDXL
  UNet at 1024² 1.08x (only the 4096-token level merges).
- ``fast``: ratio 0.5, self-attention + cross-attention queries + MLP, both SDXL attention levels
  (``max_downsample=4``). Merged cross-attention lifts the full SDXL UNet's FLOP ceiling from 1.57x
  to 1.66x; measured beside self-attention + MLP in one run, 1.74x against 1.58x; against its own
  ideal 1.60-1.62x (two runs), and 1.75x eager / 1.46x under inductor in a third; fidelity error
  0.0729 against 0.0726 on real photos (BENCHMARKS.md, "Overhead cuts", "The `fast` preset on
  every backend").

Merge weights (``weights``, BENCHMARKS.md "Merge weights once per group and step"): each preset takes
the cheapest sharing whose fidelity error stays within ``balanced``'s with per-site weights (0.0783 on
the 5-step real-photo trajectory there) and that the graph pass computes as eager does. ``quality``
fits with ``group`` (0.0561; ``period`` fits too, 0.0594, but the graph pass has no kept weights, so
engines would differ from eager ToMA on reuse steps); ``balanced`` and ``fast`` keep ``site``:
``group`` costs them 1.7-1.9 % more error (0.0798, 0.0875), above ``balanced``'s, ``period`` 6 %.
For ``fast`` ``group`` would buy host time on the CPU's torch path only (1.13x unmerged per forward
against 1.42x; on CUDA weights and merge are one launch either way) and costs regional compilation
a variant per token count (6 graphs against 4): ``--weights group`` where the CPU is the target.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

__all__ = ["PRESETS", "preset"]

PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "quality": MappingProxyType({"ratio": 0.25, "merge_attn": True, "merge_cross": False, "merge_mlp": True,
                                 "max_downsample": None, "weights": "group"}),
    "balanced": MappingProxyType({"ratio": 0.5, "merge_attn": True, "merge_cross": False, "merge_mlp": True,
                                  "max_downsample": None}),
    "fast": MappingProxyType({"ratio": 0.5, "merge_attn": True, "merge_cross": True, "merge_mlp": True,
                              "max_downsample": 4}),
})

#: One line per preset for ``--help``.
SUMMARY: Mapping[str, str] = MappingProxyType({
    "quality": "ratio 0.25, attn+mlp, default level, group-shared weights (SDXL block 1.31x)",
    "balanced": "ratio 0.5, attn+mlp, default level (SDXL block 1.94x, full UNet 1.08x)",
    "fast": "ratio 0.5, attn+cross+mlp, all SDXL attention levels (full UNet 1.60-1.75x eager)",
})


def preset(name: str) -> dict[str, Any]:
    """The fields preset ``name`` sets; an unknown name is a ToMAConfigError naming the choices."""
    if name not in PRESETS:
        from toma_export.errors import ToMAConfigError

        raise ToMAConfigError(f"preset {name!r} is unknown; choose one of {', '.join(PRESETS)}.")
    return dict(PRESETS[name])
