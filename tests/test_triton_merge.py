"""The fused Triton merge/unmerge kernels equal the torch path (``core/merge.py``), and each is one op.

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, set here before
Triton is first imported when possible, otherwise the kernel checks re-run in a child process), on
small channel counts but real tile structure: 4x4 tiles, grids with border tokens, tile-major and
row-major token order, video frames. With a GPU they run compiled, and the ``gpu``-marked tests
check real SDXL / Flux site sizes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

_CUDA = torch.cuda.is_available()
if not _CUDA and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"

from interpreter import assert_passes_in_interpreter_child, in_child  # noqa: E402
from reference import merge_float64  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

import toma_export.core.merge as core_merge  # noqa: E402
from plugins.triton_merge import (  # noqa: E402
    block_sizes,
    merge_kernel,
    merge_span_triton,
    merge_triton,
    unmerge_span_triton,
    unmerge_triton,
)
from toma_export import ops  # noqa: E402
from toma_export.bench.kernel_launches import SITES as SITE_SIZES  # noqa: E402
from toma_export.bench.kernel_launches import Site, forward_launches, kernel_path_on_meta, site_launches  # noqa: E402
from toma_export.core.merge import MergeMap  # noqa: E402
from toma_export.core.selection import facility_location, tokens_kept  # noqa: E402
from toma_export.core.tiles import TileLayout  # noqa: E402

INTERPRETED = not isinstance(merge_kernel, JITFunction)
DEVICE = "cuda" if _CUDA else "cpu"
RUNNABLE = _CUDA or INTERPRETED
GPU = _CUDA and not INTERPRETED

needs_kernel = pytest.mark.skipif(
    not RUNNABLE,
    reason="Triton was imported before this module could enable TRITON_INTERPRET; "
    "test_kernel_suite_in_interpreter_child runs these checks in a child process",
)
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU (and Triton not in interpreter mode)")

#: (atol, rtol) per dtype: the kernel keeps M = A / rowsum(A) in fp32 where the torch path rounds it,
#: and fp32 noise in the cosine is scaled by the temperature (1000) before the softmax.
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (4e-3, 4e-3), torch.bfloat16: (3e-2, 2e-2)}

#: Site shapes: grid (h, w), frames, token order, channels, kept fraction, temperature (4x4 tiles
#: unless a tile follows).
SITES: dict[str, tuple] = {
    # SDXL: a 4x4-tiled level in the block's tile-major order; 18x20 leaves right columns and bottom rows.
    "sdxl-18x20-tile-major": ((18, 20), 1, True, 40, 0.5, 1000.0),
    "sdxl-10x9-row-major": ((10, 9), 1, False, 24, 0.5, 1000.0),
    # Flux: row-major image tokens, softer temperature so every weight matters.
    "flux-12x16": ((12, 16), 1, False, 48, 0.25, 20.0),
    # Video grid: 2 frames of 10x9, each frame with its own border.
    "video-2x10x9": ((20, 9), 2, False, 16, 0.5, 50.0),
    # A 3x2 tile: 6 slots and 3 destinations padded to the kernels' 16-wide blocks.
    "tile-3x2-11x7": ((11, 7), 1, False, 20, 0.5, 30.0, (3, 2)),
}


def _case(site: str, batch: int, dtype: torch.dtype, seed: int = 0) -> tuple[TileLayout, torch.Tensor, torch.Tensor, float]:
    (h, w), frames, tile_major, c, keep, tau, *tile = SITES[site]
    layout = TileLayout.create(h, w, tile[0] if tile else (4, 4), "keep", frames=frames, tile_major=tile_major)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, h * w, c, generator=gen).to(dtype)
    idx = facility_location(layout.split(x)[0].float(), tokens_kept(layout.tile_size, keep))
    return layout, x, idx, tau


def _close(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got.cpu(), ref, atol=atol, rtol=rtol)


def _as_accurate(got: torch.Tensor, ref: torch.Tensor, exact: torch.Tensor) -> None:
    """On average ``got`` (kernel) is about as close to ``exact`` (float64) as ``ref`` (torch path) is, or closer."""
    err_kernel = (got.double().cpu() - exact.cpu()).abs().mean().item()
    err_torch = (ref.double().cpu() - exact.cpu()).abs().mean().item()
    assert err_kernel <= 1.5 * err_torch + 1e-7, (err_kernel, err_torch)


@needs_kernel
@pytest.mark.parametrize("site", list(SITES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kernels_equal_torch_path(site: str, dtype: torch.dtype) -> None:
    batch = 2 if dtype is torch.float32 else 1  # batch 1 and 2 both run; the interpreter pays per program
    layout, x, idx, tau = _case(site, batch, dtype)
    ref = MergeMap.build(layout, x, idx, tau)  # CPU tensors: the torch path
    ref_merged = ref.merge(x)
    merged, weights = merge_triton(x.to(DEVICE), layout, idx=idx.to(DEVICE), temperature=tau)
    assert merged.dtype == weights.dtype == dtype
    assert merged.shape == ref_merged.shape and weights.shape == ref.weights.shape
    _close(weights, ref.weights, dtype)
    b, t, k, s = weights.shape  # every token is a convex mix of its tile's destinations
    torch.testing.assert_close(weights.float().sum(2).cpu(), torch.ones(b, t, s), atol=2 * k * TOL[dtype][0], rtol=0)
    _close(merged, ref_merged, dtype)
    exact_merged, exact_w = merge_float64(layout, x, idx, tau)
    _as_accurate(weights, ref.weights, exact_w)
    _as_accurate(merged, ref_merged, exact_merged)
    cut = layout.num_tiles * idx.shape[-1]
    assert torch.equal(merged[:, cut:].cpu(), layout.split(x)[1]), "border tokens are carried through unchanged"

    again, same = merge_triton(x.to(DEVICE), layout, weights=ref.weights.to(DEVICE))  # another site's weights
    assert same.data_ptr() == ref.weights.to(DEVICE).data_ptr() or torch.equal(same.cpu(), ref.weights)
    _close(again, ref_merged, dtype)

    gen = torch.Generator().manual_seed(1)
    y = torch.randn(ref_merged.shape, generator=gen).to(dtype)
    residual = torch.randn(x.shape, generator=gen).to(dtype)
    out = unmerge_triton(y.to(DEVICE), ref.weights.to(DEVICE), layout)
    _close(out, ref.unmerge(y), dtype)
    rest = layout.split(out.cpu())[1]
    assert torch.equal(rest, y[:, cut:]), "border tokens are copied back unchanged"
    fused = unmerge_triton(y.to(DEVICE), ref.weights.to(DEVICE), layout, residual=residual.to(DEVICE))
    _close(fused, ref.unmerge(y) + residual, dtype)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_ops_span_kernels_equal_torch_path(dtype: torch.dtype) -> None:
    """The graph pass's ops on CUDA: weights only, merge and unmerge of the image span of a longer
    sequence (text tokens before it, others after), read and written in place, the rest copied."""
    layout, img, idx, tau = _case("flux-12x16", 2, dtype)
    gen = torch.Generator().manual_seed(2)
    head, tail = 5, 3
    x = torch.cat([torch.randn(2, head, img.shape[2], generator=gen).to(dtype), img, torch.randn(2, tail, img.shape[2], generator=gen).to(dtype)], 1)
    args = (layout.h, layout.w, layout.th, layout.tw, layout.frames, head)
    ref_w = ops.merge_weights_impl(x, idx, *args, tau)
    _, w = merge_triton(x.to(DEVICE)[:, head : head + layout.num_tokens], layout, idx=idx.to(DEVICE), temperature=tau, tokens=False)
    _close(w, ref_w, dtype)
    ref_merged = ops.merge_impl(x, ref_w, *args)
    merged = merge_span_triton(x.to(DEVICE), layout, head, weights=ref_w.to(DEVICE))
    _close(merged, ref_merged, dtype)
    assert torch.equal(merged[:, :head].cpu(), x[:, :head]) and torch.equal(merged[:, -tail:].cpu(), x[:, -tail:])
    y = torch.randn(ref_merged.shape, generator=gen).to(dtype)
    out = unmerge_span_triton(y.to(DEVICE), ref_w.to(DEVICE), layout, head)
    _close(out, ops.unmerge_impl(y, ref_w, *args), dtype)
    assert torch.equal(out[:, :head].cpu(), y[:, :head]) and torch.equal(out[:, -tail:].cpu(), y[:, -tail:])


def test_block_sizes_and_validation() -> None:
    assert block_sizes(16, 8, 640) == (16, 16, 32)
    assert block_sizes(16, 4, 20) == (16, 16, 32)
    assert block_sizes(64, 48, 8) == (64, 64, 16)
    with pytest.raises(ValueError, match="tile size"):
        block_sizes(256, 8, 8)
    with pytest.raises(ValueError, match="k=17"):
        block_sizes(16, 17, 8)
    layout = TileLayout.create(8, 8, (4, 4))
    with pytest.raises(ValueError, match=r"x must be \(B, 64, C\)"):
        merge_triton(torch.zeros(1, 63, 4), layout, idx=torch.zeros(1, 4, 2, dtype=torch.long), temperature=1.0)
    with pytest.raises(ValueError, match="needs idx and temperature"):
        merge_triton(torch.zeros(1, 64, 4), layout)
    with pytest.raises(TypeError, match="float32"):
        merge_triton(torch.zeros(1, 64, 4, dtype=torch.int64), layout, weights=torch.zeros(1, 4, 2, 16))


# --- one op per merge / unmerge ------------------------------------------------------------------


@pytest.mark.parametrize("site", SITE_SIZES, ids=lambda s: s.name)
def test_kernel_path_is_one_op_per_merge_and_unmerge(site: Site) -> None:
    """Real site sizes on fake CUDA tensors (no GPU needed) take the fused ops, one dispatch each;
    the torch path (meta tensors) issues a dozen."""
    kernels = site_launches(site, "cuda")
    one = {
        "weights": "toma.fused_merge.default",  # weights and merged tokens together
        "shared merge": "toma.tile_merge.default",
        "unmerge": "toma.tile_unmerge.default",
        "unmerge + residual": "toma.tile_unmerge.default",
    }
    assert kernels == {**{p: Counter({op: 1}) for p, op in one.items()}, "merge": Counter()}, kernels
    torch_path = site_launches(site, "meta")
    assert torch_path["weights"]["aten._softmax.default"] == 1 and sum(torch_path["weights"].values()) >= 11
    assert all(sum(torch_path[p].values()) >= 1 for p in ("merge", "unmerge", "shared merge"))


def test_eager_site_on_the_kernel_path_splits_only_to_select(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hooks' merge map on the kernel path (forced on CPU): the tiles are split only for
    selection, so a reuse step is one dispatch for weights and merge, one for unmerge."""
    from toma_export.config import ToMAConfig
    from toma_export.eager.state import MergeContext
    from toma_export.core.profiling import OpCounter

    monkeypatch.setattr(core_merge, "KERNEL_DEVICES", frozenset({"cuda", "cpu"}))
    ctx = MergeContext(ToMAConfig(ratio=0.5, recompute_every=2))
    layout = ctx.layout_for(12, 16)  # row-major: a split is a permuting copy
    x = torch.randn(2, 192, 8)
    counts = []
    for _ in range(3):  # select (the carried buffer is made), reuse, select (written in place)
        ctx.begin_step()
        with OpCounter() as counter:
            mm = ctx.merge_map(layout, x)
            mm.unmerge(mm.merge(x))
        counts.append(counter.counts)
        ctx.end_step()
    assert counts[2]["toma.facility_location.default"] == 1 and counts[2]["aten.clone.default"] == 1, counts[2]
    assert counts[2]["aten.copy_.default"] == 1, counts[2]  # the destinations into their buffer
    assert counts[1] == Counter({"toma.fused_merge.default": 1, "toma.tile_unmerge.default": 1}), counts[1]


