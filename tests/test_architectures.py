"""The graph pass on current diffusers architectures (issue 11): FLUX.2, Qwen-Image, SD3.5, Wan 2.x, Z-Image.

Tiny random-weight configs (``toma_export/models/architectures.py``), inputs as their pipelines build
them. Eager ``apply`` on these families runs the graph pass behind a hook, so each is checked for: ratio 0
reproduces the model through the pass, ratio 0.5 merges attention (and MLP) sites with finite output
that differs from the model's, the select variant's destinations fed to the reuse variant give the
same output, RoPE rows / masks follow the merge (gather nodes), and (slow) a built ONNX Runtime
artifact verifies against eager ``apply`` for every family; eager ``apply`` itself equals the program
step by step. The mechanisms themselves are checked against
hand-written references on synthetic blocks in ``tests/test_graph_mechanisms.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import toma_export
from toma_export.models import load_model
from toma_export.models.architectures import ARCHITECTURES
from toma_export.models.inputs import example_inputs

#: name -> (height, width, frames, merged site kinds, site count, RoPE/mask gathers expected)
CASES: dict[str, tuple[int, int, int, dict[str, int], bool]] = {
    "flux2-tiny": (128, 128, 1, {"attn": 4, "mlp": 2}, True),  # 2 double (attn + SwiGLU MLP) + 2 single
    "qwen-image-tiny": (128, 128, 1, {"attn": 2, "mlp": 2}, True),  # text mask + RoPE
    "sd35-tiny": (128, 128, 1, {"attn": 3, "mlp": 2}, False),  # layer 0 is a dual-attention layer
    "wan-tiny": (64, 64, 5, {"attn": 2, "mlp": 2}, True),  # 2 latent frames of 4x4 tokens
    # 2 layers over [image; text] + 1 noise-refiner layer over the image; RoPE in a disabled-autocast block
    "z-image-tiny": (128, 128, 1, {"attn": 3, "mlp": 3}, True),
}


pytestmark = pytest.mark.usefixtures("one_thread_quiet_fakes")


def _setup(name: str, seed: int = 0) -> tuple[torch.nn.Module, dict[str, Any]]:
    h, w, frames, *_ = CASES[name]
    model = load_model(name)
    return model, example_inputs(model, batch=1, height=h, width=w, frames=frames, seed=seed)


_PROGRAMS: dict[str, Any] = {}


def _program(name: str) -> tuple[torch.nn.Module, dict[str, Any], Any]:
    if name not in _PROGRAMS:
        model, kw = _setup(name)
        _PROGRAMS[name] = (model, kw, toma_export.rewrite(model, kw, toma_export.ToMAConfig(ratio=0.5, recompute_every=2)))
    return _PROGRAMS[name]


def _first(out: Any) -> torch.Tensor:
    out = out[0] if isinstance(out, (tuple, list)) else out.sample
    return out[0] if isinstance(out, (tuple, list)) else out  # per-sample lists (Z-Image)


def test_embedded_names_are_registered() -> None:
    from toma_export.models.registry import EMBEDDED_MODELS

    assert set(ARCHITECTURES) <= set(EMBEDDED_MODELS)


@pytest.mark.parametrize("name", list(CASES))
def test_ratio_zero_reproduces_the_model(name: str) -> None:
    model, kw = _setup(name)
    program = toma_export.rewrite(model, kw, toma_export.ToMAConfig(ratio=0.0))
    assert program.sites == [] and program.skipped  # sites found, none merged
    with torch.no_grad():
        assert (_first(program(**kw)) - _first(model(**kw))).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", list(CASES))
def test_ratio_half_merges_attention_sites(name: str) -> None:
    model, kw, program = _program(name)
    _, _, _, kinds, gathers = CASES[name]
    merged: dict[str, int] = {}
    for s in program.sites:
        merged[s.kind] = merged.get(s.kind, 0) + 1
    assert merged == kinds, (program.sites, program.skipped)
    assert all(s.reason == "merge_cross=False" for s in program.skipped), program.skipped
    assert len(program.groups) == 1
    has_gather = any(n.target is torch.ops.toma.gather_positions.default for n in program.graph_module.graph.nodes)
    assert has_gather == gathers
    program.reset()
    with torch.no_grad():
        out = _first(program(**kw))
        ref = _first(model(**kw))
        assert torch.isfinite(out).all()
        assert (out - ref).abs().max().item() > 1e-3
        # step 0's destinations (select variant), fed to the reuse variant, give the same output
        flat = program.flat_inputs(**kw)
        *outs, dest = program.run_select(flat)
        assert torch.allclose(outs[0], program.run_reuse(flat, [dest])[0], atol=1e-6)
        assert torch.allclose(outs[0], out, atol=1e-6)


def test_wan_tiles_stay_within_frames() -> None:
    _, _, program = _program("wan-tiny")
    g = program.groups[0]
    assert program.sites[0].grid == (8, 4)  # 2 frames x 4 rows, 4 columns
    assert (g.layout.th, g.layout.tw, g.layout.num_tiles) == (4, 4, 2)  # one 4x4 tile per frame
    assert g.layout.frames == 2 and g.layout.num_rest == 0  # frame height 4 is a multiple of the tile height


def test_wan_frames_a_tile_does_not_divide_keep_their_border_rows() -> None:
    """96 px: 6 token rows per frame, 4x4 tiles: each of the 2 frames gets one tile row and keeps 2 rows
    unmerged; ratio 0 is the model, the eager hook runs the same program, select and reuse agree."""
    model = load_model("wan-tiny")
    kw = example_inputs(model, batch=1, height=96, width=64, frames=5)
    program = toma_export.rewrite(model, kw, toma_export.ToMAConfig(ratio=0.5, recompute_every=2))
    layout = program.groups[0].layout
    assert (layout.frames, layout.num_tiles, layout.num_rest) == (2, 2, 2 * 2 * 4)
    assert {s.kind for s in program.sites} == {"attn", "mlp"}
    with torch.no_grad():
        ref = _first(model(**kw))
        out = _first(program(**kw))
        flat = program.flat_inputs(**kw)
        *outs, dest = program.run_select(flat)
        assert torch.allclose(outs[0], program.run_reuse(flat, [dest])[0], atol=1e-6)
        assert torch.isfinite(out).all() and (out - ref).abs().max().item() > 1e-3
        zero = toma_export.rewrite(model, kw, toma_export.ToMAConfig(ratio=0.0))
        assert torch.allclose(_first(zero(**kw)), ref, atol=1e-5)
        toma_export.apply(model, toma_export.ToMAConfig(ratio=0.5))
        try:
            assert torch.allclose(_first(model(**kw)), out, atol=1e-5)
        finally:
            toma_export.remove(model)


def test_qwen_image_grid_from_plain_int_shapes_and_mask_follows() -> None:
    _, kw, program = _program("qwen-image-tiny")
    assert kw["img_shapes"] == [[(1, 8, 8)]]
    assert {s.grid for s in program.sites} == {(8, 8)}
    attn = next(s for s in program.sites if s.kind == "attn")
    assert attn.offset == 0  # separate image Q/K/V; text joins after the projections
    gathers = [n for n in program.graph_module.graph.nodes if n.target is torch.ops.toma.gather_positions.default]
    masks = [n for n in gathers if any("scaled_dot_product" in str(u.target) for u in n.users)]
    # the (B, 1, 1, text + image) mask: its key columns follow the merge (image after the 8 text tokens)
    assert len(masks) == 2 and all(n.args[0].meta["val"].dtype == torch.bool and n.args[2:] == (3, 8, 64) for n in masks)
    assert len(gathers) == 6  # and RoPE rows of q and k in both blocks


def test_flux2_grid_from_four_axis_int64_ids() -> None:
    _, kw, program = _program("flux2-tiny")
    assert kw["img_ids"].dtype == torch.int64 and kw["img_ids"].shape[-1] == 4
    single = [s for s in program.sites if s.offset]
    assert len(single) == 2 and all(s.offset == kw["txt_ids"].shape[1] for s in single)  # [text; image]


@pytest.mark.parametrize("name", list(CASES))
def test_onnxruntime_artifact_verifies_against_eager_toma(name: str, tmp_path: Path) -> None:
    """``build`` then ``verify`` on ONNX Runtime, as a user runs them: the artifact's select and
    reuse variants against eager ``apply`` step by step (Qwen-Image's complex RoPE table goes
    through the real-pair lowering; Wan is built for a clip of ``frames``)."""
    from toma_export.engines.build import BuildRequest, build_artifact
    from toma_export.engines.verify import verify_artifact

    h, w, frames, *_ = CASES[name]
    out = build_artifact(BuildRequest(name, ratio=0.5, height=h, width=w, frames=frames, batch=1, out=tmp_path / "a",
                                      recompute_every=2), progress=False)
    ok, rows = verify_artifact(out, steps=3)
    assert [r["variant"] for r in rows] == ["select", "reuse", "select"]
    assert ok, rows
    assert all(r["max_vs_unmerged"] > 10 * r["max_vs_eager"] for r in rows)  # ToMA is told apart from no merging


@pytest.mark.parametrize("name", list(CASES))
def test_eager_apply_runs_the_graph_pass(name: str) -> None:
    """``apply`` on a model without a hand-written adapter: the first call captures and rewrites,
    calls then equal the graph pass's program step by step (select, reuse), diffusers' reset starts a
    new generation, ratio 0 is the model itself, and ``remove`` restores it exactly."""
    model, kw, program = _program(name)
    program.reset()
    with torch.inference_mode():
        plain = _first(model(**kw))
        expected = [_first(program(**kw)) for _ in range(3)]
    program.reset()
    toma_export.apply(model, toma_export.ToMAConfig(ratio=0.5, recompute_every=2))
    try:
        with torch.inference_mode():
            got = [_first(model(**kw)) for _ in range(3)]
            st = toma_export.state(model)
            assert (st.step, st.selections) == (3, 2)
            assert {s.kind for s in st.sites} >= {"attn"}
            model._reset_stateful_cache()  # what a pipeline calls after each generation
            assert st.step == 0
            again = _first(model(**kw))
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(again, expected[0], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got[0], plain, atol=1e-4), "ratio 0.5 merged nothing"
    finally:
        toma_export.remove(model)
    assert "toma_graph_pass" not in getattr(getattr(model, "_diffusers_hook", None), "hooks", {})
    with torch.inference_mode():
        torch.testing.assert_close(_first(model(**kw)), plain, rtol=0, atol=0)
        toma_export.apply(model, toma_export.ToMAConfig(ratio=0.0))
        try:
            torch.testing.assert_close(_first(model(**kw)), plain, rtol=0, atol=0)
        finally:
            toma_export.remove(model)


def test_eager_apply_refuses_a_model_whose_sites_do_not_match() -> None:
    """A diffusers model the pass finds no merge site in: a ToMA error naming inspect at the first call
    (never a raw exception, never a silent no-op), and after remove() the model runs as before."""
    from diffusers import ModelMixin
    from diffusers.configuration_utils import ConfigMixin, register_to_config

    class Plain(ModelMixin, ConfigMixin):
        @register_to_config
        def __init__(self, channels: int = 8):
            super().__init__()
            self.proj = torch.nn.Linear(channels, channels)

        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            return self.proj(hidden_states)

    model = Plain().eval()
    x = torch.randn(1, 16, 8)
    toma_export.apply(model, toma_export.ToMAConfig(ratio=0.5))
    for _ in range(2):  # refused once, and the same answer without a second capture
        with pytest.raises(toma_export.UnsupportedModelError, match="matched no merge site.*toma-export inspect"):
            model(hidden_states=x)
    toma_export.remove(model)
    torch.testing.assert_close(model(hidden_states=x), model.proj(x))


def test_flux_look_alike_takes_the_graph_pass_not_the_flux_adapter() -> None:
    """Chroma has Flux.1's attribute names but other blocks: the Flux adapter crashed on it; apply now
    sends it through the graph pass (structure matched), and it merges like the pass."""
    from diffusers import ChromaTransformer2DModel

    from toma_export.models.inputs import flux_image_ids

    torch.manual_seed(0)
    model = ChromaTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, axes_dims_rope=(4, 6, 6), approximator_num_channels=8, approximator_hidden_dim=32,
        approximator_layers=1,
    ).eval()
    g = torch.Generator().manual_seed(1)
    kw = dict(hidden_states=torch.randn(1, 64, 16, generator=g), encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
              timestep=torch.full((1,), 0.5), img_ids=flux_image_ids(8, 8), txt_ids=torch.zeros(8, 3),
              attention_mask=torch.ones(1, 72, dtype=torch.bool))
    cfg = toma_export.ToMAConfig(ratio=0.5)
    with torch.inference_mode():
        expected = _first(toma_export.rewrite(model, kw, cfg)(**kw))
        toma_export.apply(model, cfg)
        try:
            got = _first(model(**kw))
            assert {s.kind for s in toma_export.state(model).sites} == {"attn", "mlp"}
        finally:
            toma_export.remove(model)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_local_folder_of_each_family_loads(name: str, tmp_path: Path) -> None:
    """A user's saved model folder (``save_pretrained``) loads as the same model, as a pipeline folder's
    ``transformer/`` too, and the frame rule reads its config (Wan: 4k+1 frames)."""
    from toma_export.engines.build import check_frames
    from toma_export.models.identity import weights_hash

    model = load_model(name)
    model.save_pretrained(tmp_path / "transformer")
    (tmp_path / "model_index.json").write_text('{"_class_name": "DiffusionPipeline", "transformer": ["diffusers", "x"]}')
    for where in (tmp_path / "transformer", tmp_path):
        loaded = load_model(where)
        assert type(loaded) is type(model) and weights_hash(loaded) == weights_hash(model)
    frames = CASES[name][2]
    assert check_frames(tmp_path / "transformer", frames) == (2 if name == "wan-tiny" else 1)


def test_a_folder_of_a_non_model_class_is_refused(tmp_path: Path) -> None:
    from toma_export.errors import UnsupportedModelError

    (tmp_path / "config.json").write_text('{"_class_name": "DDIMScheduler"}')
    with pytest.raises(UnsupportedModelError, match="not a diffusers model class"):
        load_model(tmp_path)


@pytest.mark.parametrize("name", list(CASES))
def test_inspect_lists_the_attention_sites(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``toma-export inspect`` at ratio 0.5 lists each family's merged attention (and MLP) sites, as
    many of each kind as the pass merges."""
    from toma_export.cli import main

    h, w, frames, kinds, _ = CASES[name]
    rc = main(["inspect", name, "--height", str(h), "--width", str(w), "--frames", str(frames), "--ratio", "0.5"])
    out = capsys.readouterr().out
    assert rc == 0, out
    listed = [line.split()[1] for line in out.splitlines() if line.strip().startswith("[g")]
    assert {k: listed.count(k) for k in kinds} == kinds, out
    assert f"{sum(kinds.values())} merged" in out, out


