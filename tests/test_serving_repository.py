"""``export-triton``: the repository's layout and configs, its model.py, and the BLS pipeline's results.

The BLS calls are made here by a stand-in that runs the exported ``model.onnx`` with ONNX Runtime (what
Triton's ONNX Runtime backend runs); the stock Triton container itself is not available here.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from google.protobuf import text_format

from toma_export.engines.artifact import ArtifactError
from toma_export.serving.contract import GenerationRequest
from toma_export.serving.repository import MODEL_PY, export_triton


def test_export_refuses_corrupted_artifact_and_writes_nothing(tmp_path: Path) -> None:
    art = tmp_path / "art"
    art.mkdir()
    (art / "manifest.json").write_text("{}")
    with pytest.raises(ArtifactError):
        export_triton(art, tmp_path / "repo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_model_py_imports_the_backend_model() -> None:
    ns: dict[str, Any] = {}
    exec(compile(MODEL_PY, "model.py", "exec"), ns)
    model = ns["TritonPythonModel"]()
    assert callable(model.initialize) and callable(model.execute)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from toma_export.engines.build import BuildRequest, build_artifact

    out = tmp_path_factory.mktemp("serving") / "sdxl64"
    return build_artifact(BuildRequest("sdxl-tiny", height=64, width=64, batch=2, dynamic_batch=True, out=out),
                          progress=False)


def _ort_variant(repo: Path) -> Callable[..., Callable[[list[Any]], list[Any]]]:
    """What BLS + Triton's ONNX Runtime backend do, run directly: the repository's model.onnx, fed by name."""
    import onnxruntime as ort
    import torch

    def make(model: str, inputs: list[dict[str, Any]], outputs: list[str]) -> Callable[[list[Any]], list[Any]]:
        session = ort.InferenceSession(str(repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])

        def run(flat: list[Any]) -> list[Any]:
            feeds = {s["name"]: t.detach().numpy().astype(s["numpy"]) for s, t in zip(inputs, flat)}
            return [torch.from_numpy(np.array(a)) for a in session.run(outputs, feeds)]

        return run

    return make


@pytest.mark.slow
def test_exported_repository_configs_and_bls_pipeline_match_the_artifact(artifact: Path, tmp_path: Path) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    from toma_export.serving.backend import bls_generator
    from toma_export.serving.pipeline import generator_for_source

    repo = export_triton(artifact, tmp_path / "repo", max_batch=4, instances=2)
    with pytest.raises(Exception, match="exists"):
        export_triton(artifact, repo)
    configs = {p.parent.name: text_format.Parse(p.read_text(), mc.ModelConfig()) for p in repo.glob("*/config.pbtxt")}
    assert set(configs) == {"toma_pipeline", "toma_denoiser_select", "toma_denoiser_reuse"}
    assert configs["toma_pipeline"].backend == "python" and configs["toma_pipeline"].max_batch_size == 4
    for name in ("toma_denoiser_select", "toma_denoiser_reuse"):
        c = configs[name]
        assert c.platform == "onnxruntime_onnx" and c.instance_group[0].count == 2
        assert (repo / name / "1" / "model.onnx").is_file()
    spec = json.loads((repo / "toma_pipeline" / "1" / "pipeline.json").read_text())
    assert spec["model"] == "sdxl-tiny" and set(spec["variants"]) == {"select", "reuse"}
    # The model.py file itself imports (toma_export on the path, as in the server's Python).
    mod_spec = importlib.util.spec_from_file_location("toma_model_py", repo / "toma_pipeline" / "1" / "model.py")
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    assert hasattr(module, "TritonPythonModel")

    bls = bls_generator(spec, variant=_ort_variant(repo))
    direct = generator_for_source(artifact)
    reqs = [GenerationRequest(f"p{i}", i, 3, 5.0) for i in range(3)]
    got, want = bls.generate_float(reqs), [direct.generate_float([r])[0] for r in reqs]
    for g, w in zip(got, want):
        assert float((g - w).abs().max()) <= 1e-3
