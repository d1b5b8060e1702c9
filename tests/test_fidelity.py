"""Fidelity metrics and the real-image inputs (sdxl-tiny / flux-tiny, tiny sizes)."""

from __future__ import annotations

import json

import pytest
import torch

from toma_export.bench.fidelity import (
    alpha_bar, compare, encode, evaluate, frontier_points, load_image, pack_flux, projection, samples,
)
from toma_export.config import ToMAConfig
from toma_export.models.registry import load_model


def test_compare_identical_is_zero_error_unit_cosine():
    x = torch.randn(2, 4, 8, 8)
    rel, cos = compare(x, x.clone())
    assert rel == 0.0 and cos == pytest.approx(1.0, abs=1e-12)
    rel, cos = compare(-x, x)
    assert rel == pytest.approx(2.0) and cos == pytest.approx(-1.0)


def test_images_and_encoding_are_real_and_deterministic():
    img = load_image("chelsea", 64, 96)  # non-square: centre crop to 2:3, then resize
    assert img.shape == (3, 64, 96) and -1.0 <= img.min() < img.max() <= 1.0
    lat = encode(img.unsqueeze(0), 4)
    assert lat.shape == (1, 4, 8, 12)
    assert torch.equal(lat, encode(img.unsqueeze(0), 4))
    assert lat.mean().abs() < 1e-5 and lat.std() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(projection(4).norm(dim=1), torch.ones(4))
    assert pack_flux(torch.randn(1, 16, 8, 8)).shape == (1, 16, 64)
    assert 0 < alpha_bar(999) < alpha_bar(500) < alpha_bar(0) < 1


@pytest.mark.parametrize("name", ["sdxl-tiny", "flux-tiny"])
def test_ratio_zero_and_none_are_exact_and_merging_is_not(name):
    model = load_model(name)
    inputs = samples(model, ["astronaut", "coffee"], [800, 200], 128, 128)
    assert len(inputs) == 4
    cfgs = [("toma0", ToMAConfig(ratio=0.0)), ("none", ToMAConfig(ratio=0.5, method="none")),
            ("toma", ToMAConfig(ratio=0.5)), ("tomesd", ToMAConfig(ratio=0.5, method="tomesd"))]
    rows = {r["variant"]: r for r in evaluate(model, cfgs, inputs)}
    for v in ("toma0", "none"):
        assert rows[v]["rel_error_max"] <= 1e-6 and rows[v]["cosine_min"] == pytest.approx(1.0, abs=1e-9)
    for v in ("toma", "tomesd"):
        assert 0 < rows[v]["rel_error"] < 1 and rows[v]["cosine"] < 1
        assert set(rows[v]["per_timestep"]) == {800, 200} and rows[v]["n"] == 4
    assert not hasattr(model, "_toma_patch")  # evaluate leaves the model unpatched


def test_frontier_joins_speedups_and_plots(tmp_path):
    from toma_export.bench.plots import frontier_plot

    fid = [dict(variant="toma", method="toma", ratio=0.5, rel_error=0.1),
           dict(variant="toma[attn]", method="toma", ratio=0.5, rel_error=0.05)]
    bench = [dict(workload="w", backend="eager", method="toma", variant="toma", ratio=0.5, speedup=1.5),
             dict(workload="w", backend="inductor", method="toma", variant="toma", ratio=0.5, speedup=2.0)]
    pts = frontier_points(fid, bench)
    assert [(p["method"], p["speedup"]) for p in pts] == [("toma", 1.5)]  # unmatched variants are left out
    path = frontier_plot(pts, tmp_path / "f.png")
    assert path.stat().st_size > 1000