def _output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)


@pytest.mark.parametrize(
    "name,h,text_len,merged_tokens",
    [
        ("flux-tiny", 64, 16, 16),  # 16 text tokens beside a 4x4 image grid (FLUX.1-schnell: 256 at 256x256 px)
        ("sdxl-tiny", 256, 256, 256),  # text as long as the highest-resolution UNet attention level
    ],
)
def test_text_as_long_as_the_image_grid_stays_text(name: str, h: int, text_len: int, merged_tokens: int) -> None:
    """Sites hold a grid by token count; a text stream of the same length is told apart by token
    provenance. Measured before it: flux-tiny merged its text MLPs (0.15 off eager ToMA), and the UNet
    dropped the 256-token level and merged the next one. Now the pass merges what eager ``apply``
    merges, with the same output, and the same sites as with a text length no grid has."""
    from toma_export.models.inputs import example_inputs

    cfg = toma_export.ToMAConfig(ratio=0.5)
    model = load_model(name)
    kw = example_inputs(model, height=h, width=h, text_len=text_len)
    program = toma_export.rewrite(model, kw, cfg)
    other = toma_export.rewrite(model, example_inputs(model, height=h, width=h, text_len=text_len - 1), cfg)
    assert [(s.kind, s.name) for s in program.sites] == [(s.kind, s.name) for s in other.sites]
    assert program.sites and {s.tokens for s in program.sites} == {merged_tokens}
    assert not any("context" in s.name for s in program.sites), program.sites
    eager = load_model(name)
    toma_export.apply(eager, cfg)
    with torch.no_grad():
        ref, out, base = _output(eager(**kw)), _output(program(**kw)), _output(load_model(name)(**kw))
    assert (out - base).abs().max() > 1e-3  # merged
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_per_sample_outputs_at_batch_two_are_refused_before_writing(tmp_path: Path) -> None:
    """Z-Image returns one tensor per sample; an artifact carries one output, so batch 2 is refused
    (not cut to its first sample) and nothing is written."""
    from toma_export.engines.build import BuildRequest, build_artifact
    from toma_export.errors import ToMAError

    with pytest.raises(ToMAError, match="returns 2 output tensors.*--batch 1"):
        build_artifact(BuildRequest("z-image-tiny", ratio=0.5, height=128, width=128, batch=2, out=tmp_path / "a"),
                       progress=False)
    assert not (tmp_path / "a").exists()
