"""Hugging Face Hub ids: loaded through diffusers' from_pretrained and the HF cache, with no network.

Tiny models are placed in a local HF-cache layout (``models--ORG--NAME/snapshots/<commit>/...`` plus
``refs/<branch or tag>``) under ``HF_HOME`` in tmp_path; sockets are blocked, so any attempt to reach the
network fails the test.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import torch

from toma_export import UnsupportedModelError
from toma_export.models.identity import config_hash, model_identity, weights_hash
from toma_export.models.registry import load_model, model_shell

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40
COMMIT_P = "c" * 40


def _snapshot(cache: Path, repo: str, commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    (root / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (root / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HF_HOME with toma-test/tiny-unet (main: seed 0 + fp16 variant; tag v1: seed 1) and toma-test/tiny-pipe."""
    home = tmp_path_factory.mktemp("hf_home")
    cache = home / "hub"
    unet: Any = load_model("sdxl-tiny")
    snap = _snapshot(cache, "toma-test/tiny-unet", COMMIT_A)
    unet.save_pretrained(snap)
    unet.half().save_pretrained(snap, variant="fp16")
    other: Any = load_model("sdxl-tiny", seed=1)
    other.save_pretrained(_snapshot(cache, "toma-test/tiny-unet", COMMIT_B, refs=("v1",)))
    from toma_export.models.pipelines import tiny_sdxl_pipeline

    tiny_sdxl_pipeline().save_pretrained(_snapshot(cache, "toma-test/tiny-pipe", COMMIT_P))
    return home


@pytest.fixture(autouse=True)
def offline(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(hub_cache))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    return hub_cache


def test_hub_model_id_loads_from_the_cache() -> None:
    model = load_model("toma-test/tiny-unet")
    assert weights_hash(model) == weights_hash(load_model("sdxl-tiny"))
    ident = model_identity(model, "toma-test/tiny-unet")
    assert ident["source"] == "hub" and ident["commit"] == COMMIT_A
    assert ident["revision"] is None and ident["variant"] is None and ident["subfolder"] is None
    assert ident["component"] is None


def test_cached_id_needs_no_offline_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    model = load_model("toma-test/tiny-unet")  # found in the cache: local_files_only, sockets stay unused
    assert weights_hash(model) == weights_hash(load_model("sdxl-tiny"))


@pytest.mark.parametrize("revision", ["v1", COMMIT_B])
def test_revision_picks_the_snapshot(revision: str) -> None:
    model = load_model("toma-test/tiny-unet", revision=revision)
    assert weights_hash(model) == weights_hash(load_model("sdxl-tiny", seed=1))
    ident = model_identity(model, "toma-test/tiny-unet")
    assert ident["revision"] == revision and ident["commit"] == COMMIT_B


def test_variant_loads_that_weights_file() -> None:
    model = load_model("toma-test/tiny-unet", variant="fp16")
    expected = load_model("sdxl-tiny").half().float().state_dict()
    got = model.state_dict()
    assert model.dtype == torch.float32 and set(got) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0)
    assert weights_hash(model) != weights_hash(load_model("sdxl-tiny"))  # really the fp16 file
    assert model_identity(model, "toma-test/tiny-unet")["variant"] == "fp16"


def test_pipeline_id_gives_its_denoiser_and_subfolder() -> None:
    model = load_model("toma-test/tiny-pipe")
    assert type(model).__name__ == "UNet2DConditionModel"
    assert weights_hash(model) == weights_hash(load_model("sdxl-tiny"))
    ident = model_identity(model, "toma-test/tiny-pipe")
    assert (ident["source"], ident["component"], ident["subfolder"], ident["commit"]) == ("hub", "unet", "unet", COMMIT_P)
    explicit = load_model("toma-test/tiny-pipe", subfolder="unet")
    assert weights_hash(explicit) == weights_hash(model)
    assert model_identity(explicit, "toma-test/tiny-pipe")["component"] == "unet"


def test_model_shell_of_hub_ids_is_weightless() -> None:
    for repo, kwargs in (("toma-test/tiny-unet", {}), ("toma-test/tiny-pipe", {}), ("toma-test/tiny-unet", {"revision": "v1"})):
        shell = model_shell(repo, **kwargs)
        assert shell.device.type == "meta"
        assert config_hash(shell) == config_hash(load_model("sdxl-tiny"))


