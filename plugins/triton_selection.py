"""Greedy facility location as one Triton program per tile (docs/DESIGN.md, "Methods").

Each program owns one tile of ``S`` tokens with ``C`` channels:

1. accumulates the raw Gram matrix ``X Xᵀ`` (``BLOCK_S x BLOCK_S``, fp32) and the squared row norms
   over ``C`` in blocks of ``BLOCK_C`` (so ``C`` = 3072 streams through, nothing of size ``C`` is
   kept), then scales it to cosine similarity exactly like ``F.normalize`` (norm clamped at 1e-12);
2. runs the ``k`` greedy picks on that matrix in registers: ``best`` starts at the cosine floor -1,
   ``gain(j) = Σ_i max(0, S[i, j] - best[i])``, taken slots get -1, the pick is the lowest index
   whose gain is within ``TIE_BAND`` of the maximum (the shared tie rule), then
   ``best = max(best, S[:, pick])``;
3. writes the ``k`` picks as int32, in pick order.

This is the same arithmetic as :func:`toma_export.core.selection.facility_location`; only the
summation order of fp32 reductions differs, so results are identical except where two gains are
within a few ulps of each other (exact ties, e.g. duplicated tokens, resolve the same way: lowest index).

Kernel argument order is ``(features, S, C, K, indices)``: inputs, int32 scalars, outputs. That
is the order the TensorRT AOT plugin launches with (inputs, extra scalar arguments, outputs), so
the same kernel serves the JIT launcher here and the PTX embedded in engines.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from toma_export.core.selection import TIE_BAND

#: Channels per Gram-accumulation step.
DEFAULT_BLOCK_C = 32
#: ``tl.dot`` needs every block dimension >= 16.
MIN_BLOCK = 16
#: Largest tile the kernel accepts (registers: BLOCK_S² fp32 values per program).
MAX_TILE = 128
#: GPU targets the AOT build produces (compute capability, PTX ``.target`` prefix).
AOT_ARCHS: tuple[int, ...] = (80, 89, 90)
#: PTX ISA version written into AOT PTX. Triton 3.9 defaults to its bundled ptxas's newest ISA
#: (9.x, CUDA 13 drivers only); 8.4 loads on any CUDA >= 12.4 driver, which TensorRT 10 engines need.
DEFAULT_PTX_VERSION = 84
#: Same clamp as ``torch.nn.functional.normalize``.
NORM_EPS = 1e-12
_NORM_EPS = tl.constexpr(NORM_EPS)
#: The reference's tie rule (gains within the band of the best tie; lowest index), one value for every backend.
_TIE_BAND = tl.constexpr(TIE_BAND)


@triton.jit
def facility_location_kernel(
    x_ptr,  # (tiles, S, C) contiguous, fp32 or fp16
    S,  # tokens per tile (<= BLOCK_S)
    C,  # channels
    K,  # picks per tile (1 <= K <= S)
    out_ptr,  # (tiles, K) int32
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    tile = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_c = tl.arange(0, BLOCK_C)
    valid = offs_s < S
    base = x_ptr + tile * S * C

    # 1. Gram matrix and squared norms, accumulated over C in fp32.
    gram = tl.zeros((BLOCK_S, BLOCK_S), dtype=tl.float32)
    sq = tl.zeros((BLOCK_S,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + offs_c
        ptrs = base + offs_s[:, None] * C + cols[None, :]
        mask = valid[:, None] & (cols[None, :] < C)
        x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        gram = tl.dot(x, tl.trans(x), gram, input_precision="ieee")
        sq += tl.sum(x * x, axis=1)
    inv = 1.0 / tl.maximum(tl.sqrt(sq), _NORM_EPS)
    sim = gram * inv[:, None] * inv[None, :]

    # 2. Greedy picks. Padded rows (i >= S) cover nothing; padded columns can never be picked.
    rowf = tl.where(valid, 1.0, 0.0)
    best = tl.full((BLOCK_S,), -1.0, dtype=tl.float32)
    taken = tl.zeros((BLOCK_S,), dtype=tl.int32)
    out_base = out_ptr + tile * K
    for p in range(0, K):
        gain = tl.sum(tl.maximum(sim - best[:, None], 0.0) * rowf[:, None], axis=0)
        gain = tl.where(taken != 0, -1.0, gain)
        gain = tl.where(valid, gain, -2.0)
        top = tl.max(gain, axis=0)
        pick = tl.min(tl.where(gain >= top - _TIE_BAND, offs_s, BLOCK_S), axis=0)
        hit = offs_s == pick
        taken = tl.where(hit, 1, taken)
        covered = tl.sum(tl.where(hit[None, :], sim, 0.0), axis=1)
        best = tl.maximum(best, covered)
        tl.store(out_base + p, pick.to(tl.int32))


def _kernel_for(device: torch.device) -> Any:
    """The kernel for tensors on ``device``; CPU needs Triton's interpreter."""
    interpreted = not isinstance(facility_location_kernel, JITFunction)
    if device.type == "cuda" and not interpreted:
        return facility_location_kernel
    if device.type == "cpu" and interpreted:
        return facility_location_kernel
    if device.type == "cpu":
        raise RuntimeError(
            "the Triton selection kernel got CPU tensors but Triton is not in interpreter mode: "
            "set TRITON_INTERPRET=1 before Triton is first imported, or pass CUDA tensors"
        )
    if device.type == "cuda":
        raise RuntimeError("Triton is in interpreter mode (TRITON_INTERPRET=1) but got CUDA tensors; unset it")
    raise ValueError(f"the Triton selection kernel runs on CUDA (or on CPU through the interpreter), not on {device}")


