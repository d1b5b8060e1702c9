"""ToMA merge and unmerge as one Triton launch each (docs/DESIGN.md, "Method").

Merge (:func:`merge_triton`): programs ``(tile, batch)`` for the ``T`` whole tiles, then programs
for blocks of the ``R`` border tokens, all in one launch. A tile program reads its ``S`` tokens
straight from the token grid (row-major or tile-major addresses computed in the kernel: no
permute, split or join copy) and

1. accumulates ``D Xᵀ`` (the ``k`` destinations against the tile, ``BLOCK_K x BLOCK_S``) and the
   squared norms over ``C`` in blocks of ``BLOCK_C`` (fp32), scales to cosine like ``F.normalize``
   (norm clamped at 1e-12) and takes ``A = softmax(tau * cos)`` over destinations (fp32);
2. rounds ``A`` to the tokens' dtype (what the torch path stores and unmerges with) and writes it;
3. streams the tile again for ``M @ X`` with ``M = A / rowsum(A)`` (fp32 accumulation), written as
   merged rows ``t*k .. t*k + k - 1``.

With ``weights`` given, step 1 is skipped and ``A`` is read (merge with another site's weights);
with ``tokens=False`` step 3 and the border are skipped (the graph pass's weights-only op).
Border programs copy the border tokens (every frame's right columns, then its bottom rows, the
order of :meth:`TileLayout.split`) to merged rows ``T*k + r``.

Unmerge (:func:`unmerge_triton`): tile programs write ``Aᵀ Y`` for their tile's slots at the
tokens' grid addresses, border programs copy the border rows back; an optional ``residual``
``(B, N, C)`` is added before the single rounding to the output dtype.

The torch code (:mod:`toma_export.core.merge`) is the reference: results equal it up to fp32
summation order and one rounding of ``M`` (the torch path rounds ``M`` to the dtype). Spans of a
longer sequence (:func:`merge_span_triton`) are read and written in place. Outputs round to nearest
even (bf16 on the bits, so that the interpreter, which truncates, rounds as the GPU does).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from toma_export.core.tiles import TileLayout

#: ``tl.dot`` needs every block dimension >= 16.
MIN_BLOCK = 16
#: Channels per accumulation step.
DEFAULT_BLOCK_C = 32
#: Border tokens per border program.
BLOCK_R = 32
#: Largest tile the kernels accept (registers: BLOCK_K x BLOCK_S fp32 values per program).
MAX_TILE = 128
#: Same clamp as ``torch.nn.functional.normalize``.
NORM_EPS = 1e-12
_NORM_EPS = tl.constexpr(NORM_EPS)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: No FMA contraction: rounding closest to the torch reference.
_FP_OPTIONS: dict[str, Any] = {"enable_fp_fusion": False}


@triton.jit
def _round_to(v, ty: tl.constexpr):
    """fp32 ``v`` rounded to nearest-even in ``ty``. bf16 is rounded on the bits (the same result as
    the compiled conversion; Triton's interpreter would truncate, and its checks should see the GPU's rounding)."""
    if ty == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        v = (bits & 0xFFFF0000).to(tl.float32, bitcast=True)
    return v.to(ty)


@triton.jit
def _tile_slots(t, offs_s, W, FH, TH, TW, TX, TY, S, TILE_MAJOR: tl.constexpr):
    """Token index (int64) of tile ``t``'s slots ``offs_s``."""
    if TILE_MAJOR:
        return t * S + offs_s
    per_frame = TX * TY
    f = t // per_frame
    rem = t % per_frame
    row = f * FH + (rem // TX) * TH + offs_s // TW
    col = (rem % TX) * TW + offs_s % TW
    return row * W + col


@triton.jit
def _border_tokens(r, W, FH, TH, TW, TX, TY, F, NT, S, TILE_MAJOR: tl.constexpr):
    """Token index (int64) of border tokens ``r``: every frame's right columns, then its bottom rows."""
    if TILE_MAJOR:
        return NT * S + r
    mh = TY * TH
    mw = TX * TW
    rw = W - mw
    per_right = tl.maximum(mh * rw, 1)
    rwc = tl.maximum(rw, 1)
    rq = r % per_right
    right = ((r // per_right) * FH + rq // rwc) * W + mw + rq % rwc
    r2 = r - F * mh * rw
    per_bottom = tl.maximum((FH - mh) * W, 1)
    bq = r2 % per_bottom
    bottom = ((r2 // per_bottom) * FH + mh + bq // W) * W + bq % W
    return tl.where(r2 < 0, right, bottom)


@triton.jit
def _tile_setup(p, b, W, FH, TH, TW, TX, TY, NT, S, K, TILE_MAJOR: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr):
    """Tile ``p`` of batch ``b``: slot and destination ranges, their masks, the slots' token index,
    and the pointers / mask of its weights ``A[b, p]`` (``BLOCK_K x BLOCK_S``)."""
    offs_s = tl.arange(0, BLOCK_S)
    offs_k = tl.arange(0, BLOCK_K)
    valid_s = offs_s < S
    valid_k = offs_k < K
    tok = _tile_slots(p, offs_s.to(tl.int64), W, FH, TH, TW, TX, TY, S, TILE_MAJOR)
    w_offs = (b * NT + p) * K * S + offs_k[:, None] * S + offs_s[None, :]
    return offs_k, valid_s, valid_k, tok, w_offs, valid_k[:, None] & valid_s[None, :]


@triton.jit
def _copy_rows(src, src_rows, s_stride, dst, dst_rows, d_stride, res, r_stride, valid, C, HAS_RESIDUAL: tl.constexpr, BLOCK_C: tl.constexpr):
    """``dst[dst_rows] = src[src_rows] (+ res[dst_rows])`` over ``C`` channels (border tokens)."""
    offs_c = tl.arange(0, BLOCK_C)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + offs_c
        mask = valid[:, None] & (cols[None, :] < C)
        v = tl.load(src + src_rows[:, None] * s_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            v += tl.load(res + dst_rows[:, None] * r_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(dst + dst_rows[:, None] * d_stride + cols[None, :], _round_to(v, dst.dtype.element_ty), mask=mask)


@triton.jit
def merge_kernel(
    x_ptr,  # tokens (B, N, C): batch stride sxb, token stride sxn, channels contiguous
    idx_ptr,  # destinations (B, T, K) contiguous, int64/int32 (unused with LOAD_WEIGHTS)
    w_ptr,  # weights A (B, T, K, S) contiguous: written, or read with LOAD_WEIGHTS
    out_ptr,  # merged (B, T*K + R, C): batch stride sob, token stride son
    sxb, sxn, sob, son,
    W, FH, TH, TW, TX, TY, F,  # grid width, frame height, tile sides, tiles per frame row / column, frames
    NT, S, K, C, R,  # tiles, tokens per tile, destinations per tile, channels, border tokens
    tau,
    TILE_MAJOR: tl.constexpr,
    LOAD_WEIGHTS: tl.constexpr,
    WRITE_MERGED: tl.constexpr,  # False: weights only (launched over the tiles alone)
    BLOCK_S: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    offs_c = tl.arange(0, BLOCK_C)
    x_base = x_ptr + b * sxb
    o_base = out_ptr + b * sob
    if p < NT:
        offs_k, valid_s, valid_k, tok, w_offs, w_mask = _tile_setup(
            p, b, W, FH, TH, TW, TX, TY, NT, S, K, TILE_MAJOR, BLOCK_S, BLOCK_K
        )
        w_ptrs = w_ptr + w_offs
        if LOAD_WEIGHTS:
            a = tl.load(w_ptrs, mask=w_mask, other=0.0).to(tl.float32)
        else:
            slot = tl.load(idx_ptr + (b * NT + p) * K + offs_k, mask=valid_k, other=0).to(tl.int64)
            dtok = _tile_slots(p, slot, W, FH, TH, TW, TX, TY, S, TILE_MAJOR)
            dots = tl.zeros((BLOCK_K, BLOCK_S), dtype=tl.float32)
            sqx = tl.zeros((BLOCK_S,), dtype=tl.float32)
            sqd = tl.zeros((BLOCK_K,), dtype=tl.float32)
            for c0 in range(0, C, BLOCK_C):
                cols = c0 + offs_c
                cmask = cols[None, :] < C
                xx = tl.load(x_base + tok[:, None] * sxn + cols[None, :], mask=valid_s[:, None] & cmask, other=0.0)
                dd = tl.load(x_base + dtok[:, None] * sxn + cols[None, :], mask=valid_k[:, None] & cmask, other=0.0)
                xx = xx.to(tl.float32)
                dd = dd.to(tl.float32)
                dots = tl.dot(dd, tl.trans(xx), dots, input_precision="ieee")
                sqx += tl.sum(xx * xx, axis=1)
                sqd += tl.sum(dd * dd, axis=1)
            invx = 1.0 / tl.maximum(tl.sqrt(sqx), _NORM_EPS)
            invd = 1.0 / tl.maximum(tl.sqrt(sqd), _NORM_EPS)
            logits = tau * ((dots * invd[:, None]) * invx[None, :])
            logits = tl.where(valid_k[:, None], logits, float("-inf"))
            top = tl.max(logits, axis=0)
            e = tl.exp(logits - top[None, :])
            a = e / tl.sum(e, axis=0)[None, :]
            a = tl.where(w_mask, a, 0.0)
            a_out = _round_to(a, w_ptr.dtype.element_ty)
            tl.store(w_ptrs, a_out, mask=w_mask)
            a = a_out.to(tl.float32)  # merge with the weights as stored, like the torch path
        if WRITE_MERGED:
            rows = tl.sum(a, axis=1)
            m = a / tl.where(valid_k, rows, 1.0)[:, None]
            o_rows = p * K + offs_k
            for c0 in range(0, C, BLOCK_C):
                cols = c0 + offs_c
                cmask = cols[None, :] < C
                xx = tl.load(x_base + tok[:, None] * sxn + cols[None, :], mask=valid_s[:, None] & cmask, other=0.0)
                acc = tl.dot(m, xx.to(tl.float32), input_precision="ieee")
                omask = valid_k[:, None] & cmask
                tl.store(o_base + o_rows[:, None] * son + cols[None, :], _round_to(acc, out_ptr.dtype.element_ty), mask=omask)
    else:
        r = (p - NT) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
        src = _border_tokens(r, W, FH, TH, TW, TX, TY, F, NT, S, TILE_MAJOR)
        _copy_rows(x_base, src, sxn, o_base, NT * K + r, son, x_base, 0, r < R, C, False, BLOCK_C)


@triton.jit
def unmerge_kernel(
    y_ptr,  # merged (B, T*K + R, C): batch stride syb, token stride syn
    w_ptr,  # weights A (B, T, K, S) contiguous, in y's dtype
    res_ptr,  # residual (B, N, C) contiguous (unused without HAS_RESIDUAL)
    out_ptr,  # tokens (B, N, C): batch stride sob, token stride son
    syb, syn, sob, son, srb, srn,
    W, FH, TH, TW, TX, TY, F,
    NT, S, K, C, R,
    TILE_MAJOR: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    offs_c = tl.arange(0, BLOCK_C)
    y_base = y_ptr + b * syb
    o_base = out_ptr + b * sob
    r_base = res_ptr + b * srb
    if p < NT:
        offs_k, valid_s, valid_k, tok, w_offs, w_mask = _tile_setup(
            p, b, W, FH, TH, TW, TX, TY, NT, S, K, TILE_MAJOR, BLOCK_S, BLOCK_K
        )
        at = tl.trans(tl.load(w_ptr + w_offs, mask=w_mask, other=0.0).to(tl.float32))
        y_rows = p * K + offs_k
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + offs_c
            cmask = cols[None, :] < C
            yy = tl.load(y_base + y_rows[:, None] * syn + cols[None, :], mask=valid_k[:, None] & cmask, other=0.0)
            acc = tl.dot(at, yy.to(tl.float32), input_precision="ieee")
            omask = valid_s[:, None] & cmask
            if HAS_RESIDUAL:
                acc += tl.load(r_base + tok[:, None] * srn + cols[None, :], mask=omask, other=0.0).to(tl.float32)
            tl.store(o_base + tok[:, None] * son + cols[None, :], _round_to(acc, out_ptr.dtype.element_ty), mask=omask)
    else:
        r = (p - NT) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
        dst = _border_tokens(r, W, FH, TH, TW, TX, TY, F, NT, S, TILE_MAJOR)
        _copy_rows(y_base, NT * K + r, syn, o_base, dst, son, r_base, srn, r < R, C, HAS_RESIDUAL, BLOCK_C)


def _check_device(device: torch.device) -> None:
    """CUDA tensors need compiled Triton, CPU tensors Triton's interpreter (``TRITON_INTERPRET=1``)."""
    interpreted = not isinstance(merge_kernel, JITFunction)
    if device.type == "cuda" and not interpreted or device.type == "cpu" and interpreted:
        return
    if device.type == "cpu":
        raise RuntimeError(
            "the Triton merge kernels got CPU tensors but Triton is not in interpreter mode: set "
            "TRITON_INTERPRET=1 before Triton is first imported, or pass CUDA tensors"
        )
    if device.type == "cuda":
        raise RuntimeError("Triton is in interpreter mode (TRITON_INTERPRET=1) but got CUDA tensors; unset it")
    raise ValueError(f"the Triton merge kernels run on CUDA (or on CPU through the interpreter), not on {device}")


def block_sizes(tile_size: int, k: int, channels: int, block_c: int = DEFAULT_BLOCK_C) -> tuple[int, int, int]:
    """``(BLOCK_S, BLOCK_K, BLOCK_C)`` for tiles of ``tile_size`` tokens, ``k`` destinations, ``channels``."""
    if not 1 <= tile_size <= MAX_TILE:
        raise ValueError(f"tile size {tile_size} is outside [1, {MAX_TILE}] tokens per tile")
    if not 1 <= k <= tile_size:
        raise ValueError(f"k={k} must be in [1, {tile_size}] (tokens per tile)")
    bc = max(MIN_BLOCK, min(triton.next_power_of_2(block_c), triton.next_power_of_2(max(channels, 1))))
    return max(MIN_BLOCK, triton.next_power_of_2(tile_size)), max(MIN_BLOCK, triton.next_power_of_2(k)), bc


def _grid_args(layout: TileLayout) -> tuple[int, ...]:
    """The kernels' grid arguments ``W, FH, TH, TW, TX, TY, F``."""
    return (layout.w, layout.frame_h, layout.th, layout.tw, layout.tiles_x, layout.tiles_y, layout.frames)


def _launch_grid(layout: TileLayout, batch: int, border: bool = True) -> tuple[int, int]:
    """Tile programs, then (with ``border``) border programs, per batch element."""
    return (layout.num_tiles + (math.ceil(layout.num_rest / BLOCK_R) if border else 0), batch)


def _tokens(t: torch.Tensor, name: str, n: int) -> torch.Tensor:
    """``t`` checked as ``(B, n, C)`` with contiguous channels (a token-strided view is kept as is)."""
    if t.dim() != 3 or t.shape[1] != n:
        raise ValueError(f"{name} must be (B, {n}, C); got shape {tuple(t.shape)}")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name} must be float32/float16/bfloat16; got {t.dtype}")
    return t if t.stride(-1) == 1 else t.contiguous()


def merge_triton(
    x: torch.Tensor,
    layout: TileLayout,
    *,
    idx: torch.Tensor | None = None,
    temperature: float | None = None,
    weights: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    tokens: bool = True,
    block_c: int = DEFAULT_BLOCK_C,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(merged (B, T*k + R, C), weights A (B, T, k, S))`` of tokens ``x`` ``(B, N, C)`` in one launch.

    With ``idx`` ``(B, T, k)`` and ``temperature`` the weights are computed (and returned in
    ``x``'s dtype); with ``weights`` they are read (and returned as given). ``out`` (channels
    contiguous, e.g. a span of a longer sequence) receives the merged tokens in place.
    ``tokens=False``: the weights only (merged is None).
    """
    x = _tokens(x, "x", layout.num_tokens)
    b, _, c = x.shape
    t, s = layout.num_tiles, layout.tile_size
    if weights is not None:
        k = weights.shape[2]
        if tuple(weights.shape) != (b, t, k, s):
            raise ValueError(f"weights must be (B, T, k, S) = ({b}, {t}, k, {s}); got {tuple(weights.shape)}")
        a = weights.to(x.dtype).contiguous()
        ids = a  # unused by the kernel
    else:
        if idx is None or temperature is None:
            raise ValueError("merge_triton needs idx and temperature, or weights")
        k = idx.shape[-1]
        if tuple(idx.shape) != (b, t, k):
            raise ValueError(f"idx must be (B, T, k) = ({b}, {t}, k); got {tuple(idx.shape)}")
        ids = idx.contiguous()
        a = x.new_empty((b, t, k, s))
    if not tokens and weights is not None:
        raise ValueError("tokens=False computes weights: pass idx and temperature, not weights")
    bs, bk, bc = block_sizes(s, k, c, block_c)
    m = layout.merged_count(k)
    if not tokens:
        out = None
    elif out is None:
        out = x.new_empty((b, m, c))
    elif tuple(out.shape) != (b, m, c) or out.stride(-1) != 1 or out.dtype != x.dtype:
        raise ValueError(f"out must be a {x.dtype} tensor of shape {(b, m, c)} with contiguous channels")
    _check_device(x.device)
    if b and c:
        opts = _FP_OPTIONS if x.device.type == "cuda" else {}
        dst = out if out is not None else x  # not written without tokens
        merge_kernel[_launch_grid(layout, b, border=tokens)](
            x, ids, a, dst,
            x.stride(0), x.stride(1), dst.stride(0), dst.stride(1),
            *_grid_args(layout),
            t, s, k, c, layout.num_rest,
            float(temperature) if temperature is not None else 0.0,
            TILE_MAJOR=layout.tile_major, LOAD_WEIGHTS=weights is not None, WRITE_MERGED=tokens,
            BLOCK_S=bs, BLOCK_K=bk, BLOCK_C=bc, BLOCK_R=BLOCK_R, **opts,
        )  # fmt: skip
    return out, (weights if weights is not None else a)


def unmerge_triton(
    y: torch.Tensor,
    weights: torch.Tensor,
    layout: TileLayout,
    *,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    block_c: int = DEFAULT_BLOCK_C,
) -> torch.Tensor:
    """Tokens ``(B, N, C)`` from merged ``y`` ``(B, T*k + R, C)``: ``Aᵀ Y`` per tile, border copied
    back, plus ``residual`` ``(B, N, C)`` when given (one rounding), in one launch."""
    b, t, k, s = weights.shape
    if (t, s) != (layout.num_tiles, layout.tile_size):
        raise ValueError(f"weights must be (B, {layout.num_tiles}, k, {layout.tile_size}); got {tuple(weights.shape)}")
    y = _tokens(y, "y", layout.merged_count(k))
    if y.shape[0] != b:
        raise ValueError(f"y has batch {y.shape[0]}, weights {b}")
    c = y.shape[2]
    n = layout.num_tokens
    if residual is not None:
        residual = _tokens(residual, "residual", n)
        if residual.dtype != y.dtype or residual.shape[0] != b or residual.shape[2] != c:
            raise ValueError(f"residual must be {y.dtype} of shape {(b, n, c)}; got {residual.dtype} {tuple(residual.shape)}")
    a = weights.to(y.dtype).contiguous()
    if out is None:
        out = y.new_empty((b, n, c))
    elif tuple(out.shape) != (b, n, c) or out.stride(-1) != 1 or out.dtype != y.dtype:
        raise ValueError(f"out must be a {y.dtype} tensor of shape {(b, n, c)} with contiguous channels")
    bs, bk, bc = block_sizes(s, k, c, block_c)
    _check_device(y.device)
    if b and c:
        res = residual if residual is not None else y
        opts = _FP_OPTIONS if y.device.type == "cuda" else {}
        unmerge_kernel[_launch_grid(layout, b)](
            y, a, res, out,
            y.stride(0), y.stride(1), out.stride(0), out.stride(1), res.stride(0), res.stride(1),
            *_grid_args(layout),
            t, s, k, c, layout.num_rest,
            TILE_MAJOR=layout.tile_major, HAS_RESIDUAL=residual is not None,
            BLOCK_S=bs, BLOCK_K=bk, BLOCK_C=bc, BLOCK_R=BLOCK_R, **opts,
        )  # fmt: skip
    return out


# --- a span of a longer sequence (the graph pass's ops: Flux text tokens before the image) ---------


def _pass_through(src: torch.Tensor, dst: torch.Tensor, offset: int, n_src: int, n_dst: int) -> None:
    """Copy the tokens before and after the span (``n_src`` tokens in ``src``, ``n_dst`` in ``dst``)."""
    if offset:
        dst[:, :offset].copy_(src[:, :offset])
    if src.shape[1] > offset + n_src:
        dst[:, offset + n_dst :].copy_(src[:, offset + n_src :])


def merge_span_triton(
    x: torch.Tensor,
    layout: TileLayout,
    offset: int,
    *,
    idx: torch.Tensor | None = None,
    temperature: float | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x`` ``(B, L, C)`` with its image span ``[offset, offset + N)`` merged in place of it
    (:func:`merge_triton` writing into the output's span; tokens around it copied)."""
    n = layout.num_tokens
    k = weights.shape[2] if weights is not None else (idx.shape[-1] if idx is not None else 0)
    m = layout.merged_count(k)
    out = x.new_empty((x.shape[0], x.shape[1] - n + m, x.shape[2]))
    span = out[:, offset : offset + m]
    merge_triton(x[:, offset : offset + n], layout, idx=idx, temperature=temperature, weights=weights, out=span)
    _pass_through(x, out, offset, n, m)
    return out


def unmerge_span_triton(y: torch.Tensor, weights: torch.Tensor, layout: TileLayout, offset: int) -> torch.Tensor:
    """Inverse of :func:`merge_span_triton`: the merged span of ``y`` unmerged, tokens around it copied."""
    n = layout.num_tokens
    m = layout.merged_count(weights.shape[2])
    out = y.new_empty((y.shape[0], y.shape[1] - m + n, y.shape[2]))
    unmerge_triton(y[:, offset : offset + m], weights, layout, out=out[:, offset : offset + n])
    _pass_through(y, out, offset, m, n)
    return out


# --- ahead-of-time compilation check ---------------------------------------------------------------

_TRITON_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def compile_kernels(arch: int = 90, dtype: torch.dtype = torch.float16, num_warps: int = 4) -> dict[str, int]:
    """Compile every variant of both kernels for ``sm_{arch}`` without a GPU (``triton.compile``
    with a ``GPUTarget``, which also assembles with ptxas); ``{variant: cubin bytes}``.

    The interpreter does not type-check like the compiler does, so this is the GPU-less proof that
    the kernels build. Needs Triton outside interpreter mode.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if not isinstance(merge_kernel, JITFunction):
        raise RuntimeError("AOT compilation needs Triton's compiler; unset TRITON_INTERPRET and run again")
    ty = _TRITON_DTYPE[dtype]
    blocks = {"BLOCK_S": 16, "BLOCK_K": 16, "BLOCK_C": DEFAULT_BLOCK_C, "BLOCK_R": BLOCK_R}
    variants = {
        f"merge{'-weights-given' if load else ''}{'' if write else '-weights-only'}{'-tile-major' if tm else ''}": (
            merge_kernel,
            {"TILE_MAJOR": tm, "LOAD_WEIGHTS": load, "WRITE_MERGED": write},
        )
        for load, write, tm in ((False, True, False), (True, True, True), (False, False, False))
    } | {
        f"unmerge{'-residual' if res else ''}{'-tile-major' if tm else ''}": (unmerge_kernel, {"TILE_MAJOR": tm, "HAS_RESIDUAL": res})
        for res, tm in ((True, False), (False, True))
    }
    pointers = {"x_ptr": ty, "y_ptr": ty, "w_ptr": ty, "res_ptr": ty, "out_ptr": ty, "idx_ptr": "i64"}
    built = {}
    for name, (kernel, flags) in variants.items():
        constexprs = {**flags, **blocks}
        signature = {
            a: "constexpr" if a in constexprs else f"*{pointers[a]}" if a in pointers else "fp32" if a == "tau" else "i32"
            for a in kernel.arg_names
        }
        src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        options = {"num_warps": num_warps, **_FP_OPTIONS}
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
        built[name] = len(compiled.asm["cubin"])
    return built
