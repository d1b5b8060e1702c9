"""``ToMAConfig``: one switch for ToMA and the baselines, validated before anything is patched.

``SubLayer`` (what runs on merged tokens) and the method names come from :mod:`toma_export.vocabulary`;
they are re-exported here for the modules that name them beside the config.
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from toma_export.errors import ToMAConfigError, ToMATypeError
from toma_export.vocabulary import METHODS, WEIGHT_SHARINGS, Method, SubLayer, WeightSharing

__all__ = ["METHODS", "Method", "SubLayer", "ToMAConfig", "WEIGHT_SHARINGS"]


def _is_bool(v: Any) -> bool:
    """``bool`` or ``numpy.bool_`` (numpy only when already imported: a config never imports it)."""
    np_bool = getattr(sys.modules.get("numpy"), "bool_", None)
    return isinstance(v, bool) or (np_bool is not None and isinstance(v, np_bool))


def _is_int(v: Any) -> bool:
    """A Python or numpy integer (``numbers.Integral``), not a bool."""
    return isinstance(v, numbers.Integral) and not _is_bool(v)


def _kind(v: Any) -> str:
    return type(v).__name__


def _wrong_type(name: str, value: Any, want: str, example: str) -> ToMATypeError:
    return ToMATypeError(f"{name}={value!r} is a {_kind(value)}, not {want}; use e.g. {name}={example}.")


#: Fields by the type they take, each with an example value for the error message.
_NUMBERS = (("ratio", "0.5"), ("temperature", "1000.0"), ("threshold", "0.8"))
_INTS = (("recompute_every", "5"), ("max_downsample", "4"), ("seed", "0"))
_BOOLS = ("merge_attn", "merge_cross", "merge_mlp", "keep_tile_order")


def _check_types(cfg: Any) -> None:
    """Every field of the right type (a wrong type is a :class:`ToMATypeError`, before any range check);
    numpy scalars become the plain Python numbers they stand for, so a config serialises as JSON."""
    for name, example in _NUMBERS:
        v = getattr(cfg, name)
        if isinstance(v, numbers.Real) and not _is_bool(v):
            object.__setattr__(cfg, name, float(v))
        else:
            raise _wrong_type(name, v, "a number", example)
    for name, example in _INTS:
        v = getattr(cfg, name)
        if v is None and name != "recompute_every":
            continue
        if _is_int(v):
            object.__setattr__(cfg, name, int(v))
        else:
            raise _wrong_type(name, v, "an int" + ("" if name == "recompute_every" else " or None"), example)
    for name in _BOOLS:
        v = getattr(cfg, name)
        if not _is_bool(v):
            raise _wrong_type(name, v, "True or False", "True")
        object.__setattr__(cfg, name, bool(v))
    for name, choices in (("method", METHODS), ("remainder", ("keep", "error")), ("weights", WEIGHT_SHARINGS)):
        v = getattr(cfg, name)
        if not isinstance(v, str):
            raise _wrong_type(name, v, f"a string (one of {', '.join(choices)})", repr(choices[0]))
    tile = cfg.tile
    if isinstance(tile, (list, tuple)) and len(tile) == 2 and all(_is_int(t) for t in tile):
        object.__setattr__(cfg, "tile", (int(tile[0]), int(tile[1])))
    else:
        raise ToMATypeError(f"tile={tile!r} must be two ints (rows, cols); use e.g. tile=(4, 4).")


@dataclass(frozen=True)
class ToMAConfig:
    """How tokens are merged.

    ratio: share of image tokens removed at merged sites, in [0, 1); 0 is the identity.
    method: "toma" (this project), or a baseline in the same harness: "tomesd" (bipartite soft
        matching, one destination per 2x2 window), "todo" (key/value downsampling, no unmerge),
        "catome" (bipartite matching with a similarity threshold and cached pairs), "none".
    tile: tokens per tile (rows, cols) for selection and merge; ToMA's reference is (4, 4).
    temperature: tau in ``softmax(tau * cos(D, X))``; 1000 is nearly hard assignment.
    merge_attn / merge_cross / merge_mlp: which sub-layers (``SubLayer``) run on merged tokens.
        Defaults by measurement (scripts/bench_block.py, SDXL block, ratio 0.5): attn only 1.47x,
        attn+mlp 1.95x, attn+cross+mlp 2.01x. Cross-attention (77 keys) adds ~3 % on the block and
        more on the full UNet with both levels (1.58x -> 1.74x), for one more approximation of the
        text conditioning, so it is off here and on in the ``fast`` preset; the MLP carries most of
        the saving.
    max_downsample: UNet levels merged, as the largest latent downsampling factor of a site;
        None = only the highest-resolution level that has attention (factor 2 on SDXL, 1 on SD1.5).
        Transformers (Flux) have one level and ignore it.
    recompute_every: destinations are selected on steps 0, n, 2n, ... of a generation and reused
        (indices only; merge weights follow each block's features) on the others.
    weights: where a site's merge weights come from (``WEIGHT_SHARINGS``). "site": its own features,
        every step. "group": the first site of its group (sites of one token layout) each step, reused
        by the later sites. "period": the group's first site on the selecting step, kept in a persistent
        device buffer and reused by every site until the next selection (no weight work on reuse steps).
        Fidelity and launches of each: BENCHMARKS.md ("Merge weights once per group and step"). The
        graph pass knows "site" and "group"; it computes "period" as "group" (weights every step).
    keep_tile_order: eager UNet blocks run ToMA on tile-major tokens, permuting once in and once out
        instead of splitting and joining at every merged sub-layer (the same result, fewer copies).
        False keeps the per-site splits; it exists to measure the cut (BENCHMARKS.md). The graph
        pass ignores it.
    remainder: grids that the tile does not divide: "keep" leaves the border unmerged, "error" refuses.
    threshold: CA-ToMe's cosine-similarity threshold (pairs below it are not merged).
    seed: seed for the random destination choice of ToMeSD (None = deterministic top-left).
    """

    ratio: float = 0.5
    method: Method = "toma"
    tile: tuple[int, int] = (4, 4)
    temperature: float = 1000.0
    merge_attn: bool = True
    merge_cross: bool = False
    merge_mlp: bool = True
    max_downsample: int | None = None
    recompute_every: int = 5
    weights: WeightSharing = "site"
    keep_tile_order: bool = True
    remainder: Literal["keep", "error"] = "keep"
    threshold: float = 0.8
    seed: int | None = None

    def __post_init__(self) -> None:
        _check_types(self)
        if not 0.0 <= self.ratio < 1.0:
            raise ToMAConfigError(
                f"ratio={self.ratio!r} is outside [0, 1). It is the share of tokens removed: "
                "use e.g. ratio=0.5 to halve the image tokens, or ratio=0 to disable merging."
            )
        if self.method not in METHODS:
            raise ToMAConfigError(f"method={self.method!r} is unknown; choose one of {', '.join(METHODS)}.")
        if not all(t >= 1 for t in self.tile):
            raise ToMAConfigError(f"tile={self.tile!r} must be two positive ints (rows, cols), e.g. tile=(4, 4).")
        if self.tile[0] * self.tile[1] < 2:
            raise ToMAConfigError(f"tile={self.tile!r} holds one token, so nothing can merge; use e.g. (4, 4).")
        if not math.isfinite(self.temperature) or not self.temperature > 0:
            raise ToMAConfigError(f"temperature={self.temperature!r} must be a finite number > 0 (reference: 1000).")
        if self.recompute_every < 1:
            raise ToMAConfigError(
                f"recompute_every={self.recompute_every!r} must be an int >= 1 (1 = reselect every step)."
            )
        if self.max_downsample is not None and self.max_downsample < 1:
            raise ToMAConfigError(f"max_downsample={self.max_downsample!r} must be an int >= 1, or None for auto.")
        if self.weights not in WEIGHT_SHARINGS:
            raise ToMAConfigError(f"weights={self.weights!r} is unknown; choose one of {', '.join(WEIGHT_SHARINGS)}.")
        if self.remainder not in ("keep", "error"):
            raise ToMAConfigError(f"remainder={self.remainder!r} must be 'keep' or 'error'.")
        if not -1.0 <= self.threshold <= 1.0:
            raise ToMAConfigError(f"threshold={self.threshold!r} is a cosine similarity; use a value in [-1, 1].")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ToMAConfigError(f"seed={self.seed!r} must be an int in [0, 2**63), or None.")

    @property
    def share_weights(self) -> bool:
        """Whether later sites of a group take the first site's merge weights ("group" or "period")."""
        return self.weights != "site"

    @property
    def active(self) -> bool:
        """False when the config merges nothing (ratio 0 or method "none")."""
        return self.method != "none" and self.ratio > 0

    def merges(self, sub: SubLayer) -> bool:
        """Whether ``sub`` runs on merged tokens under this config."""
        return bool(getattr(self, sub.switch))

    @property
    def sublayers(self) -> tuple[SubLayer, ...]:
        return tuple(s for s in SubLayer if self.merges(s))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tile"] = list(self.tile)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ToMAConfig:
        """From a manifest or config file; unknown keys are an error naming the known ones."""
        if not isinstance(d, dict):
            raise ToMAConfigError(f"a ToMA config must be a mapping of field -> value, got {type(d).__name__}.")
        known = {f.name for f in fields(cls)}
        if "share_weights" in d and "weights" not in d:  # configs written before ``weights``: a bool then
            share = d["share_weights"]
            if not _is_bool(share):
                raise _wrong_type("share_weights", share, "True or False", "True")
            d = {k: v for k, v in d.items() if k != "share_weights"} | {"weights": "group" if share else "site"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ToMAConfigError(f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
        return cls(**d)