def test_eval_fidelity_script(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("eval_fidelity", Path(__file__).parents[1] / "scripts/eval_fidelity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"results": [
        dict(workload="w", backend="eager", method="toma", variant="toma", ratio=0.5, speedup=1.4),
        dict(workload="w", backend="eager", method="todo", variant="todo", ratio=0.5, speedup=1.2)]}))
    out = tmp_path / "fid.json"
    assert mod.main(["--model", "sdxl-tiny", "--size", "64", "--images", "rocket", "--timesteps", "500",
                     "--methods", "toma,todo", "--ratios", "0.5", "--bench", str(bench),
                     "--frontier", str(tmp_path / "fr.png"), "--json", str(out), "--quiet"]) == 0
    rows = json.loads(out.read_text())["results"]
    assert {r["variant"]: r["speedup"] for r in rows} == {"toma": 1.4, "todo": 1.2}
    assert (tmp_path / "fr.png").exists()


def test_eval_fidelity_cuts_keep_the_per_site_error(tmp_path):
    """The tile-order cut changes no value: its rows' errors equal the per-site path's."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("eval_fidelity", Path(__file__).parents[1] / "scripts/eval_fidelity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "fid.json"
    assert mod.main(["--model", "sdxl-tiny", "--size", "128", "--images", "rocket", "--timesteps", "500",
                     "--methods", "", "--ratios", "0.5", "--cuts", "--max-downsample", "4", "--json", str(out),
                     "--quiet"]) == 0
    rows = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"toma[per-site order]", "toma[tile order]", "toma[tile order, shared weights]",
                         "toma[tile order, +cross]", "toma[tile order, +cross, shared weights]"}
    assert rows["toma[tile order]"]["rel_error"] > 1e-3  # it merged
    assert rows["toma[tile order]"]["rel_error"] == pytest.approx(rows["toma[per-site order]"]["rel_error"], rel=1e-4)


@pytest.mark.parametrize("name, frames, ndim", [("sd35-tiny", 1, 4), ("wan-tiny", 5, 5), ("qwen-image-tiny", 1, 3),
                                                ("flux2-tiny", 1, 3)])
def test_photo_latents_take_each_family_layout(name, frames, ndim):
    """The stand-in encoder lays the photo out as the model's own latents (4-D, video 5-D, packed 2x2):
    a still clip repeats one frame, packed tokens are the 2x2 patches, and the flow-matching noise
    level reaches the model on its pipeline's timestep scale."""
    from toma_export.bench.fidelity import latent_key, photo_latents
    from toma_export.models.inputs import example_inputs

    model = load_model(name)
    base = example_inputs(model, height=64, width=64, frames=frames)
    key = latent_key(base, 64, 64)
    x0 = photo_latents(load_image("coffee", 64, 64).unsqueeze(0), base[key], 64, 64)
    assert x0.shape == base[key].shape and x0.ndim == ndim
    if ndim == 5:
        assert torch.equal(x0[:, :, 0], x0[:, :, -1])
    (s,) = samples(model, ["coffee"], [300], 64, 64, frames=frames)
    assert s.kwargs[key].shape == base[key].shape
    want = 0.3 if float(base["timestep"].max()) <= 1 else 300.0
    assert float(s.kwargs["timestep"]) == pytest.approx(want)


def test_transformer_fidelity_rows_and_refusals():
    """FLUX.2 through the graph hook: ratio 0 is exact, ratio 0.5 perturbs, for ToMA and for ToDo (the
    key/value graph pass); ToMeSD (no adapter for this family) is a row naming the refusal, not a crash."""
    model = load_model("flux2-tiny")
    inputs = samples(model, ["astronaut"], [800, 300], 64, 64)
    cfgs = [("toma0", ToMAConfig(ratio=0.0)), ("toma", ToMAConfig(ratio=0.5)),
            ("todo", ToMAConfig(ratio=0.5, method="todo")), ("tomesd", ToMAConfig(ratio=0.5, method="tomesd"))]
    rows = {r["variant"]: r for r in evaluate(model, cfgs, inputs)}
    assert rows["toma0"]["rel_error_max"] <= 1e-6
    assert 0 < rows["toma"]["rel_error"] < 1 and rows["toma"]["n"] == 2
    assert 0 < rows["todo"]["rel_error"] < 1 and rows["todo"]["n"] == 2 and "refused" not in rows["todo"]
    assert "tomesd" in rows["tomesd"]["refused"].lower() and rows["tomesd"]["n"] == 0
    import toma_export
    from toma_export.errors import ToMAError

    with pytest.raises(ToMAError, match="not patched"):  # evaluate left the model unpatched
        toma_export.state(model)


