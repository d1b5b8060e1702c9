"""``toma-export inspect MODEL``: the merge sites the graph pass finds (:func:`toma_export.graph.inspect.inspect_model`)."""

from __future__ import annotations

import argparse
from typing import Any


def _run(args: argparse.Namespace) -> int:
    """Print the report; bad input prints the problem and the fix, not a traceback."""
    from toma_export.errors import ToMAError
    from toma_export.graph.inspect import inspect_model

    try:
        report = inspect_model(args.model, ratio=args.ratio, height=args.height, width=args.width)
    except (ToMAError, ValueError) as e:
        print(f"toma-export inspect: {e}")
        return 2
    print(report.format())
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``inspect`` subcommand to a CLI's subparsers; its handler is ``args.handler``."""
    p = subparsers.add_parser("inspect", help="list the merge sites the graph pass finds, their groups and FLOP share")
    p.add_argument("model", help="embedded model name (sdxl-tiny, flux-tiny, sd15-tiny, sdxl, flux) or a local diffusers folder")
    p.add_argument("--ratio", type=float, default=0.5, help="share of image tokens removed (default 0.5)")
    p.add_argument("--height", type=int, default=None, help="image height in pixels (default 256 for *-tiny, else 1024)")
    p.add_argument("--width", type=int, default=None, help="image width in pixels (default: the height)")
    p.set_defaults(handler=_run)
    return p
