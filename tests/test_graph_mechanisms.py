"""General mechanisms of the graph pass on synthetic graphs (issue 11), each against a hand-written reference.

Every synthetic block below is plain torch; the pass must find its sites by structure and the
rewritten program (reuse variant, destinations fed in) must equal a reference computed with the
core maths (`toma_export.core`) on the same destinations.
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

import toma_export
from toma_export.core.merge import MergeMap
from toma_export.core.tiles import TileLayout
from toma_export.errors import ToMAError
from toma_export.graph import token_grids
from toma_export.graph.grids import Grid, grid_for, grid_from_ids

H = W = 8
N = H * W
L = 4
C = 16
TAU = 1000.0


pytestmark = pytest.mark.usefixtures("one_thread_quiet_fakes")


# -- grid discovery ------------------------------------------------------------------------------------


def test_grid_from_flux2_int64_four_axis_ids() -> None:
    from toma_export.models.inputs import flux2_ids

    img, txt = flux2_ids(6, 10, batch=2, text_len=5)
    assert img.dtype == torch.int64 and img.shape == (2, 60, 4)
    assert grid_from_ids(img) == Grid(6, 10)
    assert grid_from_ids(txt) is None  # one varying axis: a text sequence, not a grid


def test_grid_from_scaled_and_offset_ids() -> None:
    rows = torch.arange(5).repeat_interleave(7)
    cols = torch.arange(7).repeat(5)
    ids = torch.stack([torch.zeros(35), 0.5 * rows + 3.0, 0.25 * cols - 1.0], dim=-1)
    assert grid_from_ids(ids) == Grid(5, 7)
    assert grid_from_ids(ids[torch.randperm(35, generator=torch.Generator().manual_seed(0))]) is None  # not row-major
    video = torch.cartesian_prod(torch.arange(3), torch.arange(4), torch.arange(6)).float()
    assert grid_from_ids(video) == Grid(12, 6, frames=3)


def test_grids_from_plain_int_shapes_and_video_latents() -> None:
    # Qwen-Image: packed latents, the grid only as plain ints (frames, h, w) per batch element
    qwen = {"hidden_states": torch.randn(2, 48, 64), "img_shapes": [[(1, 6, 8)]] * 2}
    assert token_grids(qwen)[0] == Grid(6, 8)
    # LTX: packed video with num_frames / height / width ints
    ltx = {"hidden_states": torch.randn(1, 2 * 3 * 4, 8), "num_frames": 2, "height": 3, "width": 4}
    assert token_grids(ltx)[0] == Grid(6, 4, frames=2)
    # Wan: 5-D latents (B, C, F, H, W) with the config's (1, 2, 2) patch: a 2-frame 4x5 grid, frame-major
    wan = {"hidden_states": torch.randn(1, 4, 2, 8, 10)}
    grids = token_grids(wan, {"patch_size": (1, 2, 2)})
    assert grids[0] == Grid(16, 10, 1, frames=2) and Grid(8, 5, 2, frames=2) in grids
    # packed (B, N, C) latents and nothing else: the inputs cannot tell, so no grid
    assert token_grids({"hidden_states": torch.randn(1, 48, 64)}) == []
    # the config's in_channels finds the channel axis of a 5-D latent: CogVideoX's (B, F, C, H, W) and
    # (B, F, H, W, C); a 3-frame 4x5 grid after the 2x2 patch either way (read channels-first, the 4
    # channels would be 4 frames of a 2x8 grid at 12x16 px)
    for layout in ((1, 3, 4, 8, 10), (1, 3, 8, 10, 4)):
        grids = token_grids({"hidden_states": torch.randn(*layout)}, {"patch_size": 2, "in_channels": 4})
        assert grids[0] == Grid(24, 10, 1, frames=3) and Grid(12, 5, 2, frames=3) in grids, (layout, grids)
    # Kandinsky 5: channels-last (B, F, H, W, C) latents with no in_channels in the config, and its RoPE
    # positions per axis over the patched grid: the position lists give the grid (a 3-frame 4x5 grid)
    kandinsky = {"hidden_states": torch.randn(1, 3, 8, 10, 4), "visual_rope_pos": [torch.arange(3), torch.arange(4),
                                                                                     torch.arange(5)]}
    assert grid_for(token_grids(kandinsky), 60) == Grid(12, 5, frames=3)
    # one joint id table for [text; image] (Krea 2: text rows all zero; the image block after them) or
    # [image; text] (text ids after the image's): the image block's grid
    img = torch.cartesian_prod(torch.arange(6), torch.arange(5))
    img3 = torch.cat([torch.zeros(30, 1), img.float()], 1)
    joint = torch.cat([torch.zeros(7, 3), img3])
    assert grid_for(token_grids({"position_ids": joint}), 30) == Grid(6, 5)
    after = torch.cat([img3, torch.stack([torch.full((4,), 9.0), torch.arange(4.0), torch.zeros(4)], 1)])
    assert grid_for(token_grids({"position_ids": after}), 30) == Grid(6, 5)
    # a 4-D text input (Krea 2's (B, L, layers, D) features) is no latent: no grid from it
    assert token_grids({"encoder_hidden_states": torch.randn(1, 8, 3, 32)}) == []
    # Kandinsky 6 appends a reference frame at position 0 to the temporal axis: the lengths give the sides
    k6 = {"visual_rope_pos": [torch.cat([torch.arange(2), torch.zeros(1, dtype=torch.long)]), torch.arange(4), torch.arange(5)]}
    assert token_grids(k6) == [Grid(12, 5, frames=3)]
    # lists of float or boolean tensors (weights, masks) are not positions
    assert token_grids({"w": [torch.rand(3), torch.rand(4)], "m": [torch.ones(3, dtype=torch.bool)] * 2}) == []
    # a 5-D latent whose channel axis only an in_*_dim config key names (Kandinsky's in_visual_dim), and
    # one frame's grid, last, for blocks that fold the frames into the batch (Latte)
    grids = token_grids({"hidden_states": torch.randn(1, 3, 8, 10, 4)}, {"in_visual_dim": 4, "patch_size": (1, 2, 2)})
    assert grid_for(grids, 60) == Grid(12, 5, 2, frames=3) and grid_for(grids, 20) == Grid(4, 5, 2)


def test_video_grid_tiles_never_cross_frames() -> None:
    """A (frames * h) x w grid is tiled frame by frame: a tile height that does not divide h leaves each
    frame its own bottom border, never a tile spanning two frames."""
    from toma_export.graph.patterns import Site
    from toma_export.graph.rewriter import plan

    def site(grid: Grid) -> Site:
        return Site("attn", None, [], grid, 0, grid.tokens, C, None, "blocks.0.attn1")  # type: ignore[arg-type]

    ok = plan([site(Grid(16, 8, frames=2))], toma_export.ToMAConfig(ratio=0.5))
    assert ok.sites and ok.groups[0].layout.num_tiles == 8 and ok.groups[0].layout.num_rest == 0  # 2 x (2 x 2)
    odd = plan([site(Grid(12, 8, frames=2))], toma_export.ToMAConfig(ratio=0.5))  # frame height 6
    layout = odd.groups[0].layout
    assert odd.sites and (layout.frames, layout.num_tiles, layout.num_rest) == (2, 4, 2 * 2 * 8)
    tiles, rest = layout.split(torch.arange(12 * 8.0).reshape(1, -1, 1))
    rows = tiles[0, ..., 0].div(8, rounding_mode="floor")  # grid row of every tile slot
    assert all(len(set((r // 6).tolist())) == 1 for r in rows)  # each tile inside one frame
    assert sorted(rest[0, :, 0].div(8, rounding_mode="floor").unique().tolist()) == [4, 5, 10, 11]


# -- synthetic blocks ------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """diffusers' RMSNorm as it traces: pow / mean / rsqrt, weight after (not aten.rms_norm)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x * torch.rsqrt(var + 1e-6)).to(x.dtype) * self.weight