def test_forward_launches_fall_with_the_kernels() -> None:
    """A whole eager forward (tiny SDXL UNet on meta): a reuse step on the kernel path adds exactly
    the two fused ops per merged site to the unmerged forward (no tile-order copies: the kernels
    address row-major tiles); the torch path 11 more per site (13 -> 2) and the block's two
    tile-order copies (one per site: attention + MLP per block); selecting steps one more per group."""
    from toma_export.config import ToMAConfig

    n = forward_launches("sdxl-tiny-unet", ToMAConfig(ratio=0.5))
    sites, odd = divmod(n["kernels reuse"] - n["unmerged"], 2)
    assert sites >= 2 and not odd, n
    assert n["torch reuse"] - n["kernels reuse"] == (11 + 1) * sites, n
    assert n["unmerged"] < n["kernels reuse"] < n["kernels select"], n


def test_flop_count_is_the_same_on_both_paths() -> None:
    """The FLOP ceiling counts the fused ops' matmuls as the torch path's (an SDXL site on meta)."""
    from toma_export.graph.flops import count_flops

    layout = TileLayout.create(64, 64, (4, 4), tile_major=True)
    x = torch.empty(2, 4096, 640, device="meta", dtype=torch.float16)
    idx = torch.zeros(2, layout.num_tiles, 8, dtype=torch.long, device="meta")

    def site() -> None:
        mm = MergeMap.build(layout, x, idx, 1000.0)
        mm.unmerge(mm.merge(x))

    torch_path, torch_ops = count_flops(site)
    with kernel_path_on_meta():
        kernels, kernel_ops = count_flops(site)
    assert kernels == torch_path > 0 and set(kernel_ops) == {"toma.fused_merge", "toma.tile_unmerge"}, (torch_ops, kernel_ops)


