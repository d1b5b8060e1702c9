#!/usr/bin/env python
"""Benchmark workloads x backends x methods x ratios (same as ``toma-export bench``).

Example: python scripts/bench.py --workload sdxl-block --ratios 0.5 --json out/bench.json --plots out/plots
"""

import sys

from toma_export.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
