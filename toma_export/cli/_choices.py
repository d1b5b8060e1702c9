"""Help texts of the parser, known without importing the library (method, precision, backend and
sub-layer names come from the torch-free :mod:`toma_export.vocabulary`).

The embedded model names live in ``toma_export.models.registry.EMBEDDED_MODELS`` (which imports torch),
so the ``MODEL`` help names a few of them and says where the full list is, rather than copying it;
``tests/test_video_frames.py`` checks that the names it gives exist.
"""

from __future__ import annotations

#: Embedded models the ``MODEL`` help names as examples (each must be in ``EMBEDDED_MODELS``).
MODEL_EXAMPLES: tuple[str, ...] = ("sdxl-tiny", "flux-tiny", "wan-tiny")
#: Help of a ``MODEL`` positional (build, inspect): what it may be.
MODEL_HELP = (
    f"an embedded model name (e.g. {', '.join(MODEL_EXAMPLES)}; README \"Embedded models\" lists them all, and "
    "an unknown name is refused with the full list), a local diffusers model or pipeline folder, or a Hugging Face "
    "Hub id ORG/NAME (loaded from the HF cache; offline when cached)"
)