@pytest.mark.parametrize("site", ["sdxl-18x20-tile-major", "video-2x10x9"])
def test_fake_kernels_give_the_real_shapes(site: str) -> None:
    layout, x, idx, tau = _case(site, 2, torch.bfloat16)
    args = (layout.h, layout.w, layout.th, layout.tw, layout.frames, layout.tile_major)
    real_merged, real_w = ops.fused_merge(x, idx, *args, tau)
    residual = torch.randn(x.shape).to(x.dtype)
    real_out = ops.tile_unmerge(real_merged, real_w, residual, *args)
    with FakeTensorMode() as mode:
        fx, fidx, fres = (mode.from_tensor(t) for t in (x, idx, residual))
        merged, w = torch.ops.toma.fused_merge(fx, fidx, *args, tau)
        again = torch.ops.toma.tile_merge(fx, w, *args)
        out = torch.ops.toma.tile_unmerge(merged, w, fres, *args)
        plain = torch.ops.toma.tile_unmerge(merged, w, None, *args)
    for fake, real in ((merged, real_merged), (w, real_w), (again, real_merged), (out, real_out), (plain, real_out)):
        assert (fake.shape, fake.dtype) == (real.shape, real.dtype)


def _opcheck_all(device: str) -> None:
    """``torch.library.opcheck`` (schema, fake kernel against the real one, autograd registration,
    AOT dispatch) on the three ops at a border grid."""
    layout, x, idx, tau = _case("sdxl-10x9-row-major", 2, torch.float32)
    x, idx = x.to(device), idx.to(device)
    args = (layout.h, layout.w, layout.th, layout.tw, layout.frames, layout.tile_major)
    merged, w = torch.ops.toma.fused_merge(x, idx, *args, tau)
    for op, op_args in (
        (torch.ops.toma.fused_merge.default, (x, idx, *args, tau)),
        (torch.ops.toma.tile_merge.default, (x, w, *args)),
        (torch.ops.toma.tile_unmerge.default, (merged, w, x, *args)),
        (torch.ops.toma.tile_unmerge.default, (merged, w, None, *args)),
    ):
        torch.library.opcheck(op, op_args)


