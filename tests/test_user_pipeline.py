"""The user's own pipeline: a saved SDXL pipeline (VAE, two text encoders and tokenizers, scheduler)
runs with the artifact as its denoiser through ``run`` and through ``toma_export.load_engine``.

Tolerances: the engine against eager ToMA on the same pipeline <= 1e-3 (measured ~4e-6); a bf16
pipeline around the fp32 engine against the fp32 pipeline <= 0.15 max abs and <= 0.02 mean abs on
images in [0, 1] (measured 0.087 and 0.0095) (bf16 has 8 bits of mantissa; text encoders, VAE and scheduler run in bf16).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import toma_export
from toma_export import ToMAConfig, ToMAError
from toma_export.engines.build import BuildRequest, build_artifact
from toma_export.engines.load import load_artifact
from toma_export.engines.run import generate, pipeline_for, run_artifact, save_png
from toma_export.fsutil import current_umask
from toma_export.models.pipelines import (
    build_pipeline,
    prompt_embeddings,
    prompt_embeddings_for,
    prompt_seed,
    tiny_sdxl_pipeline,
    tiny_vae,
)
from toma_export.runtime.wrapper import ToMADenoiser

SIZE = 128
STEPS = 3
PROMPT = "a red cube on a table"


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved SDXL pipeline with its own components; its VAE differs from the embedded pipeline's."""
    folder = tmp_path_factory.mktemp("user") / "pipe"
    pipe = tiny_sdxl_pipeline()
    pipe.register_modules(vae=tiny_vae(seed=7))
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def artifact(pipeline_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("art") / "pipe-toma"
    req = BuildRequest(model=str(pipeline_folder), batch=2, height=SIZE, width=SIZE, out=out, recompute_every=2)
    return build_artifact(req, progress=False)


def _saved_pipeline(folder: Path) -> Any:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(pipe: Any, prompt: str = PROMPT) -> torch.Tensor:
    return generate(pipe, steps=STEPS, seed=0, height=SIZE, width=SIZE, prompt=prompt)[0]


@pytest.fixture(scope="module")
def eager_toma(pipeline_folder: Path) -> torch.Tensor:
    """The saved pipeline itself, eager ToMA at the artifact's config, on PROMPT."""
    pipe = _saved_pipeline(pipeline_folder)
    toma_export.apply(pipe, ToMAConfig(ratio=0.5, recompute_every=2))
    return _images(pipe)


def test_manifest_names_the_pipeline(artifact: Path, pipeline_folder: Path) -> None:
    model = load_artifact(artifact).manifest.model
    assert model.name == str(pipeline_folder)
    assert (model.source, model.component, model.subfolder) == ("local", "unet", "unet")


def test_run_loads_the_saved_pipelines_components(artifact: Path, pipeline_folder: Path, eager_toma: torch.Tensor) -> None:
    pipe = pipeline_for(load_artifact(artifact))
    pipe.set_progress_bar_config(disable=True)
    saved = _saved_pipeline(pipeline_folder)
    assert isinstance(pipe.unet, ToMADenoiser)
    for name in ("text_encoder", "text_encoder_2", "vae"):
        got, want = getattr(pipe, name).state_dict(), getattr(saved, name).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), name
    assert pipe.tokenizer("a cat").input_ids == saved.tokenizer("a cat").input_ids
    assert type(pipe.scheduler) is type(saved.scheduler)
    images = _images(pipe)
    # The same images as the saved pipeline itself with eager ToMA: its text encoders and VAE were used
    # (the embedded pipeline has no text encoders and another VAE).
    torch.testing.assert_close(images, eager_toma, rtol=0, atol=1e-3)
    assert (_images(pipe, "a blue sphere") - images).abs().max() > 1e-2  # the prompt reaches the denoiser


def test_run_artifact_writes_the_pipelines_image(artifact: Path, eager_toma: torch.Tensor, tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "image.png"
    res = run_artifact(artifact, steps=STEPS, seed=0, out=out, prompt=PROMPT)
    assert res.path == out and res.selections == 2
    png = torch.from_numpy(np.asarray(Image.open(out))).permute(2, 0, 1).float() / 255
    assert (png - eager_toma[0]).abs().max() <= 1 / 255 + 1e-3
    assert out.stat().st_mode & 0o777 == 0o666 & ~current_umask()


def test_run_decodes_with_the_saved_vae(artifact: Path, pipeline_folder: Path, tmp_path: Path) -> None:
    """A saved VAE whose decoder outputs a known constant colour: run's PNG is exactly that colour."""
    from diffusers import AutoencoderKL
    from PIL import Image

    vae_dir = pipeline_folder / "vae"
    backup = tmp_path / "vae-backup"
    shutil.copytree(vae_dir, backup)
    try:
        vae: Any = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True)
        with torch.no_grad():
            vae.decoder.conv_out.weight.zero_()
            vae.decoder.conv_out.bias.copy_(torch.tensor([0.5, -0.5, 0.0]))  # -> pixels 0.75, 0.25, 0.5
        vae.save_pretrained(vae_dir)
        out = tmp_path / "constant.png"
        run_artifact(artifact, steps=2, seed=0, out=out, prompt=PROMPT)
        pixels = np.asarray(Image.open(out)).reshape(-1, 3)
        assert (pixels == np.array([191, 64, 128], dtype=np.uint8)).all()
    finally:
        shutil.rmtree(vae_dir)
        shutil.copytree(backup, vae_dir)


