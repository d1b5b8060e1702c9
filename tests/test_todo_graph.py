"""ToDo through the graph pass (``toma_export/graph/kv_downsample.py``) on architectures without an
eager adapter: FLUX.2, Qwen-Image, SD3.5, Wan, and any transformer the site matcher matches.

The rewrite gathers the kept rows of K and V (and a mask's key columns) right before each
self-attention's SDPA. Checked here against a direct implementation of ToDo's definition (K/V
projected at the kept tokens only, RoPE rows of those tokens) on synthetic attention layouts, against
the hand-written Flux.1 eager adapter, through eager ``apply`` on each tiny family, and through
``build`` + ``verify`` on ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import toma_export
from toma_export.baselines.todo import downsample_index
from toma_export.errors import UnsupportedModelError
from toma_export.graph import kv_downsample
from toma_export.models import load_model

H = W = 8
N = H * W
L = 5  # text tokens
C = 16
HEADS = 2
RATIO = 0.5

pytestmark = pytest.mark.usefixtures("one_thread_quiet_fakes")


def _todo(ratio: float = RATIO) -> toma_export.ToMAConfig:
    return toma_export.ToMAConfig(ratio=ratio, method="todo")


# -- synthetic joint attention with RoPE -------------------------------------------------------------------


def rope_tables(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``(S, C // HEADS)`` from float position ids ``(S, 2)``: half the pairs per axis."""
    d = C // HEADS
    freqs = 1.0 / (100.0 ** (torch.arange(d // 4, dtype=torch.float32) / (d // 4)))
    angles = torch.cat([ids[:, :1] * freqs, ids[:, 1:2] * freqs], dim=-1)  # (S, d/2)
    return angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Interleaved-pair RoPE on ``(B, H, S, D)`` (unbind / stack, as diffusers traces it)."""
    re, im = x.unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack([-im, re], dim=-1).flatten(3)
    return x * cos + rotated * sin


def heads(t: torch.Tensor) -> torch.Tensor:
    return t.view(t.shape[0], t.shape[1], HEADS, C // HEADS).transpose(1, 2)


class JointAttention(nn.Module):
    """Image tokens ``x`` (B, N, C) attend jointly with text ``t`` (B, L, C), RoPE on Q/K, residual.

    ``layout``: ``"double"`` (Flux: separate text/image projections, ``cat([text, image])`` of Q/K/V
    after projecting), ``"image_first"`` (SD3: ``cat([image, text])``), ``"single"`` (Flux single
    stream: one norm and one fused QKV over ``[text; image]``, split by chunk).
    """

    def __init__(self, layout: str):
        super().__init__()
        self.layout = layout
        self.norm = nn.LayerNorm(C)
        self.norm_t = nn.LayerNorm(C)
        self.qkv = nn.Linear(C, 3 * C)
        self.qkv_t = nn.Linear(C, 3 * C)
        self.out = nn.Linear(C, C)

    def positions(self, img_ids: torch.Tensor) -> torch.Tensor:
        txt = torch.zeros(L, 2)
        return torch.cat([img_ids, txt]) if self.layout == "image_first" else torch.cat([txt, img_ids])

    def keys_values(self, x: torch.Tensor, t: torch.Tensor, img_ids: torch.Tensor, keep: torch.Tensor | None = None):
        """Q over every token; K/V of the text and of the image tokens ``keep`` (all when None), RoPE'd
        at those tokens' own positions. ``keep`` given: ToDo by definition (K/V projected only there)."""
        cos, sin = rope_tables(self.positions(img_ids))
        text_first = self.layout != "image_first"
        img_pos = torch.arange(N) + (L if text_first else 0)
        txt_pos = torch.arange(L) + (0 if text_first else N)
        sel = torch.arange(N) if keep is None else keep
        if self.layout == "single":
            full = self.norm(torch.cat([t, x], dim=1))
            q, k, v = self.qkv(full).chunk(3, dim=-1)
            kv_rows = torch.cat([torch.arange(L), L + sel])
            if keep is not None:
                k, v = k[:, kv_rows], v[:, kv_rows]
            q_pos, kv_pos = torch.arange(L + N), kv_rows
        else:
            qi, ki, vi = self.qkv(self.norm(x)).chunk(3, dim=-1)
            qt, kt, vt = self.qkv_t(self.norm_t(t)).chunk(3, dim=-1)
            if keep is not None:
                ki, vi = ki[:, sel], vi[:, sel]
            order = (lambda a, b: [a, b]) if text_first else (lambda a, b: [b, a])
            q, k, v = (torch.cat(order(a, b), dim=1) for a, b in ((qt, qi), (kt, ki), (vt, vi)))
            q_pos = torch.cat(order(txt_pos, img_pos))
            kv_pos = torch.cat(order(txt_pos, img_pos[sel]))
        q = rope(heads(q), cos[q_pos], sin[q_pos])
        k = rope(heads(k), cos[kv_pos], sin[kv_pos])
        return q, k, heads(v)

    def finish(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        o = o.transpose(1, 2).reshape(x.shape[0], -1, C)
        img = o[:, L:] if self.layout != "image_first" else o[:, :N]
        return x + self.out(img)

    def forward(self, x, t, img_ids, mask=None):  # type: ignore[no-untyped-def]
        q, k, v = self.keys_values(x, t, img_ids)
        return self.finish(x, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def todo_reference(m: JointAttention, x, t, img_ids, mask=None) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """ToDo by its definition: every query; keys/values only of the text and of the kept image tokens
    (``downsample_index``), projected and rotated at those tokens; a mask keeps those key columns."""
    keep = downsample_index(H, W, RATIO)
    q, k, v = m.keys_values(x, t, img_ids, keep)
    if mask is not None:
        img_cols = torch.arange(N) + (L if m.layout != "image_first" else 0)
        txt_cols = torch.arange(L) + (0 if m.layout != "image_first" else N)
        cols = torch.cat([txt_cols, img_cols[keep]]) if m.layout != "image_first" else torch.cat([img_cols[keep], txt_cols])
        mask = mask[..., cols]
    return m.finish(x, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def _inputs(mask_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    g = torch.Generator().manual_seed(3)
    kw: dict[str, Any] = dict(x=torch.randn(2, N, C, generator=g), t=torch.randn(2, L, C, generator=g),
                              img_ids=torch.cartesian_prod(torch.arange(H), torch.arange(W)).float())
    if mask_shape is not None:
        mask = torch.rand(*mask_shape, generator=g) > 0.3
        mask[..., :1] = True  # every query sees a key
        mask[1, ..., L - 2 : L] = False  # sample 1: its last two text tokens are padding
        kw["mask"] = mask
    return kw


def _check_exact(m: JointAttention, kw: dict[str, Any]) -> kv_downsample.KVProgram:
    program = kv_downsample.rewrite(m, kw, _todo())
    assert [s.kind for s in program.sites] == ["attn"], program.skipped
    with torch.no_grad():
        out, ref, plain = program(**kw), todo_reference(m, **kw), m(**kw)
    assert (out - ref).abs().max().item() <= 1e-5
    assert (out - plain).abs().max().item() > 1e-3  # keys were dropped
    return program


@pytest.mark.parametrize("layout", ["double", "image_first", "single"])
def test_gather_before_sdpa_equals_todo_by_definition(layout: str) -> None:
    torch.manual_seed(0)
    m = JointAttention(layout).eval()
    program = _check_exact(m, _inputs())
    (site,) = program.kv_sites
    kept = downsample_index(H, W, RATIO).numel()
    assert (site.keys, site.kept) == (L + N, L + kept)
    assert site.image_start == (0 if layout == "image_first" else L)


@pytest.mark.parametrize("shape", [(2, 1, 1, L + N), (2, HEADS, L + N, L + N)], ids=["key-padding", "full"])
def test_attention_mask_columns_are_gathered(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    program = _check_exact(JointAttention("double").eval(), _inputs(shape))
    assert program.kv_sites[0].masked


class FlippedKeys(JointAttention):
    """Keys reversed along the sequence before attention: where the image keys lie is not provable."""

    def forward(self, x, t, img_ids, mask=None):  # type: ignore[no-untyped-def]
        q, k, v = self.keys_values(x, t, img_ids)
        return self.finish(x, F.scaled_dot_product_attention(q, k.flip(2), v.flip(2)))


def test_unlocatable_image_keys_are_skipped_and_the_model_refused() -> None:
    m, kw = FlippedKeys("double").eval(), _inputs()
    program = kv_downsample.rewrite(m, kw, _todo(), strict=False)
    assert not program.sites and "could not be located" in program.skipped[0].reason
    with pytest.raises(UnsupportedModelError, match="ToDo found no self-attention.*could not be located"):
        kv_downsample.rewrite(m, kw, _todo())


def test_flux1_graph_pass_equals_its_eager_adapter() -> None:
    """Flux.1 has a hand-written ToDo adapter (a key mask through its own processor); the graph pass
    on the same model must give the same output (both joint double- and single-stream blocks)."""
    from toma_export.models.inputs import example_inputs

    model = load_model("flux-tiny")
    kw = example_inputs(model, batch=2, height=128, width=128)
    program = kv_downsample.rewrite(model, kw, _todo())
    assert len(program.sites) == 4
    toma_export.apply(model, _todo())
    try:
        with torch.no_grad():
            eager = model(**kw)[0]
    finally:
        toma_export.remove(model)
    with torch.no_grad():
        torch.testing.assert_close(program(**kw)[0], eager, rtol=1e-5, atol=1e-5)


# -- the families without an eager adapter ---------------------------------------------------------------

#: name -> (height, width, pixel frames, self-attentions downsampled)
FAMILIES = {
    "flux2-tiny": (128, 128, 1, 4),  # 2 double + 2 single blocks, [text; image] keys
    "qwen-image-tiny": (128, 128, 1, 2),  # text mask: key columns gathered
    "sd35-tiny": (128, 128, 1, 3),  # [image; text] joint keys, plus layer 0's image-only attn2
    "wan-tiny": (64, 64, 5, 2),  # 2 latent frames of 4x4 tokens, downsampled per frame; cross-attn left alone
}


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out.sample


@pytest.mark.parametrize("name", list(FAMILIES))
def test_eager_apply_todo_runs_through_the_graph_pass(name: str) -> None:
    from toma_export.models.inputs import example_inputs

    h, w, frames, n_sites = FAMILIES[name]
    model = load_model(name)
    kw = example_inputs(model, batch=1, height=h, width=w, frames=frames)
    with torch.inference_mode():
        plain = _first(model(**kw))
        for ratio in (RATIO, 0.0):
            toma_export.apply(model, _todo(ratio))
            try:
                out = _first(model(**kw))
                st = toma_export.state(model)
            finally:
                toma_export.remove(model)
            if ratio:
                assert torch.isfinite(out).all()
                assert (out - plain).abs().max().item() > 1e-4
                assert len(st.sites) == n_sites and {s.kind for s in st.sites} == {"attn"}, st.skipped
                assert all(0 < s.merged < s.tokens for s in st.sites)
            else:  # ratio 0: the hook runs the model itself
                assert st is None
                torch.testing.assert_close(out, plain, rtol=0, atol=0)
        torch.testing.assert_close(_first(model(**kw)), plain, rtol=0, atol=0)  # removed


def test_onnxruntime_artifact_verifies_against_eager_todo(tmp_path: Path) -> None:
    """``build --method todo`` then ``verify`` on ONNX Runtime (the video family: per-frame grids)."""
    from toma_export.engines.artifact import read_manifest
    from toma_export.engines.build import BuildRequest, build_artifact
    from toma_export.engines.verify import verify_artifact

    h, w, frames, n_sites = FAMILIES["wan-tiny"]
    out = build_artifact(BuildRequest("wan-tiny", method="todo", ratio=RATIO, height=h, width=w, frames=frames,
                                      out=tmp_path / "a"), progress=False)
    m = read_manifest(out)
    assert list(m.extra.variants) == ["single"] and len(m.extra.sites) == n_sites
    ok, rows = verify_artifact(out, steps=2)
    assert ok, rows
    assert all(r["max_vs_unmerged"] > 10 * r["max_vs_eager"] for r in rows)  # ToDo told apart from no merging


@pytest.mark.slow
def test_bench_times_todo_rows_on_eager_and_onnxruntime() -> None:
    """The graph-pass workloads (here sd35-tiny; sd35 / qwen-image / wan / flux2 share its builder) time
    ToDo rows, not error rows, on eager and ONNX Runtime. (~30 s on 2 cores: two ORT builds each.)"""
    from toma_export.bench.runner import Plan, run_plan

    plan = Plan(workloads=["sd35-tiny"], methods=["none", "todo"], ratios=[0.5], backends=["eager", "onnxruntime"],
                repeats=1, warmup=1, ideal=False, memory=False)
    rows = run_plan(plan, progress_bar=False)["results"]
    assert sorted((r["backend"], r["method"], r["status"]) for r in rows) == [
        ("eager", "none", "ok"), ("eager", "todo", "ok"), ("onnxruntime", "none", "ok"), ("onnxruntime", "todo", "ok")
    ], rows
