"""``toma-export bench``: argument parsing and the handler (``scripts/bench.py`` runs :func:`main` standalone).

The harness itself is :mod:`toma_export.bench` (workloads, backends, runner, report, plots),
imported when the command runs. The registered workload and backend names are listed in
``--help`` by :class:`_RegistryHelpFormatter`, which imports the registries only when help is printed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from toma_export.cli.argtypes import int_in, path_arg
from toma_export.input_rules import MAX_BATCH, MAX_STEPS
from toma_export.cli.config_options import add_config_options, config_dict_from_args
from toma_export.vocabulary import METHODS


def _path(flag: str, example: str) -> Callable[[str], Path]:
    check = path_arg(flag, example)
    return lambda text: Path(check(text))


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ratios(text: str) -> list[float]:
    try:
        ratios = [float(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ratios {text!r}: give comma-separated numbers, e.g. 0.25,0.5,0.75") from None
    bad = [r for r in ratios if not 0.0 <= r < 1.0]
    if bad or not ratios:
        raise argparse.ArgumentTypeError(
            f"--ratios {text!r}: {bad or 'nothing'} outside [0, 1) (the share of tokens removed); use e.g. 0.25,0.5,0.75")
    return ratios


def _workload_names() -> str:
    from toma_export.bench.workloads import WORKLOADS

    return ", ".join(f"{n}{' (opt-in)' if w.opt_in else ''}" for n, w in WORKLOADS.items())


def _backend_names() -> str:
    from toma_export.bench.backends import BACKENDS

    return ", ".join(BACKENDS)


#: Option dest -> the registry names its help ends with.
_REGISTRY_HELP: dict[str, Callable[[], str]] = {"workloads": _workload_names, "backends": _backend_names}


class _RegistryHelpFormatter(argparse.HelpFormatter):
    """Appends the registered names to ``--workload`` / ``--backends`` help when help is printed."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        names = _REGISTRY_HELP.get(action.dest)
        return f"{text}: {names()}" if names is not None and text else text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workload", "--workloads", dest="workloads", default="sdxl-block",
                   help="comma-separated, or 'all' (every workload not marked opt-in)")
    p.add_argument("--methods", default="none,toma,tomesd,todo,catome", help=f"comma-separated of {', '.join(METHODS)}")
    p.add_argument("--ratios", type=_ratios, default=[0.25, 0.5, 0.75], help="comma-separated merge ratios")
    p.add_argument("--backends", default="eager", help="comma-separated backend names")
    p.add_argument("--repeats", type=int_in(1, 10001, "--repeats", "--repeats 10"), default=None, help="timed rounds (default: per workload)")
    p.add_argument("--warmup", type=int_in(0, 10001, "--warmup", "--warmup 2"), default=None, help="untimed rounds first (default: per workload)")
    p.add_argument("--json", type=_path("--json", "bench.json"), help="write {'meta', 'results': [rows]} here")
    p.add_argument("--markdown", type=_path("--markdown", "bench.md"), help="write the markdown tables here")
    p.add_argument("--plots", type=_path("--plots", "plots"), help="write latency / speed-up / memory PNGs into this folder")
    p.add_argument("--model", help="override the workload's model (embedded name or local diffusers folder)")
    p.add_argument("--height", type=int_in(1, 4097, "--height", "--height 1024"), help="override the image height in pixels")
    p.add_argument("--width", type=int_in(1, 4097, "--width", "--width 1024"), help="override the image width in pixels")
    p.add_argument("--steps", type=int_in(1, MAX_STEPS + 1, "--steps", "--steps 20"), help="denoising steps of the loop workloads, sdxl-loop and flux-loop (default: per workload)")
    p.add_argument("--batch", type=int_in(1, MAX_BATCH + 1, "--batch", "--batch 1"), default=1, help="batch of the model inputs (default: 1)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="model and input dtype (default: float32)")
    p.add_argument("--no-ideal", action="store_true", help="skip the ideal (no-merge-cost) rows")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probe")
    p.add_argument("--threads", type=int_in(1, 1025, "--threads", "--threads 8"), help="torch.set_num_threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_options(p, exclude=("ratio", "method"))  # --ratios / --methods sweep those


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """ToMAConfig fields the preset, --config file and flags set (applied to every method); ratio and
    method come from --ratios / --methods, so a preset's or file's ratio/method is not used here."""
    from toma_export.config import ToMAConfig

    cfg = {k: v for k, v in config_dict_from_args(args).items() if k not in ("ratio", "method")}
    ToMAConfig.from_dict(cfg)  # a bad value is a ToMAConfigError naming the fix, before anything runs
    return cfg


def handler(args: argparse.Namespace) -> int:
    """Run the benchmark the arguments describe; print the markdown report."""
    import torch

    from toma_export.bench.backends import BACKENDS
    from toma_export.bench.plots import bench_plots
    from toma_export.bench.report import markdown_report, write_atomic, write_json
    from toma_export.bench.runner import Plan, run_plan
    from toma_export.bench.workloads import WORKLOADS, Options

    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n, w in WORKLOADS.items() if not w.opt_in] if args.workloads == "all" else _csv(args.workloads)
    for bad, known, what in ((names, WORKLOADS, "workload"), (_csv(args.backends), BACKENDS, "backend"),
                             (_csv(args.methods), METHODS, "method")):
        missing = [b for b in bad if b not in known]
        if missing:
            raise SystemExit(f"unknown {what}(s) {missing}; choose from {', '.join(known)}")
    methods = _csv(args.methods)
    overrides = config_overrides(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    plan = Plan(
        workloads=names,
        methods=methods,
        ratios=args.ratios,
        backends=_csv(args.backends),
        repeats=args.repeats,
        warmup=args.warmup,
        ideal=not args.no_ideal,
        memory=not args.no_memory,
        options=Options(model=args.model, height=args.height, width=args.width, steps=args.steps,
                        batch=args.batch, dtype=getattr(torch, args.dtype), device=device,
                        config=overrides),
        config=overrides,
    )
    def save(result: dict[str, Any]) -> None:
        if args.json:
            write_json(args.json, result)
        if args.markdown:
            write_atomic(args.markdown, markdown_report(result))

    result = run_plan(plan, progress_bar=not args.quiet, on_backend=save)  # saved after each backend too
    print(markdown_report(result))
    save(result)
    if args.plots:
        for path in bench_plots(result, args.plots):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bench`` to a CLI's subparsers; the handler is set as ``handler``."""
    p = subparsers.add_parser("bench", help="benchmark workloads x backends x methods x ratios",
                              description="Benchmark ToMA against its peers: workloads x backends x methods x ratios, "
                              "timed interleaved.", formatter_class=_RegistryHelpFormatter)
    add_arguments(p)
    p.set_defaults(handler=handler)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/bench.py``: the ``bench`` command as a program of its own."""
    parser = argparse.ArgumentParser(prog="bench", description="Benchmark ToMA against its peers.",
                                     formatter_class=_RegistryHelpFormatter)
    add_arguments(parser)
    return handler(parser.parse_args(argv))
