"""``toma-export`` command line: one subcommand per stage of the data flow.

Each stage module contributes ``register(subparsers)``; this file only assembles them, so a new
stage is one line in ``_STAGES``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from toma_export import __version__
from toma_export.errors import ToMAError

# Modules that each define ``register(subparsers)``; imported lazily when the parser is built.
_STAGES: tuple[str, ...] = (
    "toma_export.demo",
    "toma_export.graph.inspect",
    "toma_export.engines.commands",
    "toma_export.bench.cli",
    "toma_export.engines.tensorrt.compare",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toma-export",
        description="Token merge with attention (ToMA) for SDXL and Flux: eager patching, graph passes, engines.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _STAGES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ToMAError as err:
        print(f"toma-export: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
