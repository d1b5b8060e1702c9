"""The names every layer shares, torch-free: methods, precisions, engine backends, sub-layers, and
``verify``'s tolerance per precision.

One home for each list, so the command line builds its parser from it without importing torch
(``tests/test_vocabulary.py`` checks that importing this module loads no torch), and the library's
tables (the method capabilities, the dtype map in :mod:`toma_export.dtypes`) are keyed by these
``Literal`` types, which mypy checks.
"""

from __future__ import annotations

from enum import Enum
from typing import Final, Literal, get_args

from toma_export.errors import ToMAConfigError

#: Merging methods: ToMA, and the baselines in the same harness (``toma_export.methods`` says what each supports).
Method = Literal["toma", "tomesd", "todo", "catome", "none"]
METHODS: Final[tuple[Method, ...]] = get_args(Method)

#: Where a ToMA site's merge weights come from: its own features every step (``site``), the first site
#: of its group every step (``group``), or the group's first site on the selecting step, kept in a
#: persistent device buffer for the whole recompute period (``period``).
WeightSharing = Literal["site", "group", "period"]
WEIGHT_SHARINGS: Final[tuple[WeightSharing, ...]] = get_args(WeightSharing)

#: Artifact precisions (``build --dtype``, manifest ``extra.precision``); torch dtypes: :mod:`toma_export.dtypes`.
Precision = Literal["fp32", "fp16", "bf16"]
PRECISIONS: Final[tuple[Precision, ...]] = get_args(Precision)

#: ``verify``'s default max abs error of the engine against eager ToMA in the artifact's dtype, per precision
#: (``toma-export verify --tol`` overrides). fp32: the engine contract. fp16 / bf16: the engine and
#: eager round differently (ONNX Runtime's CPU provider computes some fp16 ops in fp32; bf16 graphs
#: compute every op in fp32 between bf16 casts, see onnx_export.bf16_compute_in_fp32), and the UNet
#: compounds that over its depth. Measured max abs over 3 steps at 128x128, batch 1 (tests/test_precision.py;
#: outputs ~1.6 max abs): sdxl-tiny fp16 3.4e-3, bf16 3.9e-2; flux-tiny bf16 2.3e-2. The bounds leave
#: >= 2.5x headroom and stay below the engine-vs-unmerged distance (0.11 to 0.24), so ToMA is still told apart.
VERIFY_TOLERANCES: Final[dict[Precision, float]] = {"fp32": 1e-3, "fp16": 2e-2, "bf16": 1e-1}

#: Backends an artifact can be built for (``toma-export build --backend``).
EngineBackend = Literal["onnxruntime", "inductor", "tensorrt", "torch-tensorrt"]
ENGINE_BACKENDS: Final[tuple[EngineBackend, ...]] = get_args(EngineBackend)

#: How ONNX artifacts select destinations: standard ops (ONNX Runtime) or one plugin node (TensorRT).
Selection = Literal["unrolled", "plugin"]
SELECTIONS: Final[tuple[Selection, ...]] = get_args(Selection)


class SubLayer(str, Enum):
    """A sub-layer whose input tokens can be merged: config switches (``merge_attn`` ...), eager hooks,
    graph-pass site kinds, bench rows and the CLI (``--merge attn,mlp``) all name sub-layers with it."""

    ATTN = "attn"  # self-attention (queries, keys and values)
    CROSS = "cross"  # cross-attention queries (keys/values are text)
    MLP = "mlp"  # the feed-forward

    @property
    def switch(self) -> str:
        """The ``ToMAConfig`` field that turns it on."""
        return f"merge_{self.value}"

    @classmethod
    def parse(cls, text: str) -> tuple[SubLayer, ...]:
        """``"attn,mlp"`` -> (ATTN, MLP); an unknown name is a ToMAConfigError naming the choices."""
        out = []
        for part in (p.strip() for p in text.split(",") if p.strip()):
            try:
                out.append(cls(part))
            except ValueError:
                raise ToMAConfigError(
                    f"sub-layer {part!r} is unknown; choose from {', '.join(s.value for s in cls)} (e.g. attn,mlp)."
                ) from None
        return tuple(out)


#: Sub-layer names, in :class:`SubLayer` order.
SUBLAYERS: Final[tuple[str, ...]] = tuple(s.value for s in SubLayer)
