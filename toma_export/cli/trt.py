"""``toma-export compare-trt``: ONNX Runtime vs TensorRT on the same inputs.

    toma-export compare-trt MODEL.onnx [--reference REF.onnx] [--precision fp16] [--shape name:1x4x16x8 ...]
                                       [--atol 1e-3] [--rtol 1e-3] [--iterations 2] [--seed 0]

The comparison is :func:`toma_export.engines.trt_engine.compare.compare_onnxruntime_tensorrt`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from toma_export.vocabulary import PRECISIONS


def _parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    try:
        name, dims = text.rsplit(":", 1)
        return name, tuple(int(d) for d in dims.lower().split("x"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--shape wants NAME:D0xD1x..., got {text!r}") from e


def _run(args: argparse.Namespace) -> int:
    from toma_export.engines.trt_engine.compare import compare_onnxruntime_tensorrt

    shapes = dict(args.shape) if args.shape else None
    res = compare_onnxruntime_tensorrt(
        args.onnx,
        reference=args.reference,
        shapes=shapes,
        precision=args.precision,
        atol=args.atol,
        rtol=args.rtol,
        iterations=args.iterations,
        seed=args.seed,
    )
    for name in res.max_abs:
        print(f"{name}: max abs {res.max_abs[name]:.3e}  max rel {res.max_rel[name]:.3e}")
    print("PASSED" if res.passed else "FAILED")
    return 0 if res.passed else 1


def register(subparsers: Any) -> None:
    """Add ``compare-trt ONNX_PATH`` to the ``toma-export`` command line."""
    p = subparsers.add_parser(
        "compare-trt",
        help="compare ONNX Runtime and TensorRT outputs on random inputs (needs a GPU and TensorRT)",
        description="ONNX Runtime vs TensorRT on the same inputs, through polygraphy's Python API.",
    )
    p.add_argument("onnx", type=Path, metavar="ONNX_PATH", help="model to build the TensorRT engine from")
    p.add_argument("--reference", type=Path, default=None, help="model ONNX Runtime runs (default: ONNX_PATH)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="TensorRT engine precision (default: fp32)")
    p.add_argument("--shape", type=_parse_shape, action="append", help="NAME:D0xD1x... for a dynamic input")
    p.add_argument("--atol", type=float, default=1e-3, help="absolute tolerance per element (default: 1e-3)")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance per element (default: 1e-3)")
    p.add_argument("--iterations", type=int, default=1, help="random input sets compared (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    p.set_defaults(handler=_run)
