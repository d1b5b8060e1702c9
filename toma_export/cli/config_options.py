"""The full ``ToMAConfig`` as command-line options, from one definition.

:data:`OPTIONS` maps every ``ToMAConfig`` field to the option that sets it (``merge_attn``,
``merge_cross`` and ``merge_mlp`` share ``--merge attn,mlp``). :func:`add_config_options` writes
them into a parser (plus ``--preset`` and ``--config FILE``); :func:`config_from_args` builds the
validated ``ToMAConfig``: ``ToMAConfig``'s defaults, then the preset, then the file, then the flags
given on the command line (each later one overrides).

Torch-free: ``toma_export.config`` imports the method registry (torch), so the parser is built from
this mirror of the field names and defaults; ``tests/test_cli_config.py`` checks it against
``dataclasses.fields(ToMAConfig)``, so a new field fails that test until it has an option here.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from toma_export.cli.argtypes import path_arg
from toma_export.presets import PRESETS, SUMMARY
from toma_export.vocabulary import METHODS, SUBLAYERS, WEIGHT_SHARINGS

__all__ = ["DEFAULTS", "OPTIONS", "add_config_options", "config_dict_from_args", "config_from_args",
           "load_config_file"]

#: ``ToMAConfig``'s fields and defaults, in field order (checked against the dataclass by a test).
DEFAULTS: dict[str, Any] = {
    "ratio": 0.5,
    "method": "toma",
    "tile": (4, 4),
    "temperature": 1000.0,
    "merge_attn": True,
    "merge_cross": False,
    "merge_mlp": True,
    "max_downsample": None,
    "recompute_every": 5,
    "weights": "site",
    "keep_tile_order": True,
    "remainder": "keep",
    "threshold": 0.8,
    "seed": None,
}

MERGE_FIELDS = ("merge_attn", "merge_cross", "merge_mlp")
MAX_CONFIG_BYTES = 1 << 20


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def parse_tile(text: str) -> tuple[int, int]:
    """``"2x2"`` -> (2, 2); ``"4"`` -> (4, 4)."""
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give ROWSxCOLS, e.g. 4x4 or 2x2") from None
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give two positive sides ROWSxCOLS, e.g. 4x4 or 2x2")
    return dims[0], dims[1]


def _max_downsample(text: str) -> int | None:
    if text.strip().lower() in ("auto", "none"):
        return None
    return _int(text)


def _merge(text: str) -> str:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [n for n in names if n not in SUBLAYERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"sub-layer(s) {unknown} unknown; choose from {','.join(SUBLAYERS)}, e.g. attn,mlp")
    if not names:
        raise argparse.ArgumentTypeError(
            f"{text!r} names no sub-layer, so nothing would be merged; give some of {','.join(SUBLAYERS)}, e.g. "
            "--merge attn,mlp (to run unmerged, use --ratio 0 or --method none)")
    return ",".join(names)


@dataclass(frozen=True)
class Option:
    """One command-line option and the ``ToMAConfig`` field(s) it sets."""

    flag: str
    fields: tuple[str, ...]
    help: str
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    boolean: bool = False


OPTIONS: tuple[Option, ...] = (
    Option("--ratio", ("ratio",), "share of image tokens merged away, in [0, 1) (default 0.5)", _float, metavar="R"),
    Option("--method", ("method",), "merging method (default toma)", choices=METHODS),
    Option("--tile", ("tile",), "tile of the token grid, ROWSxCOLS (default 4x4); must fit the merged grids",
           parse_tile, metavar="RxC"),
    Option("--temperature", ("temperature",), "merge softmax temperature tau, finite and > 0 (default 1000)",
           _float, metavar="TAU"),
    Option("--merge", MERGE_FIELDS, "sub-layers run on merged tokens, comma-separated of attn,cross,mlp "
           "(default attn,mlp)", _merge, metavar="LIST"),
    Option("--max-downsample", ("max_downsample",), "UNet levels merged: largest latent downsampling of a merged "
           "site, e.g. 4 = both SDXL attention levels (default auto: the highest-resolution attention level)",
           _max_downsample, metavar="N|auto"),
    Option("--recompute-every", ("recompute_every",), "denoising steps between destination selections, >= 1 "
           "(default 5)", _int, metavar="N"),
    Option("--weights", ("weights",), "merge weights per site every step (site), from the group's first site every "
           "step (group), or kept from the selecting step for the recompute period (period) (default site)",
           choices=WEIGHT_SHARINGS),
    Option("--keep-tile-order", ("keep_tile_order",), "eager UNet blocks run on tile-major tokens: one permutation "
           "per block instead of a split and join per merged sub-layer; the same result (default on)", boolean=True),
    Option("--remainder", ("remainder",), "grids the tile does not divide: keep the border unmerged, or error "
           "(default keep)", choices=("keep", "error")),
    Option("--threshold", ("threshold",), "CA-ToMe cosine-similarity threshold in [-1, 1] (default 0.8)",
           _float, metavar="T"),
    Option("--merge-seed", ("seed",), "seed of ToMeSD's random destination choice, in [0, 2**63) "
           "(default: deterministic)", _int, metavar="N"),
)


def _dest(option: Option) -> str:
    return "cfg_" + option.flag.lstrip("-").replace("-", "_")


def add_config_options(parser: argparse.ArgumentParser, *, exclude: tuple[str, ...] = ()) -> None:
    """Add ``--preset``, ``--config`` and one option per ``ToMAConfig`` field (but the ``exclude``d
    fields) in an argument group. Every option defaults to "not given", so the file and the preset
    keep the values the command line does not set."""
    group = parser.add_argument_group(
        "ToMA configuration", "ToMAConfig's defaults, overridden by --preset, then --config FILE, then these flags")
    group.add_argument("--preset", choices=tuple(PRESETS), default=None,
                       help="named configuration: " + "; ".join(f"{n}: {s}" for n, s in SUMMARY.items())
                       + " (BENCHMARKS.md, 'Presets')")
    group.add_argument("--config", type=path_arg("--config", "toma.toml"), default=None, metavar="FILE",
                       help="TOML or JSON file of ToMAConfig fields (e.g. ratio = 0.5, tile = [2, 2], "
                       "max_downsample = 4); flags given here override it")
    for option in OPTIONS:
        if all(f in exclude for f in option.fields):
            continue
        if option.boolean:
            group.add_argument(option.flag, dest=_dest(option), action=argparse.BooleanOptionalAction, default=None,
                               help=option.help)
        else:
            group.add_argument(option.flag, dest=_dest(option), type=option.type or str, choices=option.choices,
                               default=None, metavar=option.metavar, help=option.help)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML (``.toml``) or JSON file of ``ToMAConfig`` fields, as a dict (validated later by
    ``ToMAConfig.from_dict``). ``tile`` may be ``[2, 2]`` or ``"2x2"``; ``max_downsample`` ``"auto"``."""
    from toma_export.errors import ToMAConfigError

    path = Path(path)
    fix = "give a TOML or JSON file of ToMAConfig fields, e.g. ratio = 0.5 and max_downsample = 4"
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ToMAConfigError(f"--config {path}: cannot read it ({err.strerror or err}); {fix}.") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ToMAConfigError(f"--config {path} is larger than {MAX_CONFIG_BYTES} bytes; {fix}.")
    try:
        text = raw.decode("utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        elif path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            try:
                data = json.loads(text)
            except ValueError:
                import tomllib

                data = tomllib.loads(text)
    except ValueError as err:  # UnicodeDecodeError, JSONDecodeError, TOMLDecodeError
        raise ToMAConfigError(f"--config {path} is not valid TOML or JSON ({err}); {fix}.") from None
    if not isinstance(data, dict):
        raise ToMAConfigError(f"--config {path} holds a {type(data).__name__}, not a table of fields; {fix}.")
    if isinstance(data.get("tile"), str):
        try:
            data["tile"] = list(parse_tile(data["tile"]))
        except argparse.ArgumentTypeError as err:
            raise ToMAConfigError(f"--config {path}: tile {err}.") from None
    if isinstance(data.get("max_downsample"), str) and data["max_downsample"].lower() in ("auto", "none"):
        data["max_downsample"] = None
    from toma_export.config import ToMAConfig

    try:
        ToMAConfig.from_dict(data)  # the file's own fields, so the error names the file
    except ToMAConfigError as err:
        raise type(err)(f"--config {path}: {err}") from None
    return data


def config_dict_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The fields the preset, the file and the flags set (in that order of precedence, last wins)."""
    from toma_export.presets import preset

    out: dict[str, Any] = {}
    if getattr(args, "preset", None):
        out.update(preset(args.preset))
    if getattr(args, "config", None):
        out.update(load_config_file(args.config))
    for option in OPTIONS:
        value = getattr(args, _dest(option), None)
        if value is None:
            continue
        if option.fields == MERGE_FIELDS:
            chosen = set(value.split(",")) if value else set()
            out.update({f"merge_{name}": name in chosen for name in SUBLAYERS})
        elif option.fields == ("tile",):
            out["tile"] = list(value)
        else:
            out[option.fields[0]] = value
    return out


def config_from_args(args: argparse.Namespace, **overrides: Any) -> Any:
    """The validated ``ToMAConfig`` the arguments describe (``overrides`` win over everything)."""
    from toma_export.config import ToMAConfig

    return ToMAConfig.from_dict({**config_dict_from_args(args), **overrides})
