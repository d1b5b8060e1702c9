"""Benchmarks and fidelity: interleaved timing of workloads x backends x methods x ratios.

``toma-export bench`` (:mod:`toma_export.cli.bench`) drives this package; scripts in
``scripts/`` are thin entry points over this package.
"""

from toma_export.bench.backends import BACKENDS, register_backend
from toma_export.bench.runner import Plan, add_derived, run_plan
from toma_export.bench.timing import interleaved_order, run_interleaved
from toma_export.bench.workloads import WORKLOADS, Options, get_workload

__all__ = [
    "BACKENDS",
    "WORKLOADS",
    "Options",
    "Plan",
    "add_derived",
    "get_workload",
    "interleaved_order",
    "register_backend",
    "run_interleaved",
    "run_plan",
]
