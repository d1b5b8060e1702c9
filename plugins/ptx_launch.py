"""Launch the committed AOT PTX (``plugins/ptx/``) through the CUDA driver, as TensorRT's AOT plugin would.

TensorRT cannot be installed here (its registry packages are placeholders that download from an
unreachable host), so this is the closest check of the engine's kernel: the very PTX the plugin
embeds, JIT-loaded by the driver (``cuModuleLoadData`` through CuPy), launched with the plugin's
parameters from the manifest (grid ``(tiles, 1, 1)``, block ``block_x``, dynamic shared memory
``shared_mem``, arguments ``(features, S, C, K, indices)``) on PyTorch's current stream.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

#: Where ``scripts/build_ptx.py --out plugins/ptx --arch 90`` writes the committed kernels.
PTX_DIR = Path(__file__).resolve().parent / "ptx"

_DTYPE = {torch.float32: "fp32", torch.float16: "fp16"}


def manifest(ptx_dir: Path = PTX_DIR) -> dict[str, Any]:
    """The committed manifest: Triton version, kernel source digest, one entry per PTX file."""
    return json.loads((ptx_dir / "manifest.json").read_text())


def entry_for(arch: int, dtype: torch.dtype, tile_tokens: int, ptx_dir: Path = PTX_DIR) -> dict[str, Any]:
    """The manifest entry for ``sm_{arch}``, ``dtype`` and a tile of ``tile_tokens`` tokens."""
    if dtype not in _DTYPE:
        raise ValueError(f"the AOT PTX exists for float32 and float16 features, not {dtype}")
    for e in manifest(ptx_dir)["kernels"]:
        if e["arch"] == arch and e["dtype"] == _DTYPE[dtype] and tile_tokens <= e["block_s"]:
            return e
    raise LookupError(f"no committed PTX for sm_{arch}, {_DTYPE[dtype]}, {tile_tokens}-token tiles in {ptx_dir}; "
                      f"run scripts/build_ptx.py --out {ptx_dir} --arch {arch} --dtype {_DTYPE[dtype]}")


def launch_committed_ptx(features: torch.Tensor, k: int, *, arch: int = 90, ptx_dir: Path = PTX_DIR) -> torch.Tensor:
    """Picks ``(..., k)`` int32 for tiles ``features (..., S, C)`` (CUDA, fp32/fp16) from the committed PTX.

    The output is poisoned with -1 before the launch, so an unwritten element shows.
    """
    import cupy  # the image's CuPy; imported here so that the module loads without it

    if features.device.type != "cuda":
        raise ValueError("the PTX launch needs CUDA tensors")
    *lead, s, c = features.shape
    x = features.reshape(-1, s, c).contiguous()
    e = entry_for(arch, x.dtype, s, ptx_dir)
    module = cupy.RawModule(path=str(ptx_dir / e["file"]))
    fn = module.get_function(e["kernel"])
    if e["shared_mem"] > 48 * 1024:
        fn.max_dynamic_shared_size_bytes = e["shared_mem"]
    out = torch.full((x.shape[0], k), -1, dtype=torch.int32, device=x.device)
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(x.device).cuda_stream)
    import numpy as np

    with stream:
        fn(
            (x.shape[0], 1, 1),
            (e["block_x"], 1, 1),
            (cupy.asarray(x), np.int32(s), np.int32(c), np.int32(k), cupy.asarray(out)),
            shared_mem=e["shared_mem"],
        )
    torch.cuda.synchronize(x.device)
    return out.reshape(*lead, k)
