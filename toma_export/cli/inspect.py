"""``toma-export inspect MODEL|ARTIFACT``: the merge sites the graph pass finds
(:func:`toma_export.graph.inspect.inspect_model`), or what an artifact folder holds
(:func:`toma_export.engines.describe.format_artifact`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from toma_export.cli._choices import MODEL_HELP
from toma_export.cli.config_options import add_config_options, config_from_args


def _is_artifact(target: str) -> bool:
    return Path(target).is_dir() and (Path(target) / "manifest.json").exists()


def _run(args: argparse.Namespace) -> int:
    """Print the report; bad input raises a ToMAError (printed as the problem and the fix, exit 2)."""
    from toma_export.errors import ToMAConfigError

    if _is_artifact(args.model):
        from toma_export.engines.describe import format_artifact

        print(format_artifact(args.model))
        return 0
    from toma_export.engines.build import check_frames, check_image_size, pixel_multiple
    from toma_export.graph.inspect import inspect_model

    config = config_from_args(args)
    if args.height is not None or args.width is not None:
        fit = pixel_multiple(args.model)  # a side that passes, for the one not given: errors name the flag given
        check_image_size(args.model, fit if args.height is None else args.height, fit if args.width is None else args.width)
    check_frames(args.model, args.frames)  # before anything loads
    try:
        report = inspect_model(args.model, height=args.height, width=args.width, config=config, frames=args.frames)
    except ValueError as e:  # example_inputs: a size the model cannot take
        if isinstance(e, ToMAConfigError):
            raise
        raise ToMAConfigError(f"{e}; pick --height/--width the model accepts.") from None
    print(report.format())
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``inspect`` subcommand to a CLI's subparsers; its handler is ``args.handler``."""
    p = subparsers.add_parser(
        "inspect", help="list the merge sites the graph pass finds (a model), or what an artifact folder holds",
        description="MODEL: capture it, find and rewrite its merge sites under the ToMA configuration, print sites, "
        "groups and FLOP share. ARTIFACT (a folder with manifest.json): print its full config, backend, precision, "
        "shapes and variants (file hashes are checked by `verify`/`run`).")
    p.add_argument("model", metavar="MODEL|ARTIFACT",
                   help=MODEL_HELP + ", or an artifact folder")
    p.add_argument("--height", type=int, default=None, help="image height in pixels (default 256 for *-tiny, else 1024)")
    p.add_argument("--width", type=int, default=None, help="image width in pixels (default: the height)")
    p.add_argument("--frames", type=int, default=1,
                   help="pixel frames of the clip, for video models (Wan: 4k+1, e.g. 17; default: 1, an image)")
    add_config_options(p)
    p.set_defaults(handler=_run)
    return p
