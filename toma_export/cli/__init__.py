"""``toma-export`` command line: one module per command group, each contributing ``register(subparsers)``.

- :mod:`toma_export.cli.demo`: ``demo``
- :mod:`toma_export.cli.inspect`: ``inspect``
- :mod:`toma_export.cli.engines`: ``build``, ``verify``, ``run``
- :mod:`toma_export.cli.bench`: ``bench``
- :mod:`toma_export.cli.trt`: ``compare-trt``

Only argument parsing and printing live here; the work is done by library functions. Building the
parser imports no torch, diffusers, ONNX or library module: each handler imports what it needs when
it runs, so ``toma-export --help`` answers at once (``tests/test_cli.py`` checks that torch stays
unimported).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from toma_export import __version__
from toma_export.cli import bench, demo, engines, inspect, serve, trt
from toma_export.errors import ToMAError
from toma_export.quiet import show_library_noise

__all__ = ["build_parser", "main"]

#: Command groups, in the order ``--help`` lists them.
_GROUPS = (demo, inspect, engines, bench, serve, trt)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toma-export",
        description="Token merge with attention (ToMA) for SDXL and Flux: eager patching, graph passes, engines.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                help="one of the commands below; COMMAND --help for its options")
    for group in _GROUPS:
        group.register(sub)
    for command in (parser, *sub.choices.values()):  # before or after COMMAND
        command.add_argument("--verbose", action="store_true",
                             default=False if command is parser else argparse.SUPPRESS,
                             help="show the third-party warnings hidden by default (toma_export/quiet.py lists them)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with show_library_noise(args.verbose):
            return int(args.handler(args) or 0)
    except ToMAError as err:
        print(f"toma-export: error: {err}", file=sys.stderr)
        return 2