def test_load_engine_in_the_users_pipeline_fp32_and_bf16(artifact: Path, pipeline_folder: Path, eager_toma: torch.Tensor) -> None:
    pipe = toma_export.load_engine(_saved_pipeline(pipeline_folder), artifact)
    assert isinstance(pipe.unet, ToMADenoiser) and pipe.unet.dtype == torch.float32
    fp32 = _images(pipe)
    torch.testing.assert_close(fp32, eager_toma, rtol=0, atol=1e-3)

    half = _saved_pipeline(pipeline_folder).to(torch.bfloat16)
    assert half.unet.dtype == torch.bfloat16
    half = toma_export.load_engine(half, artifact)
    assert half.unet.dtype == torch.bfloat16 and half.unet.engine_dtype == torch.float32
    bf16 = _images(half)
    assert bf16.dtype == torch.bfloat16 and torch.isfinite(bf16.float()).all()
    diff = (bf16.float() - fp32).abs()
    assert diff.max() <= 0.15 and diff.mean() <= 0.02, (diff.max(), diff.mean())
    # Casting after the swap moves the wrapper's pipeline side too; the engine stays fp32.
    half.to(torch.float32)
    assert half.unet.dtype == torch.float32 and half.unet.engine_dtype == torch.float32


def test_load_engine_refuses_another_model(artifact: Path, pipeline_folder: Path) -> None:
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    from toma_export.models.registry import SDXL_TINY

    with pytest.raises(ToMAError, match="is a FluxTransformer2DModel"):
        toma_export.load_engine(build_pipeline("flux-tiny"), artifact)
    with torch.device("meta"):
        other: Any = UNet2DConditionModel(**dict(SDXL_TINY, layers_per_block=2))
    pipe = StableDiffusionXLPipeline(vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                     tokenizer_2=None, unet=other, scheduler=None)
    with pytest.raises(ToMAError, match="another config"):
        toma_export.load_engine(pipe, artifact)
    # Same architecture, other weights: refused only when asked to compare weights.
    reseeded = build_pipeline("sdxl-tiny", seed=1)
    with pytest.raises(ToMAError, match="other weights"):
        toma_export.load_engine(reseeded, artifact, check_weights=True)
    assert isinstance(toma_export.load_engine(reseeded, artifact).unet, ToMADenoiser)
    assert isinstance(toma_export.load_engine(_saved_pipeline(pipeline_folder), artifact, check_weights=True).unet,
                      ToMADenoiser)


def test_prompt_embeddings_for_embedded_pipelines_are_deterministic() -> None:
    pipe = build_pipeline("sdxl-tiny")
    seed = int.from_bytes(hashlib.sha256(PROMPT.encode("utf-8")).digest()[:8], "big") & (2**63 - 1)
    assert prompt_seed(PROMPT) == seed
    a, b = prompt_embeddings_for(pipe, PROMPT), prompt_embeddings_for(pipe, PROMPT)
    assert set(a) == {"prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    expected = prompt_embeddings(pipe, batch=1, seed=seed)
    assert torch.equal(a["prompt_embeds"], expected["prompt_embeds"]) and a["prompt_embeds"].shape == (1, 77, 32)
    assert not a["negative_prompt_embeds"].any()
    other = prompt_embeddings_for(pipe, "another prompt", negative_prompt=PROMPT)
    assert not torch.equal(other["prompt_embeds"], a["prompt_embeds"])
    assert torch.equal(other["negative_prompt_embeds"], a["prompt_embeds"])
    flux = prompt_embeddings_for(build_pipeline("flux-tiny"), PROMPT)
    assert set(flux) == {"prompt_embeds", "pooled_prompt_embeds"} and flux["prompt_embeds"].shape == (1, 16, 32)
    # A pipeline with its own text encoders encodes the strings itself.
    assert prompt_embeddings_for(tiny_sdxl_pipeline(), PROMPT, "blurry") == {"prompt": PROMPT, "negative_prompt": "blurry"}


def test_generate_with_a_prompt_on_the_embedded_pipeline() -> None:
    pipe = build_pipeline("sdxl-tiny")
    pipe.set_progress_bar_config(disable=True)
    a = generate(pipe, steps=2, seed=0, height=64, width=64, prompt=PROMPT)[0]
    b = generate(pipe, steps=2, seed=0, height=64, width=64, prompt=PROMPT)[0]
    c = generate(pipe, steps=2, seed=0, height=64, width=64, prompt="something else")[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3


def test_save_png_uses_the_umask_and_refuses_a_folder(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        save_png(torch.full((3, 4, 4), 0.5), tmp_path / "sub" / "x.png")
    finally:
        os.umask(old)
    assert (tmp_path / "sub" / "x.png").stat().st_mode & 0o777 == 0o640
    with pytest.raises(ToMAError, match="is a folder"):
        save_png(torch.zeros(3, 4, 4), tmp_path)


def test_verify_finds_a_moved_model_with_model_option(artifact: Path, pipeline_folder: Path, tmp_path: Path) -> None:
    """The pipeline folder moved after the build: verify refuses with a clear error, and passes with
    --model naming the new place (the identity must still match)."""
    import shutil

    from toma_export.cli import main
    from toma_export.engines.verify import verify_artifact

    moved = tmp_path / "moved"
    shutil.copytree(pipeline_folder, moved)
    hidden = pipeline_folder.with_name(pipeline_folder.name + "-away")
    pipeline_folder.rename(hidden)
    try:
        assert main(["verify", str(artifact), "--steps", "1"]) == 2  # the manifest's folder is gone: a ToMAError
        ok, rows = verify_artifact(artifact, steps=2, model=moved)
        assert ok and len(rows) == 2, rows
        assert main(["verify", str(artifact), "--steps", "1", "--model", str(moved)]) == 0
    finally:
        hidden.rename(pipeline_folder)