def test_z_image_per_sample_lists_through_samples_and_evaluate():
    """Z-Image takes per-sample lists (``x``: ``(C, 1, h, w)`` each) and returns one: the photo is laid out
    per element, ratio 0 reproduces the unmerged model exactly, ratio 0.5 perturbs it but stays finite."""
    import math

    model = load_model("z-image-tiny")
    inputs = samples(model, ["astronaut"], [800], 128, 128)
    (x,) = inputs[0].kwargs["x"]
    assert x.shape == (4, 1, 16, 16) and isinstance(inputs[0].kwargs["cap_feats"], list)
    rows = {r["variant"]: r for r in evaluate(model, [("toma0", ToMAConfig(ratio=0.0)),
                                                      ("toma", ToMAConfig(ratio=0.5))], inputs)}
    assert rows["toma0"]["rel_error_max"] <= 1e-6
    assert math.isfinite(rows["toma"]["rel_error"]) and 0 < rows["toma"]["rel_error"] < 1 and rows["toma"]["n"] == 1


def test_z_image_timestep_convention_is_reversed():
    """ZImagePipeline passes t = (1000 - timestep) / 1000: at step 0 the model gets the clean photo's latents
    with t = 1, and noise level 0.3 is t = 0.7 (its example t of 0.5 cannot tell the direction)."""
    from toma_export.bench.fidelity import photo_latents
    from toma_export.models.inputs import example_inputs

    model = load_model("z-image-tiny")
    clean, noisy = samples(model, ["coffee"], [0, 300], 64, 64)
    (want,) = photo_latents(load_image("coffee", 64, 64).unsqueeze(0), example_inputs(model, height=64, width=64)["x"],
                            64, 64)
    assert torch.equal(clean.kwargs["x"][0], want)
    assert float(clean.kwargs["t"]) == 1.0 and float(noisy.kwargs["t"]) == pytest.approx(0.7)
    assert not torch.equal(noisy.kwargs["x"][0], want)


def test_latent_found_by_shape_and_text_never_wins():
    """At 64x32 px Z-Image's 8 caption features ``(8, 32)`` also fit the packed 2x2 layout (8 tokens): the
    input as wide as ``in_channels`` is the latent; text named ``encoder_hidden_states*`` never is."""
    from toma_export.bench.fidelity import latent_key, timestep_key
    from toma_export.models.inputs import example_inputs

    model = load_model("z-image-tiny")
    base = example_inputs(model, height=64, width=32)
    assert latent_key(base, 64, 32, model.config.in_channels) == "x" and timestep_key(base) == "t"
    with pytest.raises(ValueError, match=r"several \(x, cap_feats\)"):
        latent_key(base, 64, 32)
    packed_text = dict(encoder_hidden_states=torch.randn(1, 8, 32), hidden_states=torch.randn(1, 8, 16))
    assert latent_key(packed_text, 64, 32) == "hidden_states"


def test_model_without_a_latent_is_a_clear_error(monkeypatch):
    """A model whose inputs carry no image-shaped latent: the error names every input and its shape."""
    import toma_export.bench.fidelity as fidelity

    model = load_model("z-image-tiny")
    monkeypatch.setattr(fidelity, "example_inputs", lambda *a, **k: dict(
        tokens=torch.randn(1, 7, 4), encoder_hidden_states=torch.randn(1, 16, 4), timestep=torch.ones(1)))
    with pytest.raises(ValueError, match=r"none of the inputs \(tokens: \(1, 7, 4\), encoder_hidden_states: "
                                         r"\(1, 16, 4\), timestep: \(1,\)\)"):
        samples(model, ["coffee"], [300], 64, 64)
