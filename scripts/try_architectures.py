"""Try the ToMA graph pass on current diffusers transformer classes (tiny random configs, CPU).

For each row of the trial table (``toma_export/models/trial_configs.py``: class, config and inputs as
data): build it, ``rewrite`` at ratio 0.5 and format its ``inspect`` report, and print the merged sites
by kind, the skipped ones, or the ``ToMAError`` reason; then eager ``apply``; with ``--build``, also
export the rewritten model to ONNX and run it on ONNX Runtime as ``toma-export build`` does, against the
rewritten program's output. Any other exception is a bug (printed as RAW). Usage:
``python scripts/try_architectures.py [--size 128] [--build] [--list] [NAME ...]``.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter
from typing import Any

import torch

import toma_export
from toma_export.errors import ToMAError
from toma_export.graph.inspect import report_for
from toma_export.models.trial_configs import TRIALS


def try_one(name: str, size: int, onnx: bool = False) -> str:
    cls = TRIALS[name].class_name
    try:
        torch.manual_seed(0)
        model, kw = TRIALS[name].build(size)
    except Exception as e:  # noqa: BLE001 - a class we could not build tiny is reported, not tried
        return f"{name:<16} {cls:<34} not constructed tiny: {type(e).__name__}: {str(e)[:120]}"
    try:
        program = toma_export.rewrite(model, kw, toma_export.ToMAConfig(ratio=0.5))
        with torch.no_grad():
            out = program(**kw)
        first = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
        while isinstance(first, (tuple, list)):  # per-sample lists (Z-Image)
            first = first[0]
        finite = bool(torch.isfinite(first).all())
        report_for(program, cls, size, size).format()  # what `toma-export inspect` prints
    except ToMAError as e:
        return f"{name:<16} {cls:<34} ToMAError: {str(e).splitlines()[0][:200]}"
    except Exception as e:  # noqa: BLE001 - the point of this script: any raw exception is a bug
        return f"{name:<16} {cls:<34} RAW {type(e).__name__}: {str(e)[:200]}"
    eager = _try_apply(model, kw)
    if onnx:
        eager += f"; build: {_try_build(model, kw, first)}"
    if not program.sites and not program.skipped:
        return (f"{name:<16} {cls:<34} no merge sites found (no norm -> linears -> SDPA / MLP region over an image "
                f"grid; runs unmerged) finite={finite}; apply: {eager}")
    merged = Counter(s.kind for s in program.sites)
    skipped = Counter(s.kind for s in program.skipped)
    reasons = sorted({s.reason.split(":")[0][:60] for s in program.skipped})
    grid = program.sites[0].grid if program.sites else (program.skipped[0].grid if program.skipped else None)
    return (f"{name:<16} {cls:<34} merged {dict(merged) or '{}'} skipped {dict(skipped) or '{}'} grid {grid} "
            f"finite={finite}; apply: {eager}" + (f" [{'; '.join(reasons)}]" if reasons else ""))


def _try_apply(model: torch.nn.Module, kw: dict[str, Any]) -> str:
    """Eager ``apply`` and one call: "merged" or the ToMAError's first words; RAW is a bug."""
    try:
        toma_export.apply(model, toma_export.ToMAConfig(ratio=0.5))
        try:
            with torch.no_grad():
                model(**kw)
            return "merged"
        finally:
            toma_export.remove(model)
    except ToMAError as e:
        return f"ToMAError ({str(e).splitlines()[0][:80]})"
    except Exception as e:  # noqa: BLE001 - any raw exception is a bug
        return f"RAW {type(e).__name__}: {str(e)[:120]}"


def _try_build(model: torch.nn.Module, kw: dict[str, Any], reference: torch.Tensor) -> str:
    """ONNX export and an ONNX Runtime call of the select variant (the bench's ``onnxruntime`` backend builds
    engines as ``toma-export build`` does): the max abs difference from the rewritten program, or the
    ToMAError's first words; RAW is a bug."""
    from toma_export.bench.backends import get_backend

    try:
        step = get_backend("onnxruntime")(model, toma_export.ToMAConfig(ratio=0.5), kw)
        with torch.no_grad():
            out = step(**kw)[0]
        while isinstance(out, (tuple, list)):
            out = out[0]
        return f"onnxruntime max|diff| {float((out.float() - reference.float()).abs().max()):.1e}"
    except ToMAError as e:
        return f"ToMAError ({str(e).splitlines()[0][:80]})"
    except Exception as e:  # noqa: BLE001 - any raw exception is a bug
        return f"RAW {type(e).__name__}: {str(e)[:120]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("names", nargs="*", metavar="NAME", help="trials to run (default: all; --list names them)")
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--build", action="store_true",
                    help="also export to ONNX and run on ONNX Runtime (slower: one export per class)")
    ap.add_argument("--list", action="store_true", help="print the trial names and classes, run nothing")
    args = ap.parse_args()
    if args.list:
        for name, trial in TRIALS.items():
            print(f"{name:<18} {trial.class_name}")
        return
    unknown = [n for n in args.names if n not in TRIALS]
    if unknown:
        ap.error(f"unknown trial {', '.join(unknown)}: pick names from --list")
    logging.getLogger("torch._subclasses.fake_tensor").setLevel(logging.CRITICAL)
    torch.set_num_threads(1)
    print(f"diffusers transformer classes through toma_export.rewrite and eager apply at ratio 0.5, "
          f"{args.size}x{args.size} px")
    for name in args.names or TRIALS:
        t = time.perf_counter()
        line = try_one(name, args.size, args.build)
        print(f"{line}  ({time.perf_counter() - t:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