def test_ops_pass_opcheck() -> None:
    _opcheck_all("cpu")


def test_torch_compile_sees_one_op_per_merge_and_unmerge(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the kernel path chosen (forced on CPU, where the ops' kernel is the torch code), a compiled
    site is one opaque op per merge and per unmerge, and computes what the torch path computes."""
    layout, x, idx, tau = _case("sdxl-18x20-tile-major", 2, torch.float32)
    residual = torch.randn(x.shape)

    def site(x: torch.Tensor, idx: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        mm = MergeMap.build(layout, x, idx, tau)
        return mm.unmerge(mm.merge(x) * 2.0, residual)

    expected = site(x, idx, residual)  # torch path
    graphs: list[torch.fx.GraphModule] = []

    def record(gm: torch.fx.GraphModule, example_inputs: list) -> torch.fx.GraphModule:
        graphs.append(gm)
        return gm

    monkeypatch.setattr(core_merge, "KERNEL_DEVICES", frozenset({"cuda", "cpu"}))
    torch._dynamo.reset()
    got = torch.compile(site, backend=record, fullgraph=True)(x, idx, residual)
    torch._dynamo.reset()
    targets = Counter(str(n.target).removesuffix(".default") for g in graphs for n in g.graph.nodes if n.op == "call_function")
    assert targets["toma.fused_merge"] == 1 and targets["toma.tile_unmerge"] == 1, targets
    assert not any("bmm" in t or "matmul" in t or "softmax" in t for t in targets), targets
    torch.testing.assert_close(got, expected)


def test_export_decomposes_the_fused_ops_to_aten() -> None:
    """Exporters lower the new ops like the graph pass's ops: standard ATen, same values."""
    from toma_export.graph.decompositions import decompositions

    layout, x, idx, tau = _case("sdxl-10x9-row-major", 1, torch.float32)
    args = (layout.h, layout.w, layout.th, layout.tw, layout.frames, layout.tile_major)

    class Site(torch.nn.Module):
        def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            merged, w = torch.ops.toma.fused_merge(x, idx, *args, tau)
            again = torch.ops.toma.tile_merge(x, w, *args)
            return torch.ops.toma.tile_unmerge(merged + again, w, x, *args)

    ep = torch.export.export(Site(), (x, idx))
    lowered = ep.run_decompositions(decompositions())
    left = [n for n in lowered.graph.nodes if n.op == "call_function" and "toma" in str(n.target)]
    assert not left, left
    torch.testing.assert_close(lowered.module()(x, idx), Site()(x, idx))


@pytest.mark.parametrize(
    "targets",
    [
        pytest.param([(90, "float16"), (90, "bfloat16")], id="sm90-half"),
        pytest.param([(90, "float32"), (80, "float16"), (80, "bfloat16")], id="sm90-fp32-sm80", marks=pytest.mark.slow),
    ],
)
def test_kernels_compile_for_gpu_targets(targets: list[tuple[int, str]]) -> None:
    """Every kernel variant compiles and assembles for the GPU targets without a GPU (a child
    process without ``TRITON_INTERPRET``: the interpreter does not type-check like the compiler)."""
    if in_child():
        pytest.skip("ran in the parent process")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import json, sys, torch\n"
        "from plugins.triton_merge import compile_kernels\n"
        "targets = json.loads(sys.argv[1])\n"
        "print(json.dumps({f'{a}-{d}': compile_kernels(a, getattr(torch, d)) for a, d in targets}))\n"
    )
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-c", code, json.dumps(targets)]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(built) == len(targets) and all(len(v) == 5 and min(v.values()) > 10_000 for v in built.values()), built


# --- compiled kernels on a GPU --------------------------------------------------------------------

#: Real site sizes: SDXL levels (tile-major, 1024² and a size whose grid the tile does not divide),
#: Flux at 1024² (row-major image tokens, 3072 channels).
GPU_SITES = {
    "sdxl-64x64x640": ((64, 64), True, 640),
    "sdxl-32x32x1280": ((32, 32), True, 1280),
    "sdxl-66x62x640-border": ((66, 62), True, 640),
    "flux-64x64x3072": ((64, 64), False, 3072),
}


#: At real widths the cosine's fp32 summation noise grows with sqrt(C) before tau (1000) scales it, so
#: the elementwise bounds are looser than the interpreter's; accuracy is held against float64 instead.
GPU_TOL = {torch.float32: (3e-3, 1e-3), torch.float16: (1e-2, 1e-2), torch.bfloat16: (5e-2, 3e-2)}


def _gpu_close(got: torch.Tensor, ref: torch.Tensor, exact: torch.Tensor, dtype: torch.dtype) -> None:
    """``got`` (kernel) near ``ref`` (torch path in ``dtype``) and, on average, at least about as
    close to ``exact`` (the torch path in float64) as ``ref`` is."""
    atol, rtol = GPU_TOL[dtype]
    torch.testing.assert_close(got, ref, atol=atol, rtol=rtol)
    _as_accurate(got, ref, exact)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("site", list(GPU_SITES))
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_compiled_kernels_equal_torch_path(site: str, batch: int, dtype: torch.dtype) -> None:
    (h, w), tile_major, c = GPU_SITES[site]
    layout = TileLayout.create(h, w, (4, 4), tile_major=tile_major)
    gen = torch.Generator(device="cuda").manual_seed(batch + c)
    x = torch.randn(batch, h * w, c, device="cuda", generator=gen).to(dtype)
    idx = facility_location(layout.split(x)[0].float(), tokens_kept(16, 0.5))
    args = (h, w, 4, 4, 1, tile_major)
    ref_merged, ref_w = ops.fused_merge_impl(x, idx, *args, 1000.0)
    exact_merged, exact_w = merge_float64(layout, x, idx, 1000.0)
    merged, weights = torch.ops.toma.fused_merge(x, idx, *args, 1000.0)  # CUDA: the Triton kernel
    _gpu_close(weights, ref_w, exact_w, dtype)
    _gpu_close(merged, ref_merged, exact_merged, dtype)
    _gpu_close(torch.ops.toma.tile_merge(x, ref_w, *args), ref_merged, ops.tile_merge_impl(x.double(), ref_w.double(), *args), dtype)
    y = torch.randn(merged.shape, device="cuda", generator=gen).to(dtype)
    res = torch.randn(x.shape, device="cuda", generator=gen).to(dtype)
    exact_out = ops.tile_unmerge_impl(y.double(), ref_w.double(), res.double(), *args)
    _gpu_close(torch.ops.toma.tile_unmerge(y, ref_w, res, *args), ops.tile_unmerge_impl(y, ref_w, res, *args), exact_out, dtype)
    mm = MergeMap.build(layout, x, idx, 1000.0)  # the eager path dispatches to the same kernels
    assert mm.fused is not None and mm.merge(x) is mm.fused[1]
    torch.testing.assert_close(mm.unmerge(y), torch.ops.toma.tile_unmerge(y, mm.weights, None, *args))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compiled_graph_ops_equal_torch_path(dtype: torch.dtype) -> None:
    """The graph pass's ops on CUDA (Flux: 512 text tokens, then the 64x64 image span; 3072 channels)."""
    layout = TileLayout.create(64, 64, (4, 4))
    x = torch.randn(2, 512 + 4096, 3072, device="cuda", dtype=dtype)
    idx = facility_location(layout.split(x[:, 512:])[0].float(), tokens_kept(16, 0.5))
    args = (64, 64, 4, 4, 1, 512)
    w = torch.ops.toma.merge_weights(x, idx, *args, 1000.0)
    _gpu_close(w, ops.merge_weights_impl(x, idx, *args, 1000.0), merge_float64(layout, x[:, 512:], idx, 1000.0)[1], dtype)
    merged = torch.ops.toma.merge(x, w, *args)
    _gpu_close(merged, ops.merge_impl(x, w, *args), ops.merge_impl(x.double(), w.double(), *args), dtype)
    exact = ops.unmerge_impl(merged.double(), w.double(), *args)
    _gpu_close(torch.ops.toma.unmerge(merged, w, *args), ops.unmerge_impl(merged, w, *args), exact, dtype)


@pytest.mark.gpu
@needs_gpu
def test_ops_pass_opcheck_on_cuda() -> None:
    _opcheck_all("cuda")


@pytest.mark.gpu
@needs_gpu
def test_compiled_model_calls_the_kernels_once_per_site() -> None:
    """torch.compile (inductor) on CUDA keeps each op opaque and runs the Triton kernels."""
    layout = TileLayout.create(64, 64, (4, 4), tile_major=True)
    x = torch.randn(2, 4096, 640, device="cuda", dtype=torch.float16)
    idx = facility_location(layout.split(x)[0].float(), 8)

    def site(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        mm = MergeMap.build(layout, x, idx, 1000.0)
        return mm.unmerge(mm.merge(x).relu(), x)

    torch._dynamo.reset()
    got = torch.compile(site, fullgraph=True)(x, idx)
    tiles, rest = layout.split(x)
    w = core_merge.merge_weights(tiles, idx, 1000.0)
    ref = core_merge.unmerge_tiles(layout, w, core_merge.merge_tiles(w / w.sum(-1, keepdim=True), tiles, rest).relu()) + x
    torch.testing.assert_close(got, ref, atol=1e-2, rtol=1e-2)


@pytest.mark.skipif(RUNNABLE or in_child(), reason="kernel checks ran in this process")
def test_kernel_suite_in_interpreter_child() -> None:
    assert_passes_in_interpreter_child(__file__, "equal_torch_path or span_kernels")  # the rest ran here
