"""Bad input on the command line: exit 2, `error:` naming the problem and the fix, no traceback, nothing written."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from toma_export.cli import main
from toma_export.config import ToMAConfig
from toma_export.core.tiles import TileLayout
from toma_export.errors import ToMAConfigError


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], *words: str) -> str:
    """Exit 2 via ToMAError (``toma-export: error:``) or argparse (``...: error: argument``)."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "error: " in err and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


@pytest.mark.parametrize("height, words", [
    ("250", ("not a multiple of 8", "--height 248")),
    ("0", ("positive",)),
    ("-256", ("positive",)),
    ("100000", ("4096",)),
])
def test_build_refuses_bad_sizes_before_loading(height: str, words: tuple[str, ...], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "art"
    err = _refused(["build", "sdxl-tiny", "--height", height, "--out", str(out)], capsys, *words)
    assert err.startswith("toma-export: error: ")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_build_flux_needs_multiples_of_16(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(["build", "flux-tiny", "--width", "136", "--out", str(tmp_path / "a")], capsys, "multiple of 16")


def test_build_into_a_read_only_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() == 0:  # root writes through mode bits: use a place no one can create folders in
        out = Path("/proc/toma-export-test-artifact")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        out = ro / "art"
    err = _refused(["build", "sdxl-tiny", "--height", "64", "--width", "64", "--out", str(out), "--quiet"], capsys,
                   "--out")
    assert err.startswith("toma-export: error: ") and not out.exists()


def test_run_out_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(["run", str(tmp_path / "missing"), "--out", str(tmp_path)], capsys, "is a folder", "image.png")
    assert err.startswith("toma-export: error: ")


@pytest.mark.parametrize("argv, words", [
    (["run", "x", "--steps", "-3"], ("--steps", "outside")),
    (["run", "x", "--steps", "0"], ("--steps", "outside")),
    (["verify", "x", "--steps", "0"], ("--steps", "outside")),
    (["run", "x", "--seed", str(2**63)], ("--seed", "2**63")),
    (["verify", "x", "--seed", "-1"], ("--seed", "2**63")),
    (["verify", "x", "--tol", "nan"], ("--tol",)),
    (["bench", "--ratios", "1.5"], ("--ratios", "[0, 1)")),
    (["build", "sdxl-tiny", "--out", "x", "--tile", "0x4"], ("--tile",)),
    (["build", "sdxl-tiny", "--out", "x", "--merge", "attn,nope"], ("nope",)),
    (["build", "sdxl-tiny", "--out", "x", "--temperature", "inf"], ("finite",)),
])
def test_ranges_are_checked_when_parsing(argv: list[str], words: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    _refused(argv, capsys, *words)


@pytest.mark.parametrize("argv, words", [
    (["--ratio", "1.5"], ("ratio=1.5", "[0, 1)")),
    (["--recompute-every", "0"], ("recompute_every",)),
    (["--threshold", "3"], ("threshold",)),
    (["--merge-seed", "-1"], ("seed",)),
])
def test_config_values_are_validated(argv: list[str], words: tuple[str, ...], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "art"
    err = _refused(["build", "sdxl-tiny", "--out", str(out), *argv], capsys, *words)
    assert err.startswith("toma-export: error: ") and not out.exists()


def test_bad_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("ratio = [oops\n")
    _refused(["build", "sdxl-tiny", "--out", str(tmp_path / "a"), "--config", str(cfg)], capsys, str(cfg))
    _refused(["build", "sdxl-tiny", "--out", str(tmp_path / "a"), "--config", str(tmp_path / "none.toml")], capsys,
             "cannot read")
    assert not (tmp_path / "a").exists()


def test_local_model_with_broken_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{broken")
    err = _refused(["build", str(model), "--height", "64", "--width", "64", "--out", str(tmp_path / "a"), "--quiet"],
                   capsys, str(model))
    assert err.startswith("toma-export: error: ") and not (tmp_path / "a").exists()


def test_local_model_without_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from toma_export.models.registry import SDXL_TINY

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **SDXL_TINY}))
    err = _refused(["build", str(model), "--height", "64", "--width", "64", "--out", str(tmp_path / "a"), "--quiet"],
                   capsys, str(model))
    assert "weights" in err and not (tmp_path / "a").exists()


@pytest.mark.parametrize("kwargs", [
    dict(temperature=math.inf), dict(merge_attn="no"), dict(tile=(True, 4)), dict(seed="x"), dict(seed=2**63),
])
def test_config_types_and_ranges(kwargs: dict) -> None:
    with pytest.raises(ToMAConfigError):
        ToMAConfig(**kwargs)


def test_tile_larger_than_the_grid_is_an_error() -> None:
    for remainder in ("keep", "error"):
        with pytest.raises(ToMAConfigError, match="larger than the 8x8 token grid"):
            TileLayout.create(8, 8, (100, 100), remainder)
        with pytest.raises(ToMAConfigError, match="larger than"):
            TileLayout.create(8, 8, (4, 9), remainder)
    assert TileLayout.create(8, 8, (8, 8)).num_tiles == 1
    assert TileLayout.create(9, 9, (8, 8), "keep").num_rest == 17  # one whole tile and a border: allowed


def test_tile_larger_than_the_grid_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    _refused(["inspect", "sdxl-tiny", "--height", "64", "--tile", "100x100"], capsys, "larger than", "tile")
