"""Video denoisers (issue 11): ``--frames`` on build / verify / inspect, one frame rule, verify against eager apply.

Wan packs 4k+1 pixel frames into k+1 latent frames (``models.architectures.latent_frames``); image
models take one frame. Bad counts are refused before anything loads or is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toma_export.cli import main
from toma_export.errors import ToMAConfigError
from toma_export.models.architectures import latent_frames

pytestmark = pytest.mark.usefixtures("one_thread_quiet_fakes")


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def test_latent_frames_rule() -> None:
    assert [latent_frames("wan", f, patch_size=(1, 2, 2)) for f in (1, 5, 9, 17)] == [1, 2, 3, 5]
    assert latent_frames("sdxl", 1) == 1 and latent_frames(None, 1) == 1
    assert latent_frames("wan", 13, patch_size=(2, 2, 2)) == 4  # 4 latent frames, a multiple of the temporal patch
    with pytest.raises(ToMAConfigError, match=r"4k\+1.*--frames 5 or 9"):
        latent_frames("wan", 6, patch_size=(1, 2, 2))
    with pytest.raises(ToMAConfigError, match="temporal patch 2.*--frames 5 or 13"):
        latent_frames("wan", 9, patch_size=(2, 2, 2))
    for bad in (0, -3, True, 2.0):
        with pytest.raises(ToMAConfigError, match="positive number of pixel frames"):
            latent_frames("wan", bad)
    with pytest.raises(ToMAConfigError, match="image model"):
        latent_frames("flux", 5)


def test_example_inputs_follow_the_rule() -> None:
    from toma_export.models import load_model
    from toma_export.models.inputs import example_inputs

    wan = load_model("wan-tiny")
    assert list(example_inputs(wan, height=64, width=64, frames=5)["hidden_states"].shape) == [1, 4, 2, 8, 8]
    with pytest.raises(ToMAConfigError, match="4k\\+1"):
        example_inputs(wan, height=64, width=64, frames=3)


def test_model_help_names_only_embedded_models() -> None:
    from toma_export.cli._choices import MODEL_EXAMPLES
    from toma_export.models.registry import EMBEDDED_MODELS

    assert set(MODEL_EXAMPLES) <= set(EMBEDDED_MODELS)


@pytest.mark.parametrize("model, frames, words", [
    ("wan-tiny", "0", ("--frames 0", "positive number of pixel frames")),
    ("wan-tiny", "2", ("--frames 2", "4k+1", "--frames 1 or 5")),
    ("wan-1.3b-d2", "8", ("--frames 8", "4k+1", "--frames 5 or 9")),
    ("sdxl-tiny", "5", ("--frames 5", "image model", "drop --frames")),
])
def test_build_refuses_bad_frames_before_anything(model: str, frames: str, words: tuple[str, ...], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "art"
    rc, _, err = _cli(["build", model, "--height", "64", "--width", "64", "--frames", frames, "--out", str(out),
                       "--quiet"], capsys)
    assert rc == 2, err
    assert err.startswith("toma-export: error: ") and "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("model, frames, words", [
    ("wan-tiny", "2", ("4k+1",)),
    ("sdxl-tiny", "5", ("image model",)),
])
def test_inspect_refuses_bad_frames(model: str, frames: str, words: tuple[str, ...],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _cli(["inspect", model, "--frames", frames], capsys)
    assert rc == 2 and err.startswith("toma-export: error: ")
    assert all(w in err for w in words), err


def test_inspect_reports_the_video_grid(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _cli(["inspect", "wan-tiny", "--height", "64", "--width", "64", "--frames", "5"], capsys)
    assert rc == 0, err
    # 5 pixel frames -> 2 latent frames of (64/8/2)^2 = 4x4 tokens: 32 image tokens per site
    assert "5 pixel frames -> 2 latent frames" in out and "2x4x4 (32 tokens)" in out, out
    assert "32 image tokens -> 16" in out, out


def test_manifest_frames_schema() -> None:
    from toma_export.engines.manifest import ArtifactError, Shapes

    shapes = {"batch": 1, "height": 64, "width": 64, "inputs": [[1, 4, 1, 8, 8]]}
    assert Shapes.from_json(shapes, "m").frames == 1  # absent: one frame (an image)
    assert Shapes.from_json({**shapes, "frames": 5}, "m").frames == 5
    for bad in (0, "5", True):
        with pytest.raises(ArtifactError, match="shapes.frames"):
            Shapes.from_json({**shapes, "frames": bad}, "m")


@pytest.mark.slow
def test_wan_clip_artifact_builds_and_verifies_against_eager(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from toma_export.engines.artifact import read_manifest
    from toma_export.engines.build import BuildRequest, build_artifact
    from toma_export.engines.load import ShapeMismatchError, load_artifact
    from toma_export.engines.verify import verify_artifact
    from toma_export.models import load_model
    from toma_export.models.inputs import example_inputs
    from toma_export.schedule import StepSchedule

    out = build_artifact(BuildRequest("wan-tiny", ratio=0.5, height=64, width=64, frames=5, batch=1,
                                      out=tmp_path / "wan", recompute_every=2), progress=False)
    m = read_manifest(out)
    assert m.shapes.frames == 5 and m.frames == 5 and m.model.spec.video
    assert m.shapes.inputs[0] == [1, 4, 2, 8, 8]  # (B, C, 2 latent frames, 64/8, 64/8)
    assert set(m.extra.variants) == {"select", "reuse"}

    ok, rows = verify_artifact(out, steps=3)
    assert ok, rows
    assert [r["variant"] for r in rows] == ["select", "reuse", "select"]
    assert all(r["max_vs_unmerged"] > 10 * r["max_vs_eager"] for r in rows), rows  # ToMA is told apart

    rc, text, err = _cli(["verify", str(out)], capsys)
    assert rc == 0 and "PASS: engine vs eager ToMA" in text, text + err

    # one-frame inputs do not fit a 5-frame artifact: the message names the frames and the flag
    model = load_model("wan-tiny")
    with pytest.raises(ShapeMismatchError, match="5 frames.*--frames"):
        load_artifact(out).runner(example_inputs(model, height=64, width=64), StepSchedule(2))

    # `run` has no video pipeline: refused with the fix, before any pipeline is assembled
    rc, _, err = _cli(["run", str(out), "--out", str(tmp_path / "x.png")], capsys)
    assert rc == 2 and "5-frame clip" in err and "toma-export verify" in err, err

    # a manifest from before `frames` (key absent) still loads, as one frame
    path = out / "manifest.json"
    data = json.loads(path.read_text())
    del data["shapes"]["frames"]
    path.write_text(json.dumps(data))
    assert read_manifest(out).frames == 1
