"""``ToMAConfig``: one switch for ToMA and the baselines, validated before anything is patched."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from toma_export.errors import ToMAConfigError

Method = Literal["toma", "tomesd", "todo", "catome", "none"]
METHODS: tuple[str, ...] = ("toma", "tomesd", "todo", "catome", "none")


@dataclass(frozen=True)
class ToMAConfig:
    """How tokens are merged.

    ratio: share of image tokens removed at merged sites, in [0, 1); 0 is the identity.
    method: "toma" (this project), or a baseline in the same harness: "tomesd" (bipartite soft
        matching, one destination per 2x2 window), "todo" (key/value downsampling, no unmerge),
        "catome" (bipartite matching with a similarity threshold and cached pairs), "none".
    tile: tokens per tile (rows, cols) for selection and merge; ToMA's reference is (4, 4).
    temperature: tau in ``softmax(tau * cos(D, X))``; 1000 is nearly hard assignment.
    merge_attn / merge_cross / merge_mlp: which sub-layers run on merged tokens. Defaults by
        measurement (scripts/bench_block.py, SDXL block, ratio 0.5): attn only 1.47x, attn+mlp
        1.95x, attn+cross+mlp 2.01x. Cross-attention (77 keys) adds ~3 % speed for one more
        approximation of the text conditioning, so it is off; the MLP carries most of the saving.
    max_downsample: UNet levels merged, as the largest latent downsampling factor of a site;
        None = only the highest-resolution level that has attention (factor 2 on SDXL, 1 on SD1.5).
        Transformers (Flux) have one level and ignore it.
    recompute_every: destinations are selected on steps 0, n, 2n, ... of a generation and reused
        (indices only; merge weights follow each block's features) on the others.
    share_weights: also reuse the group's first-site merge weights in every later site.
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
    share_weights: bool = False
    remainder: Literal["keep", "error"] = "keep"
    threshold: float = 0.8
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if isinstance(self.tile, list):
            object.__setattr__(self, "tile", tuple(self.tile))
        if not isinstance(self.ratio, (int, float)) or not 0.0 <= float(self.ratio) < 1.0:
            raise ToMAConfigError(
                f"ratio={self.ratio!r} is outside [0, 1). It is the share of tokens removed: "
                "use e.g. ratio=0.5 to halve the image tokens, or ratio=0 to disable merging."
            )
        if self.method not in METHODS:
            raise ToMAConfigError(f"method={self.method!r} is unknown; choose one of {', '.join(METHODS)}.")
        if len(self.tile) != 2 or any(not isinstance(t, int) or t < 1 for t in self.tile):
            raise ToMAConfigError(f"tile={self.tile!r} must be two positive ints (rows, cols), e.g. tile=(4, 4).")
        if self.tile[0] * self.tile[1] < 2:
            raise ToMAConfigError(f"tile={self.tile!r} holds one token, so nothing can merge; use e.g. (4, 4).")
        if not self.temperature > 0:
            raise ToMAConfigError(f"temperature={self.temperature!r} must be > 0 (reference: 1000).")
        if not isinstance(self.recompute_every, int) or self.recompute_every < 1:
            raise ToMAConfigError(
                f"recompute_every={self.recompute_every!r} must be an int >= 1 (1 = reselect every step)."
            )
        if self.max_downsample is not None and self.max_downsample < 1:
            raise ToMAConfigError(f"max_downsample={self.max_downsample!r} must be >= 1, or None for auto.")
        if self.remainder not in ("keep", "error"):
            raise ToMAConfigError(f"remainder={self.remainder!r} must be 'keep' or 'error'.")
        if not -1.0 <= self.threshold <= 1.0:
            raise ToMAConfigError(f"threshold={self.threshold!r} is a cosine similarity; use a value in [-1, 1].")

    @property
    def active(self) -> bool:
        """False when the config merges nothing (ratio 0 or method "none")."""
        return self.method != "none" and self.ratio > 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tile"] = list(self.tile)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ToMAConfig:
        return cls(**d)