class FP32LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, None, None, self.eps).to(x.dtype)


class Block(nn.Module):
    """One transformer block over image tokens x (B, N, C) and text t (B, L, C).

    joint: text and image are normalised, concatenated ``[text; image]`` and projected by one Q/K/V
    (CogView4-style); else image self-attention. ``mask``: an attention mask over the attended
    sequence. ``per_token``: scale/shift shaped like the tokens, written ``scale * norm + shift`` so
    the first token-shaped operand is the scale. MLP: SwiGLU split by slice (``x[..., :half]``), or
    ``parallel``: two first linears ``w2(silu(w1(h)) * w3(h))`` (Z-Image). ``no_autocast``: Q and K pass
    through a ``torch.autocast(enabled=False)`` block (diffusers' RoPE in Z-Image, Mochi, OmniGen).
    """

    def __init__(self, joint: bool, per_token: bool = False, parallel: bool = False, no_autocast: bool = False):
        super().__init__()
        self.joint, self.per_token, self.parallel, self.no_autocast = joint, per_token, parallel, no_autocast
        self.norm1 = RMSNorm(C)
        self.norm_t = RMSNorm(C)
        self.qkv = nn.Linear(C, 3 * C)
        self.out = nn.Linear(C, C)
        self.norm2 = FP32LayerNorm(C, elementwise_affine=False)
        self.ff_in = nn.Linear(C, 4 * C)
        self.ff_out = nn.Linear(2 * C, C)
        self.w3 = nn.Linear(C, 2 * C)

    def attention(self, seq: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, s, _ = seq.shape
        q, k, v = (t.view(b, s, 2, C // 2).transpose(1, 2) for t in self.qkv(seq).chunk(3, dim=-1))
        if self.no_autocast:
            with torch.autocast("cuda", enabled=False):
                q, k = (t.float().mul(1.5).type_as(t) for t in (q, k))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(o.transpose(1, 2).reshape(b, s, C))

    def mlp(self, h: torch.Tensor) -> torch.Tensor:
        if self.parallel:
            return self.ff_out(F.silu(self.ff_in(h)[..., : 2 * C]) * self.w3(h))
        u = self.ff_in(h)
        half = u.shape[-1] // 2
        return self.ff_out(F.silu(u[..., :half]) * u[..., half:])

    def norm_in(self, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        h = self.norm1(x)
        return (1 + scale) * h + 0.5 * scale if scale is not None else h

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None,
                scale: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm_in(x, scale)
        if self.joint:
            a = self.attention(torch.cat([self.norm_t(t), h], dim=1), mask)[:, t.shape[1]:]
        else:
            a = self.attention(h, mask)
        x = x + a
        return x + self.mlp(self.norm2(x).type_as(x))


def reference(block: Block, x, t, mask, scale, idx) -> torch.Tensor:
    """ToMA on ``block`` by hand: merge each site's normalised image tokens with the core maths (its own
    weights, shared destinations), merged tokens take their destination's mask row/column, unmerge
    before each residual add."""
    layout = TileLayout(H, W, 4, 4)
    h = block.norm_in(x, scale)
    mm = MergeMap.build(layout, h, idx, TAU)
    hm = mm.merge(h)
    pos = mm.positions()  # (B, M) grid index of each merged token
    if block.joint:
        off = t.shape[1]
        keep = torch.cat([torch.arange(off).expand(x.shape[0], -1), pos + off], dim=1)  # (B, S')
        m = None
        if mask is not None:
            m = mask.expand(x.shape[0], *mask.shape[1:])
            m = torch.gather(m, 3, keep[:, None, None, :].expand(-1, m.shape[1], m.shape[2], -1))
            if m.shape[2] > 1:
                m = torch.gather(m, 2, keep[:, None, :, None].expand(-1, m.shape[1], -1, m.shape[3]))
        a = block.attention(torch.cat([block.norm_t(t), hm], dim=1), m)[:, off:]
    else:
        a = block.attention(hm, mask)
    x = x + mm.unmerge(a)
    h2 = block.norm2(x).type_as(x)
    mm2 = MergeMap.build(layout, h2, idx, TAU)
    return x + mm2.unmerge(block.mlp(mm2.merge(h2)))


def _inputs(mask_shape: tuple[int, ...] | None = None, per_token: bool = False) -> dict:
    g = torch.Generator().manual_seed(1)
    kw = dict(x=torch.randn(2, N, C, generator=g), t=torch.randn(2, L, C, generator=g),
              img_ids=torch.cartesian_prod(torch.arange(H), torch.arange(W)).float())
    if mask_shape is not None:
        kw["mask"] = torch.rand(*mask_shape, generator=g) > 0.2
        kw["mask"][..., 0] = True  # every query sees a key
    if per_token:
        kw["scale"] = 0.1 * torch.randn(2, N, C, generator=g)
    return kw


class WithIds(nn.Module):
    """The block, with position ids as an input the model ignores (the grid's source)."""

    def __init__(self, joint: bool, per_token: bool = False, **options: bool):
        super().__init__()
        self.block = Block(joint, per_token, **options)

    def forward(self, x, t, img_ids, mask=None, scale=None):  # type: ignore[no-untyped-def]
        return self.block(x, t, mask, scale)


def test_decomposed_rms_norm_fp32_layernorm_and_swiglu_slice() -> None:
    torch.manual_seed(0)
    m = WithIds(joint=False).eval()
    _check(m, _inputs(), 0)


def test_parallel_swiglu_and_disabled_autocast_region() -> None:
    """Both first linears of a parallel SwiGLU take the merged tokens; the disabled-autocast block
    around Q/K is inlined at capture, so the attention region runs through it."""
    torch.manual_seed(0)
    m = WithIds(joint=False, parallel=True, no_autocast=True).eval()
    kw = _inputs()
    program = _check(m, kw, 0)
    mlp = next(s for s in program.plan.sites if s.kind == "mlp")
    assert len(mlp.consumers) == 2
    assert not [n for n in program.captured.ep.graph.nodes if "wrap_with" in str(n.target)]


def test_per_token_modulation_follows_the_norm_operand() -> None:
    torch.manual_seed(0)
    _check(WithIds(joint=False, per_token=True).eval(), _inputs(per_token=True), 0)


def test_joint_attention_over_concatenated_normalised_text_and_image() -> None:
    torch.manual_seed(0)
    _check(WithIds(joint=True).eval(), _inputs(), L)


@pytest.mark.parametrize("shape", [(2, 1, L + N, L + N), (2, 1, 1, L + N), (1, 1, L + N, L + N)],
                         ids=["B1SS", "B11S", "11SS"])
def test_attention_mask_follows_the_merge(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    _check(WithIds(joint=True).eval(), _inputs(mask_shape=shape), L)


def _check(m: WithIds, kw: dict, offset: int) -> toma_export.graph.program.ToMAProgram:
    block = m.block
    cfg = toma_export.ToMAConfig(ratio=0.5)
    program = toma_export.rewrite(m, kw, cfg)
    assert [(s.kind, s.offset) for s in program.sites] == [("attn", offset), ("mlp", 0)], program.skipped
    assert not program.skipped
    k = program.groups[0].k
    idx = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(i))[:k] for i in range(2 * 4)])
    idx = idx.view(2, 4, k)
    with torch.no_grad():
        out = program.run_reuse(program.flat_inputs(**kw), [idx])[0]
        ref = reference(block, kw["x"], kw["t"], kw.get("mask"), kw.get("scale"), idx)
        orig = m(**kw)
        assert (out - ref).abs().max().item() <= 1e-5
        assert (out - orig).abs().max().item() > 1e-3
        *outs, dest = program.run_select(program.flat_inputs(**kw))
        assert torch.allclose(outs[0], program.run_reuse(program.flat_inputs(**kw), [dest])[0], atol=1e-6)
        same = toma_export.rewrite(m, kw, toma_export.ToMAConfig(ratio=0.0))(**kw)
        assert (same - orig).abs().max().item() <= 1e-5
    return program


class Packed(nn.Module):
    """A unified [image; text] sequence per sample, built with pad_sequence (Z-Image style), then one
    normalised self-attention over it and a residual."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(C)
        self.qkv = nn.Linear(C, 3 * C)
        self.out = nn.Linear(C, C)

    def forward(self, x, t, img_ids):  # type: ignore[no-untyped-def]
        seq = torch.nn.utils.rnn.pad_sequence([torch.cat([x[i], t[i]]) for i in range(x.shape[0])], batch_first=True)
        b, s, _ = seq.shape
        q, k, v = (u.view(b, s, 2, C // 2).transpose(1, 2) for u in self.qkv(self.norm(seq)).chunk(3, dim=-1))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, C)
        return (seq + self.out(o))[:, : x.shape[1]]


def test_sequence_built_with_pad_sequence() -> None:
    torch.manual_seed(0)
    m = Packed().eval()
    kw = _inputs()
    kw.pop("mask", None)
    program = toma_export.rewrite(m, kw, toma_export.ToMAConfig(ratio=0.5))
    assert [(s.kind, s.offset, s.sequence) for s in program.sites] == [("attn", 0, N + L)], program.skipped
    with torch.no_grad():
        out = program(**kw)
        assert torch.isfinite(out).all() and (out - m(**kw)).abs().max().item() > 1e-3


class DataDependent(nn.Module):
    """Keeps only the text tokens its mask marks: a data-dependent length torch.export cannot capture."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(C, C)

    def forward(self, x, mask):  # type: ignore[no-untyped-def]
        n = int(mask.sum())
        return self.proj(x[:, :n])


def test_export_failure_is_a_toma_error_naming_reason_and_fix() -> None:
    kw = dict(x=torch.randn(1, N, C), mask=torch.ones(N, dtype=torch.long))
    with pytest.raises(ToMAError) as e:
        toma_export.rewrite(DataDependent(), kw, toma_export.ToMAConfig(ratio=0.5))
    msg = str(e.value)
    assert "DataDependent cannot be captured" in msg and "data-dependent" in msg and "Fix:" in msg


class Autocast(nn.Module):
    """A linear inside an autocast block, enabled or not."""

    def __init__(self, enabled: bool):
        super().__init__()
        self.enabled = enabled
        self.lin = nn.Linear(C, C)

    def forward(self, x):  # type: ignore[no-untyped-def]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.enabled):
            return self.lin(x).float() + 1


@pytest.mark.parametrize("enabled", [False, True])
def test_only_inert_autocast_regions_are_inlined(enabled: bool) -> None:
    """A disabled autocast block is copied into the graph; an enabled one keeps its op (its casts are
    part of the computation). The captured program computes the model either way."""
    from toma_export.graph.capture import capture

    m = Autocast(enabled).eval()
    kw = {"x": torch.randn(2, N, C)}
    ep = capture(m, kw).ep
    regions = [n for n in ep.graph.nodes if "wrap_with_autocast" in str(n.target)]
    assert len(regions) == (1 if enabled else 0)
    with torch.no_grad():
        assert torch.equal(ep.module()(**kw), m(**kw))


class PackedWithIds(nn.Module):
    """One packed ``[text; image]`` input and one joint position-id table (Ideogram 4): no token ``cat``
    in the graph, so only the ids tell where the image block is."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.qkv, self.out = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.ff_in, self.ff_out = nn.Linear(C, 2 * C), nn.Linear(2 * C, C)

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        b, s, _ = h.shape
        q, k, v = (t.view(b, s, 2, C // 2).transpose(1, 2) for t in self.qkv(h).chunk(3, dim=-1))
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, C))

    def mlp(self, h: torch.Tensor) -> torch.Tensor:
        return self.ff_out(F.gelu(self.ff_in(h)))

    def forward(self, hidden_states, position_ids):  # type: ignore[no-untyped-def]
        x = hidden_states + self.attention(self.norm1(hidden_states))
        return x + self.mlp(self.norm2(x))


def test_packed_sequence_takes_its_image_block_from_joint_ids() -> None:
    torch.manual_seed(0)
    m = PackedWithIds().eval()
    img = torch.cat([torch.zeros(N, 1), torch.cartesian_prod(torch.arange(H), torch.arange(W)).float()], 1)
    kw = dict(hidden_states=torch.randn(2, L + N, C, generator=torch.Generator().manual_seed(3)),
              position_ids=torch.cat([torch.zeros(L, 3), img]))
    program = toma_export.rewrite(m, kw, toma_export.ToMAConfig(ratio=0.5))
    assert [(s.kind, s.offset, s.grid) for s in program.sites] == [("attn", L, (H, W)), ("mlp", L, (H, W))]
    k = program.groups[0].k
    idx = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(i))[:k] for i in range(8)]).view(2, 4, k)
    layout = TileLayout(H, W, 4, 4)

    def merged(h: torch.Tensor, fn) -> torch.Tensor:  # type: ignore[no-untyped-def]
        mm = MergeMap.build(layout, h[:, L:], idx, TAU)
        y = fn(torch.cat([h[:, :L], mm.merge(h[:, L:])], 1))
        return torch.cat([y[:, :L], mm.unmerge(y[:, L:])], 1)

    with torch.no_grad():
        x = kw["hidden_states"]
        x = x + merged(m.norm1(x), m.attention)
        ref = x + merged(m.norm2(x), m.mlp)
        out = program.run_reuse(program.flat_inputs(**kw), [idx])[0]
        assert (out - ref).abs().max().item() <= 1e-5
        assert (out - m(**kw)).abs().max().item() > 1e-3