def test_uncached_id_offline_is_refused_clearly() -> None:
    with pytest.raises(UnsupportedModelError, match="HF_HUB_OFFLINE is set"):
        load_model("toma-test/not-there")
    with pytest.raises(UnsupportedModelError, match="HF_HUB_OFFLINE is set"):
        load_model("toma-test/tiny-unet", revision="no-such-branch")
    with pytest.raises(UnsupportedModelError, match="weights could not be loaded"):
        load_model("toma-test/tiny-unet", variant="bf16")
    with pytest.raises(UnsupportedModelError, match="HF_HUB_OFFLINE is set"):
        model_shell("toma-test/not-there")


def test_hub_options_on_names_and_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="does not apply to the embedded model"):
        load_model("sdxl-tiny", revision="main")
    with pytest.raises(UnsupportedModelError, match="neither an embedded model"):
        load_model("sdxl-tinyy")  # a mistyped name is not tried as a Hub id
    with pytest.raises(UnsupportedModelError, match="applies to Hub ids"):
        load_model(tmp_path, revision="main")


def test_run_loads_a_hub_pipelines_components() -> None:
    """What ``run`` does for an artifact built from a Hub pipeline id: that pipeline, from the cache."""
    from toma_export.engines.manifest import ModelRecord
    from toma_export.engines.run import _load_source_pipeline
    from toma_export.models.spec import spec_for

    model = load_model("toma-test/tiny-pipe")
    record = ModelRecord.from_identity(model_identity(model, "toma-test/tiny-pipe"), spec_for(model))
    shell = model_shell("toma-test/tiny-pipe", revision=record.commit, subfolder=record.subfolder)
    pipe = _load_source_pipeline(record, shell)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and pipe.unet is shell
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection" and pipe.tokenizer is not None


# --- no network: refused at once, pointing to a local folder or the HF cache -----------------------
@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """HF_HUB_OFFLINE unset, an empty cache, and an endpoint nothing listens on (the probe fails at once)."""
    import toma_export.models.registry as registry

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    monkeypatch.setattr(registry, "_PROBES", {})
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def test_uncached_id_without_network_is_refused_in_under_2_s(no_network: None, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import time

    from toma_export.cli import main

    out = tmp_path / "art"
    start = time.perf_counter()
    rc = main(["build", "toma-test/not-cached", "--out", str(out), "--quiet"])
    took = time.perf_counter() - start
    err = capsys.readouterr().err
    assert rc == 2 and took < 2.0, (took, err)
    assert "there is no network" in err and "local folder" in err and "hf download toma-test/not-cached" in err, err
    assert "HF_HUB_CACHE" in err and not out.exists()


def test_manifest_naming_an_uncached_hub_id_is_refused_at_once(no_network: None) -> None:
    import time

    from toma_export.config import ToMAConfig
    from toma_export.engines.manifest import BuildDetails, Manifest, ModelRecord, Shapes
    from toma_export.engines.model_source import source_shell
    from toma_export.models.spec import UNET

    model = ModelRecord("toma-test/not-cached", "UNet2DConditionModel", "0" * 16, "0" * 16, UNET, source="hub")
    manifest = Manifest(model=model, config=ToMAConfig(), backend="onnxruntime", shapes=Shapes(1, 64, 64, []),
                        extra=BuildDetails({"single": "single.onnx"}, [], "", "fp32", "unrolled", [], 0))
    start = time.perf_counter()
    with pytest.raises(UnsupportedModelError, match="records \\(toma-test/not-cached\\).*no network.*--model"):
        source_shell(manifest)
    assert time.perf_counter() - start < 2.0


def test_a_hanging_network_is_given_up_within_the_probe_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connect (or DNS lookup) that hangs: the probe answers 'unreachable' after PROBE_TIMEOUT_S."""
    import threading
    import time

    import toma_export.models.registry as registry

    release = threading.Event()
    monkeypatch.setattr(registry, "_PROBES", {})
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: release.wait(30))
    start = time.perf_counter()
    try:
        assert registry.hub_reachable(timeout=0.3) is False
    finally:
        release.set()
    assert time.perf_counter() - start < 1.0
