"""The selection kernel on a GPU: the Triton JIT kernel and the committed sm_90a PTX equal the torch reference.

Shapes are the real levels' tile batches (4x4 tiles): SDXL 64x64 grid with 640 channels and
32x32 with 1280, Flux 64x64 with 3072, at batch 1 and 2. Equality is exact per tile except where
fp32 summation order can decide a near-tie of the rule (:mod:`plugins.selection_check`). Without a
CUDA GPU these skip; the PTX's freshness against the kernel source is checked everywhere.
"""

from __future__ import annotations

import os

import pytest
import torch

from toma_export.core.selection import facility_location, tokens_kept

CUDA = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
needs_gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (and Triton not in interpreter mode)")

LEVELS = {"sdxl-64x64x640": ((64, 64), 640), "sdxl-32x32x1280": ((32, 32), 1280), "flux-64x64x3072": ((64, 64), 3072)}
K = tokens_kept(16, 0.5)


def test_committed_ptx_matches_kernel_source() -> None:
    """The committed PTX was built from today's kernel (rebuild: scripts/build_ptx.py --out plugins/ptx --arch 90)."""
    from plugins.ptx_launch import manifest
    from plugins.triton_selection import kernel_source_digest

    m = manifest()
    assert m["kernel_source_sha256"] == kernel_source_digest(), (
        "plugins/ptx is stale: run `python scripts/build_ptx.py --out plugins/ptx --arch 90 --dtype fp32 fp16`"
    )
    assert {(e["arch"], e["dtype"], e["target"]) for e in m["kernels"]} == {(90, "fp32", "sm_90a"), (90, "fp16", "sm_90a")}


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("level", list(LEVELS))
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_triton_kernel_equals_reference(level: str, batch: int, dtype: torch.dtype) -> None:
    from plugins.selection_check import check_picks, tile_features
    from plugins.triton_selection import facility_location_triton

    grid, channels = LEVELS[level]
    x = tile_features(batch, grid, channels, dtype=dtype, device="cuda", seed=batch * 7 + channels)
    ref = facility_location(x.float(), K)
    got = facility_location_triton(x, K)
    verdict = check_picks(x, got, ref)
    assert verdict.ok, verdict.as_dict()
    assert verdict.equal >= 0.99 * verdict.tiles, verdict.as_dict()


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("level", list(LEVELS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_committed_ptx_launch_equals_reference(level: str, dtype: torch.dtype) -> None:
    pytest.importorskip("cupy", reason="CuPy loads the PTX through the CUDA driver")
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the committed PTX targets sm_90a (H100/H200)")
    from plugins.ptx_launch import launch_committed_ptx
    from plugins.selection_check import check_picks, tile_features

    grid, channels = LEVELS[level]
    x = tile_features(2, grid, channels, dtype=dtype, device="cuda", seed=channels + 1)
    got = launch_committed_ptx(x, K)
    assert int(got.min()) >= 0, "the PTX left output elements unwritten"
    verdict = check_picks(x, got, facility_location(x.float(), K))
    assert verdict.ok, verdict.as_dict()


def test_check_picks_accepts_the_reference_and_rejects_other_picks() -> None:
    """The GPU tests' verdict can fail: shifted picks are not greedy picks."""
    from plugins.selection_check import check_picks, tile_features

    x = tile_features(1, (16, 16), 64, seed=3)
    ref = facility_location(x, K)
    assert check_picks(x, ref, ref).ok
    wrong = ref.flip(-1)  # the same destinations in the wrong order: the first pick is not the greedy's
    verdict = check_picks(x, wrong, ref)
    assert not verdict.ok and verdict.allowed < verdict.tiles