def block_sizes(tile_size: int, channels: int, block_c: int = DEFAULT_BLOCK_C) -> tuple[int, int]:
    """``(BLOCK_S, BLOCK_C)`` for a tile of ``tile_size`` tokens with ``channels`` channels."""
    if not 1 <= tile_size <= MAX_TILE:
        raise ValueError(f"tile size {tile_size} is outside [1, {MAX_TILE}] tokens per tile")
    block_s = max(MIN_BLOCK, triton.next_power_of_2(tile_size))
    bc = max(MIN_BLOCK, min(triton.next_power_of_2(block_c), triton.next_power_of_2(max(channels, 1))))
    return block_s, bc


def facility_location_triton(
    features: torch.Tensor, k: int, *, block_c: int = DEFAULT_BLOCK_C, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Destinations for tiles ``(..., S, C)``: ``(..., k)`` int32 tile-local indices.

    Runs on CUDA tensors (compiled kernel), or on CPU tensors under ``TRITON_INTERPRET=1`` set
    before Triton is first imported (interpreter; slow, for checks). Same indices as
    :func:`toma_export.core.selection.facility_location` (which returns int64).
    ``out`` (contiguous int32, ``(..., k)``) receives the result in place (the TensorRT JIT plugin
    passes its output buffer).
    """
    if features.dim() < 2:
        raise ValueError(f"features must be (..., S, C); got shape {tuple(features.shape)}")
    if features.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"features must be float32/float16/bfloat16; got {features.dtype}")
    *lead, s, c = features.shape
    if not 1 <= k <= s:
        raise ValueError(f"k={k} must be in [1, {s}] (tokens per tile)")
    if c < 1:
        raise ValueError("features have no channels")
    x = features.reshape(-1, s, c).contiguous()
    tiles = x.shape[0]
    if out is None:
        out = torch.empty((*lead, k), dtype=torch.int32, device=features.device)
    elif out.dtype != torch.int32 or tuple(out.shape) != (*lead, k) or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous int32 tensor of shape {(*lead, k)}")
    if tiles:
        bs, bc = block_sizes(s, c, block_c)
        kernel = _kernel_for(x.device)
        opts = _FP_OPTIONS if x.device.type == "cuda" else {}
        kernel[(tiles,)](x, s, c, k, out, BLOCK_S=bs, BLOCK_C=bc, **opts)
    return out


# --- ahead-of-time compilation ---------------------------------------------------------------------

#: No FMA contraction: keeps the kernel's rounding closest to the torch reference (and silences
#: Triton 3.9's warning about the changing default).
_FP_OPTIONS: dict[str, Any] = {"enable_fp_fusion": False}

_TRITON_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclasses.dataclass(frozen=True)
class CompiledSelectionKernel:
    """One AOT build of :func:`facility_location_kernel` for a GPU target.

    ``ptx`` has Triton's two trailing hidden pointer parameters (global / profile scratch) removed
    (see :func:`strip_scratch_params`): TensorRT's AOT launcher passes exactly inputs, extra scalar
    arguments and outputs, and the kernel never touches the scratch pointers (both sizes are 0,
    checked at build time).
    """

    arch: int
    dtype: str  # "fp32" | "fp16" | "bf16"
    block_s: int
    block_c: int
    name: str  # kernel symbol in the PTX
    ptx: str
    num_warps: int
    shared_mem: int  # dynamic shared memory bytes to launch with
    n_params: int  # parameters of the entry after stripping
    cubin_size: int  # bytes of the cubin ptxas made from the same PTX (proof it assembles)

    @property
    def block_x(self) -> int:
        return self.num_warps * 32


def _entry_params(ptx: str, name: str) -> tuple[re.Match[str], list[str]]:
    m = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\((.*?)\)", ptx, re.S)
    if m is None:
        raise RuntimeError(f"kernel entry {name!r} not found in the PTX")
    params = [p.strip() for p in m.group(1).split(",") if p.strip()]
    return m, params


def strip_scratch_params(ptx: str, name: str, n_declared: int) -> str:
    """Remove the parameters after the first ``n_declared`` from the ``.entry`` of ``name``.

    Triton (>= 3.3) appends ``global_scratch`` and (>= 3.5) ``profile_scratch`` pointers to every
    kernel. Launchers that pass only the declared arguments (TensorRT's AOT plugin launcher does)
    would make the driver read parameter slots past the argument array. The removal is only done
    when the PTX body never loads those parameters, so the kernel is unchanged otherwise.
    """
    m, params = _entry_params(ptx, name)
    if len(params) < n_declared:
        raise RuntimeError(f"PTX entry {name} has {len(params)} parameters, expected >= {n_declared}")
    extra = params[n_declared:]
    if not extra:
        return ptx
    body = ptx[m.end():]
    for p in extra:
        pname = p.split()[-1]
        if re.search(r"\[" + re.escape(pname) + r"\]", body):
            raise RuntimeError(f"kernel {name} reads hidden parameter {pname}; cannot strip it for TensorRT")
    kept = ",\n\t".join(params[:n_declared])
    return ptx[: m.start(1)] + "\n\t" + kept + "\n" + ptx[m.end(1):]


#: Declared (non-constexpr) parameters of the kernel: features, S, C, K, indices.
KERNEL_N_PARAMS = 5


def compile_selection_kernel(
    arch: int,
    *,
    dtype: torch.dtype | str = torch.float32,
    tile_size: int = 16,
    block_c: int = DEFAULT_BLOCK_C,
    num_warps: int = 4,
    ptx_version: int | None = DEFAULT_PTX_VERSION,
) -> CompiledSelectionKernel:
    """Compile the kernel to PTX for ``sm_{arch}`` without a GPU (``triton.compile`` + ``GPUTarget``).

    ``tile_size`` fixes ``BLOCK_S`` (the kernel still takes the exact ``S`` at run time).
    ``triton.compile`` also assembles the PTX with the bundled ``ptxas`` for the target, so a
    returned kernel is known to assemble. ``ptx_version`` None keeps Triton's default ISA.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if not isinstance(facility_location_kernel, JITFunction):
        raise RuntimeError("AOT compilation needs Triton's compiler; unset TRITON_INTERPRET and run again")
    ty = dtype if isinstance(dtype, str) else _TRITON_DTYPE[dtype]
    if ty not in _TRITON_DTYPE.values():
        raise ValueError(f"unsupported dtype {dtype!r}; one of {sorted(_TRITON_DTYPE.values())}")
    block_s, bc = block_sizes(tile_size, block_c, block_c)
    src = ASTSource(
        fn=facility_location_kernel,
        signature={
            "x_ptr": f"*{ty}",
            "S": "i32",
            "C": "i32",
            "K": "i32",
            "out_ptr": "*i32",
            "BLOCK_S": "constexpr",
            "BLOCK_C": "constexpr",
        },
        constexprs={"BLOCK_S": block_s, "BLOCK_C": bc},
    )
    target = GPUTarget("cuda", arch, 32)
    compiled = triton.compile(src, target=target, options={"num_warps": num_warps, "ptx_version": ptx_version, **_FP_OPTIONS})
    md = compiled.metadata
    if getattr(md, "global_scratch_size", 0) or getattr(md, "profile_scratch_size", 0):
        raise RuntimeError("selection kernel needs Triton scratch memory; the TensorRT AOT launcher cannot provide it")
    ptx = strip_scratch_params(compiled.asm["ptx"], md.name, KERNEL_N_PARAMS)
    _, params = _entry_params(ptx, md.name)
    return CompiledSelectionKernel(
        arch=arch,
        dtype=ty,
        block_s=block_s,
        block_c=bc,
        name=md.name,
        ptx=ptx,
        num_warps=md.num_warps,
        shared_mem=md.shared,
        n_params=len(params),
        cubin_size=len(compiled.asm.get("cubin", b"")),
    )


def ptx_target(ptx: str) -> str:
    """The ``.target`` directive's first operand, e.g. ``"sm_90a"``."""
    m = re.search(r"^\s*\.target\s+(\w+)", ptx, re.M)
    if m is None:
        raise ValueError("no .target directive in PTX")
    return m.group(1)


def build_ptx(
    out_dir: str | Path,
    *,
    archs: Iterable[int] = AOT_ARCHS,
    dtypes: Sequence[str] = ("fp32", "fp16"),
    tile_sizes: Sequence[int] = (16,),
    check: bool = True,
) -> list[dict[str, Any]]:
    """Write ``facility_location_sm{arch}_{dtype}_s{BLOCK_S}.ptx`` files and ``manifest.json`` into ``out_dir``.

    Each file is written atomically; with ``check`` each PTX is also assembled with ptxas.
    Returns the manifest entries (file, arch, target, dtype, blocks, kernel name, launch block,
    shared memory, parameter count, bytes).
    """
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    for arch in archs:
        for ty in dtypes:
            for ts in tile_sizes:
                ck = compile_selection_kernel(arch, dtype=ty, tile_size=ts)
                if check:
                    assemble_ptx(ck.ptx, arch)
                path = out / f"facility_location_sm{arch}_{ty}_s{ck.block_s}.ptx"
                _write_atomic(path, ck.ptx)
                entries.append(
                    {
                        "file": path.name,
                        "arch": arch,
                        "target": ptx_target(ck.ptx),
                        "dtype": ty,
                        "block_s": ck.block_s,
                        "block_c": ck.block_c,
                        "kernel": ck.name,
                        "block_x": ck.block_x,
                        "shared_mem": ck.shared_mem,
                        "params": ck.n_params,
                        "bytes": len(ck.ptx),
                    }
                )
    manifest = {"triton": triton.__version__, "kernel_source_sha256": kernel_source_digest(), "kernels": entries}
    _write_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return entries


def kernel_source_digest() -> str:
    """SHA-256 of the kernel's source and the constants it bakes in: a manifest records it, so a
    committed PTX that no longer matches the kernel is caught without a GPU."""
    import hashlib
    import inspect

    fn = getattr(facility_location_kernel, "fn", facility_location_kernel)
    text = inspect.getsource(fn) + f"TIE_BAND={TIE_BAND!r} NORM_EPS={NORM_EPS!r}"
    return hashlib.sha256(text.encode()).hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def assemble_ptx(ptx: str, arch: int) -> bytes:
    """Assemble ``ptx`` for ``sm_{arch}`` with the ``ptxas`` bundled with Triton; return the cubin.

    A check that needs no GPU: it proves the (stripped) PTX that TensorRT will JIT is well formed
    for the target. Raises ``RuntimeError`` with ptxas's message when it is not.
    """
    import subprocess
    import tempfile

    from triton import knobs

    tool = knobs.nvidia.ptxas if arch < 90 else knobs.nvidia.ptxas_blackwell
    sm = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        dst = Path(tmp) / "k.cubin"
        src.write_text(ptx)
        proc = subprocess.run([tool.path, f"-arch={sm}", str(src), "-o", str(dst)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"ptxas failed for {sm}: {proc.stderr.strip()}")
        return dst.read_bytes()
