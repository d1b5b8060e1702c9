"""Rules for values a user gives, shared by the command line, the Python API and the server.

One home per rule, so ``toma-export run --guidance-scale``, :func:`toma_export.engines.run.run_artifact`
and a served request's ``guidance_scale`` refuse the same values with the same words. Plain Python
(no torch, no numpy): the command line's parser and the server's request parser both import it.
Each check returns the value as the plain Python type it stands for, or raises a
:class:`~toma_export.errors.ToMAConfigError` (out of range) or :class:`~toma_export.errors.ToMATypeError`
(wrong type) naming the value, the rule and the fix.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from toma_export.errors import ToMAConfigError, ToMATypeError

#: Seeds are int64 generator seeds: [0, 2**63).
MAX_SEED = 2**63
#: Denoising steps ``run`` / ``verify`` take (the server has its own ``--max-steps``, at most this).
MAX_STEPS = 1000
#: Classifier-free / distilled guidance scales accepted, inclusive (SDXL's default is 5, Flux's 3.5).
MAX_GUIDANCE = 50.0
#: Longest prompt (and negative prompt) in UTF-8 bytes.
MAX_PROMPT_BYTES = 2048
#: Largest denoiser batch ``build`` accepts: engines and their example inputs grow with it, and a
#: served batch is cut into calls of at most the built batch (SDXL with guidance: 2 rows per image).
MAX_BATCH = 64


def _number(value: Any, what: str, example: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ToMATypeError(f"{what} {value!r} is a {type(value).__name__}, not a number; use e.g. {what} {example}.")
    return float(value)


def check_guidance(value: Any, what: str = "guidance_scale") -> float:
    """A guidance scale: a finite number in 0..MAX_GUIDANCE (the server's rule, the CLI's and the API's)."""
    g = _number(value, what, "5")
    if not (math.isfinite(g) and 0.0 <= g <= MAX_GUIDANCE):
        raise ToMAConfigError(
            f"{what} {g!r} is outside 0..{MAX_GUIDANCE:g} (a finite guidance scale; 1 or less turns "
            f"classifier-free guidance off); use e.g. {what} 5."
        )
    return g


def check_text(value: Any, what: str, *, max_bytes: int = MAX_PROMPT_BYTES, allow_empty: bool = True) -> str:
    """A prompt: ``str`` (or UTF-8 ``bytes``) that is valid UTF-8, at most ``max_bytes`` bytes of it.

    A command-line argument that is not valid UTF-8 reaches Python as lone surrogates
    (``surrogateescape``); it is refused here rather than failing inside a tokenizer.
    """
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ToMAConfigError(
                f"{what} is not valid UTF-8 ({err.reason} at byte {err.start}); send the text as UTF-8."
            ) from None
    elif isinstance(value, str):
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ToMAConfigError(
                f"{what} {value!r} is not valid UTF-8 (undecodable byte at character {err.start}); give the text "
                "in UTF-8 (check the terminal's locale, e.g. LANG=C.UTF-8)."
            ) from None
    else:
        raise ToMATypeError(f"{what} must be text (str), got a {type(value).__name__}.")
    if len(raw) > max_bytes:
        raise ToMAConfigError(f"{what} is {len(raw)} bytes of UTF-8; the limit is {max_bytes} bytes. Shorten it.")
    if not allow_empty and not raw.strip():
        raise ToMAConfigError(f"{what} is empty; give 1 to {max_bytes} bytes of UTF-8 text.")
    return value


def check_path(value: Any, what: str, example: str) -> str:
    """A path the user names (``--out``, a config file, an artifact): non-empty, no NUL byte."""
    if not isinstance(value, str):
        raise ToMATypeError(f"{what} must be a path (str), got a {type(value).__name__}.")
    if not value.strip():
        raise ToMAConfigError(f"{what} {value!r} is empty; name a path, e.g. {what} {example}.")
    if "\x00" in value:
        raise ToMAConfigError(f"{what} {value!r} holds a NUL byte, which no path can; e.g. {what} {example}.")
    return value


def check_config_arg(config: Any) -> Any:
    """The ``config`` argument of the Python API (``apply``, ``rewrite``): a ``ToMAConfig`` (None: the
    defaults); a dict or anything else is a :class:`ToMATypeError` naming the conversion."""
    from toma_export.config import ToMAConfig

    if config is None:
        return ToMAConfig()
    if isinstance(config, ToMAConfig):
        return config
    if isinstance(config, dict):
        keys = ", ".join(map(str, list(config)[:4])) + (", ..." if len(config) > 4 else "")
        raise ToMATypeError(
            f"config is a dict ({keys or 'empty'}), not a ToMAConfig; pass ToMAConfig(**d) (or "
            "ToMAConfig.from_dict(d), which names unknown keys) for a dict d."
        )
    raise ToMATypeError(f"config is a {type(config).__name__}, not a ToMAConfig; pass e.g. ToMAConfig(ratio=0.5).")
