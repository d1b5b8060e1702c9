"""Artifacts on ONNX Runtime: build -> verify -> run, the drop-in wrapper, and every refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import toma_export
from toma_export.schedule import StepSchedule
from toma_export import ToMAConfig, ToMAConfigError, ToMAError
from toma_export.engines.artifact import ArtifactError
from toma_export.engines.build import BuildRequest, build_artifact, require_same_model
from toma_export.engines.load import ShapeMismatchError, load_artifact
from toma_export.engines.onnx_export import export_onnx
from toma_export.engines.onnxruntime import OrtEngine
from toma_export.engines.run import generate, pipeline_for
from toma_export.engines.verify import verify_artifact
from toma_export.models import load_model
from toma_export.models.inputs import example_inputs
from toma_export.models.pipelines import build_pipeline

SIZE = 256


@pytest.fixture(scope="module")
def sdxl_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("art") / "sdxl-toma"
    return build_artifact(BuildRequest("sdxl-tiny", batch=2, height=SIZE, width=SIZE, out=out, recompute_every=2), progress=False)


@pytest.fixture(scope="module")
def flux_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("art") / "flux-toma"
    return build_artifact(BuildRequest("flux-tiny", batch=1, height=SIZE, width=SIZE, out=out, recompute_every=2), progress=False)


@pytest.mark.parametrize("name", ["sdxl_artifact", "flux_artifact"])
def test_build_then_verify_matches_eager_toma(name: str, request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue(name)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["extra"]["variants"]) == {"select", "reuse"}
    assert manifest["config"]["method"] == "toma" and manifest["backend"] == "onnxruntime"
    assert set(manifest["files"]) == {"select.onnx", "reuse.onnx"}
    ok, rows = verify_artifact(folder, steps=3)
    assert ok, rows
    assert [r["variant"] for r in rows] == ["select", "reuse", "select"]
    for r in rows:
        assert r["max_vs_eager"] <= 1e-3
        assert r["max_vs_unmerged"] > 10 * r["max_vs_eager"]  # merging really happened


def _eager_images(name: str, steps: int) -> torch.Tensor:
    pipe = build_pipeline(name)
    pipe.set_progress_bar_config(disable=True)
    toma_export.apply(pipe, ToMAConfig(ratio=0.5, recompute_every=2))
    images, _ = generate(pipe, steps=steps, seed=0, height=SIZE, width=SIZE)
    return images


@pytest.mark.parametrize("name,fixture", [("sdxl-tiny", "sdxl_artifact"), ("flux-tiny", "flux_artifact")])
def test_pipeline_through_the_wrapper_matches_eager_pipeline(name: str, fixture: str, request: pytest.FixtureRequest) -> None:
    loaded = load_artifact(request.getfixturevalue(fixture))
    pipe = pipeline_for(loaded)
    pipe.set_progress_bar_config(disable=True)
    images, _ = generate(pipe, steps=3, seed=0, height=SIZE, width=SIZE)
    assert loaded.runner.selections == 2  # steps 0 and 2 select, step 1 reuses
    torch.testing.assert_close(images, _eager_images(name, 3), rtol=0, atol=2e-3)
    images2, _ = generate(pipe, steps=3, seed=0, height=SIZE, width=SIZE)  # a second generation resets
    assert loaded.runner.selections == 4
    torch.testing.assert_close(images2, images)


def test_inputs_outside_the_artifact_shapes_are_refused(sdxl_artifact: Path) -> None:
    loaded = load_artifact(sdxl_artifact)
    model = load_model("sdxl-tiny")
    for kw in (example_inputs(model, batch=2, height=128, width=SIZE), example_inputs(model, batch=1, height=SIZE, width=SIZE)):
        with pytest.raises(ShapeMismatchError, match=r"batch 2 at 256x256.*toma-export build --batch/--height/--width"):
            loaded.runner(kw, StepSchedule(1))


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_manifest_from_another_version_is_refused(sdxl_artifact: Path, tmp_path: Path) -> None:
    folder = _copy(sdxl_artifact, tmp_path / "old")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["versions"]["toma-export"] = "0.0.1"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"built by toma-export 0.0.1.*Rebuild"):
        load_artifact(folder)


def test_manifest_from_another_model_is_refused(sdxl_artifact: Path) -> None:
    manifest = load_artifact(sdxl_artifact).manifest
    with pytest.raises(ToMAError, match="built from another model.*weights_hash"):
        require_same_model(manifest, load_model("sdxl-tiny", seed=1))


def test_corrupted_and_half_written_artifacts_are_refused(sdxl_artifact: Path, tmp_path: Path) -> None:
    corrupted = _copy(sdxl_artifact, tmp_path / "corrupted")
    data = bytearray((corrupted / "reuse.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (corrupted / "reuse.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"reuse.onnx does not match its manifest hash"):
        load_artifact(corrupted)
    half = _copy(sdxl_artifact, tmp_path / "half")
    (half / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="no manifest.json.*build did not finish"):
        load_artifact(half)
    missing = _copy(sdxl_artifact, tmp_path / "missing")
    (missing / "select.onnx").unlink()
    with pytest.raises(ArtifactError, match="select.onnx is missing"):
        load_artifact(missing)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "nowhere")


def test_failed_builds_leave_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "a"
    with pytest.raises(ToMAConfigError, match="catome.*not static"):
        build_artifact(BuildRequest("sdxl-tiny", method="catome", out=out), progress=False)
    with pytest.raises(ToMAConfigError, match="ratio="):
        build_artifact(BuildRequest("sdxl-tiny", ratio=1.2, out=out), progress=False)
    with pytest.raises(ToMAError, match="TensorRT"):
        build_artifact(BuildRequest("sdxl-tiny", backend="tensorrt", out=out), progress=False)
    with pytest.raises(ToMAError, match="neither an embedded model"):
        build_artifact(BuildRequest("no-such-model", out=out), progress=False)
    assert list(tmp_path.iterdir()) == []  # no folder, no .partial leftovers


def test_existing_artifact_is_not_overwritten_without_force(sdxl_artifact: Path) -> None:
    with pytest.raises(ArtifactError, match="already exists.*--force"):
        build_artifact(BuildRequest("sdxl-tiny", out=sdxl_artifact), progress=False)


def test_missing_plugin_is_named(tmp_path: Path) -> None:
    """A graph with the TensorRT selection node cannot load in plain ONNX Runtime: say why."""

    class Select(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.toma.facility_location(x, 4)

    ep = torch.export.export(Select(), (torch.randn(1, 2, 16, 8),))
    path = export_onnx(ep, tmp_path / "plugin.onnx", selection="plugin")
    with pytest.raises(ToMAError, match="toma.*plugin node.*--selection unrolled"):
        OrtEngine(path)


def test_plugin_graph_runs_with_the_onnxruntime_pyop(tmp_path: Path) -> None:
    """The plugin node's contract, checked on CPU: the PyOp kernel gives the reference's indices."""
    import onnx
    import onnxruntime as ort

    from plugins.onnxruntime_op import register, to_onnxruntime_nodes
    from toma_export.core.selection import facility_location

    class Select(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.toma.facility_location(x, 4) * 2

    x = torch.randn(2, 3, 16, 8)
    path = export_onnx(torch.export.export(Select(), (x,)), tmp_path / "p.onnx", selection="plugin")
    model = onnx.load(str(path))
    assert [(n.domain, n.op_type) for n in model.graph.node if n.domain] == [("toma", "FacilityLocation")]
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(register())
    sess = ort.InferenceSession(to_onnxruntime_nodes(model).SerializeToString(), opts, providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert (torch.from_numpy(out) == facility_location(x, 4) * 2).all()
