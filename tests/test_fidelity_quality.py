"""eval_quality on tiny random models: metric arithmetic and the script's flow, no downloads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import toma_export
from toma_export.bench.quality import Extractors, clip_score, dino_delta, frechet_distance, metrics
from toma_export.config import ToMAConfig
from toma_export.models.inputs import example_inputs
from toma_export.models.registry import load_model


def _script():
    spec = importlib.util.spec_from_file_location("eval_quality", Path(__file__).parents[1] / "scripts/eval_quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_extractor(dim: int = 8, seed: int = 0):
    """A tiny random conv feature net standing in for DINO / Inception / CLIP-image."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, dim, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    return lambda images: net(images).detach()


def test_metric_arithmetic():
    f = tiny_extractor()
    x = torch.rand(4, 3, 16, 16)
    assert dino_delta(f, x, x) == pytest.approx(0.0, abs=1e-12)
    assert dino_delta(f, torch.rand(4, 3, 16, 16), x) > 0
    a = np.random.default_rng(0).normal(size=(200, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 1.0) == pytest.approx(3.0, abs=1e-6)  # mean shift of 1 in 3 dims
    text = lambda prompts: f(torch.ones(len(prompts), 3, 16, 16))  # noqa: E731
    s = clip_score(f, text, torch.ones(2, 3, 16, 16), ["a", "b"])
    assert s == pytest.approx(100.0)
    assert set(metrics(Extractors(dino=f, fid=f), x, x, ["p"] * 4)) == {"dino_delta", "fid"}


def test_eval_quality_with_a_tiny_random_unet(tmp_path):
    """The 'pipeline' is sdxl-tiny denoising fixed latents; images are its output mapped to [0, 1]."""
    unet = load_model("sdxl-tiny")
    base = example_inputs(unet, height=64, width=64)

    def generate(config: ToMAConfig | None, prompts, seeds) -> torch.Tensor:
        if config is not None:
            toma_export.apply(unet, config)
        try:
            out = []
            with torch.inference_mode():
                for i, seed in enumerate(seeds):
                    g = torch.Generator().manual_seed(100 * seed + i)
                    kw = dict(base, sample=torch.randn(base["sample"].shape, generator=g))
                    eps = unet(**kw).sample[0, :3]
                    out.append(torch.sigmoid(torch.nn.functional.interpolate(eps[None], size=32)[0]))
            return torch.stack(out)
        finally:
            if config is not None:
                toma_export.remove(unet)

    f = tiny_extractor()
    ex = Extractors(dino=f, clip_image=f, clip_text=lambda p: f(torch.ones(len(p), 3, 32, 32)), fid=f)
    out = tmp_path / "q.json"
    assert _script().main(["--methods", "toma,todo", "--ratios", "0,0.5", "--seeds", "1", "--json", str(out)],
                          generate=generate, extractors=ex) == 0
    rows = json.loads(out.read_text())["results"]
    by = {(r["method"], r["ratio"]): r for r in rows}
    assert by[("none", 0.0)]["dino_delta"] == pytest.approx(0.0, abs=1e-9)
    assert by[("toma", 0.0)]["dino_delta"] == pytest.approx(0.0, abs=1e-6)  # ratio 0 is the identity
    assert by[("toma", 0.5)]["dino_delta"] > 0
    assert {"dino_delta", "clip_score", "fid"} <= set(by[("toma", 0.5)])


def test_eval_quality_says_what_is_missing(capsys):
    assert _script().main(["--pipeline", "/nonexistent"], generate=lambda c, p, s: torch.zeros(1, 3, 8, 8)) == 2
    assert "--dino" in capsys.readouterr().err
