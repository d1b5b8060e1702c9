#!/usr/bin/env python
"""Compile the Triton selection kernel to PTX for sm_80 / sm_89 / sm_90 without a GPU.

    python scripts/build_ptx.py [--out build/ptx] [--arch 80 89 90] [--dtype fp32 fp16] [--tile 16 64]

Writes one ``.ptx`` per (arch, dtype, tile block) plus ``manifest.json`` (kernel name, launch block,
shared memory, PTX ``.target``) into ``--out`` (default ``build/ptx``, ignored by git). Each PTX is
also assembled with Triton's bundled ptxas as a check. Run it without ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Compile the Triton selection kernel to PTX (no GPU needed).")
    p.add_argument("--out", type=Path, default=ROOT / "build" / "ptx")
    p.add_argument("--arch", type=int, nargs="+", default=[80, 89, 90], help="compute capabilities")
    p.add_argument("--dtype", nargs="+", default=["fp32", "fp16"], choices=["fp32", "fp16", "bf16"])
    p.add_argument("--tile", type=int, nargs="+", default=[16], help="tokens per tile (sets BLOCK_S)")
    p.add_argument("--no-check", action="store_true", help="skip assembling each PTX with ptxas")
    args = p.parse_args(argv)

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        p.error("unset TRITON_INTERPRET: PTX needs Triton's compiler, not its interpreter")

    from plugins.triton_selection import build_ptx

    entries = build_ptx(args.out, archs=args.arch, dtypes=args.dtype, tile_sizes=args.tile, check=not args.no_check)
    for e in entries:
        print(f"{args.out / e['file']}  {e['target']}  {e['bytes']} bytes  kernel={e['kernel']} smem={e['shared_mem']}")
    print(f"{args.out / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
