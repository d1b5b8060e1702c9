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


# --- issue 31: degenerate or conflicting arguments, refused before anything loads -------------------
@pytest.fixture
def nothing_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any model load fails the test: a refusal must come before it."""
    import toma_export.engines.build as build

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(build, "load_model", boom)


BUILD_REFUSALS = [
    (["--height", "8", "--width", "8"], ("--tile 4x4 is larger than every token grid", "--height 64")),
    (["--height", "16", "--width", "24"], ("larger than every token grid", "smaller --tile (at most 2x3)")),
    (["--tile", "8x8", "--height", "32", "--width", "32"], ("--tile 8x8", "at most 4x4")),
    (["--merge", ""], ("--merge", "names no sub-layer", "--ratio 0")),
    (["--merge", " , "], ("names no sub-layer",)),
    (["--fp16", "--bf16"], ("--bf16", "conflicts with --fp16", "only one")),
    (["--dtype", "fp32", "--bf16"], ("conflicts with --dtype fp32",)),
    (["--bf16", "--dtype", "fp16"], ("--dtype", "conflicts with --bf16",)),
    (["--batch", "100000"], ("--batch 100000", "[1, 64]")),
    (["--batch", "0"], ("--batch 0",)),
    (["--selection", "plugin"], ("--selection plugin", "TensorRT", "--selection unrolled")),
]


@pytest.mark.parametrize("argv, words", BUILD_REFUSALS)
def test_build_refuses_degenerate_or_conflicting_arguments(argv: list[str], words: tuple[str, ...], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str], nothing_loads: None) -> None:
    out = tmp_path / "art"
    _refused(["build", "sdxl-tiny", "--out", str(out), "--quiet", *argv], capsys, *words)
    assert list(tmp_path.iterdir()) == []


def test_flux_grid_bound_uses_its_16_px_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               nothing_loads: None) -> None:
    _refused(["build", "flux-tiny", "--height", "48", "--width", "64", "--out", str(tmp_path / "a")], capsys,
             "at most 3x4 tokens: one per 16 px")


def test_one_precision_given_twice_is_not_a_conflict() -> None:
    from toma_export.cli import build_parser

    args = build_parser().parse_args(["build", "m", "--out", "o", "--dtype", "fp16", "--fp16"])
    assert args.precision == "fp16"
    assert build_parser().parse_args(["build", "m", "--out", "o", "--bf16"]).precision == "bf16"
    assert build_parser().parse_args(["build", "m", "--out", "o"]).precision == "fp32"


@pytest.mark.parametrize("argv, words", [
    (["build", "sdxl-tiny", "--out", ""], ("--out ''", "is empty", "--out engines/out/sdxl")),
    (["build", "", "--out", "x"], ("MODEL ''", "is empty")),
    (["build", "sdxl-tiny", "--out", "x", "--config", ""], ("--config ''",)),
    (["run", "art", "--out", ""], ("--out ''", "image.png")),
    (["run", "", "--out", "i.png"], ("ARTIFACT ''",)),
    (["verify", ""], ("ARTIFACT ''",)),
    (["verify", "art", "--model", ""], ("--model ''",)),
    (["run", "art", "--guidance-scale", "nan"], ("--guidance-scale nan", "0..50", "--guidance-scale 5")),
    (["run", "art", "--guidance-scale", "inf"], ("--guidance-scale inf", "0..50")),
    (["run", "art", "--guidance-scale", "-5"], ("--guidance-scale -5", "0..50")),
    (["run", "art", "--guidance-scale", "50.5"], ("0..50",)),
    (["run", "art", "--guidance-scale", "lots"], ("'lots' is not a number",)),
    (["run", "art", "--prompt", b"\xff\xfe".decode("utf-8", "surrogateescape")], ("--prompt", "not valid UTF-8")),
    (["run", "art", "--negative-prompt", b"a\xc3".decode("utf-8", "surrogateescape")], ("--negative-prompt", "UTF-8")),
    (["run", "art", "--prompt", "x" * 3000], ("3000 bytes", "2048")),
    (["inspect", "sdxl-tiny", "--height", "0"], ("--height 0 must be a positive",)),
    (["inspect", "sdxl-tiny", "--width", "0"], ("--width 0 must be a positive",)),
    (["inspect", "sdxl-tiny", "--height", "64", "--width", "-8"], ("--width -8",)),
])
def test_empty_paths_bad_text_guidance_and_sizes_are_named(argv: list[str], words: tuple[str, ...], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    err = _refused(argv, capsys, *words)
    assert "None" not in err
    assert list(tmp_path.iterdir()) == []


def test_guidance_rule_is_the_servers(tmp_path: Path) -> None:
    """One rule for the CLI, the API and the server: the same values pass and fail."""
    import numpy as np

    from toma_export.engines.run import run_artifact
    from toma_export.errors import ToMATypeError
    from toma_export.input_rules import check_guidance
    from toma_export.serving.contract import Limits, RequestError, parse_rows

    def served(g: float) -> bool:
        arrays = {"prompt": np.array([[b"a"]], dtype=object), "seed": np.array([[1]], np.int64),
                  "steps": np.array([[2]], np.int32), "guidance_scale": np.array([[g]], np.float32)}
        try:
            parse_rows(arrays, Limits())
        except RequestError:
            return False
        return True

    for g in (0.0, 1.0, 7.5, 50.0, -0.5, 50.5, math.nan, math.inf, -math.inf):
        try:
            check_guidance(g)
            ok = True
        except ToMAConfigError:
            ok = False
        assert ok == served(g), g
        if not ok:  # the API refuses before reading the artifact (it does not exist)
            with pytest.raises(ToMAConfigError, match="guidance"):
                run_artifact(tmp_path / "none", guidance_scale=g)
    with pytest.raises(ToMATypeError):
        check_guidance("5")


@pytest.mark.parametrize("line, words, typed", [
    ('ratio = "half"', ("ratio='half' is a str, not a number", "ratio=0.5"), True),
    ("ratio = 1.5", ("ratio=1.5 is outside [0, 1)",), False),
    ('merge_attn = "yes"', ("merge_attn='yes' is a str, not True or False",), True),
    ("recompute_every = 2.5", ("recompute_every=2.5 is a float, not an int",), True),
    ('tile = ["a", 2]', ("tile=", "two ints"), True),
    ("temperature = true", ("temperature=True is a bool, not a number",), True),
    ("method = 3", ("method=3 is a int, not a string",), True),
])
def test_config_file_type_errors_are_type_errors(line: str, words: tuple[str, ...], typed: bool, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str], nothing_loads: None) -> None:
    from toma_export.cli.config_options import load_config_file
    from toma_export.errors import ToMATypeError

    cfg = tmp_path / "c.toml"
    cfg.write_text(line + "\n")
    with pytest.raises(ToMAConfigError) as info:
        load_config_file(cfg)
    assert isinstance(info.value, TypeError) == typed and isinstance(info.value, ToMATypeError) == typed
    err = _refused(["build", "sdxl-tiny", "--out", str(tmp_path / "a"), "--config", str(cfg)], capsys, str(cfg), *words)
    assert err.startswith("toma-export: error: ") and not (tmp_path / "a").exists()


# --- local model folders diffusers refuses, or whose weights do not fit their config -----------------
def _saved_tiny(folder: Path) -> Path:
    from toma_export.models.registry import load_model

    load_model("sdxl-tiny").save_pretrained(folder)  # type: ignore[operator]
    return folder


@pytest.mark.parametrize("edit, words", [
    (dict(block_out_channels=[32, 48, 64]), ("could not build a UNet2DConditionModel", "re-save", "block_out_channels")),
    (dict(in_channels=8), ("weights do not fit",)),
])
def test_local_folder_config_diffusers_rejects_or_weights_that_do_not_fit(
    edit: dict, words: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _saved_tiny(tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, **edit}))
    out = tmp_path / "a"
    err = _refused(["build", str(model), "--height", "64", "--width", "64", "--out", str(out), "--quiet"], capsys,
                   str(model))
    assert any(w in err for w in words), err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("argv, words", [
    (["demo", "--steps", "0"], ("--steps 0", "[1, 1000]")),
    (["demo", "--repeats", "0"], ("--repeats 0",)),
    (["demo", "--out", ""], ("--out ''",)),
    (["demo", "--ratio", "1.5"], ("ratio=1.5", "[0, 1)")),
    (["serve", "sdxl-tiny", "--ratio", "nan"], ("--ratio nan",)),
    (["serve", "sdxl-tiny", "--ratio", "1.5"], ("ratio=1.5", "[0, 1)")),
    (["serve", "sdxl-tiny", "--height", "30"], ("--height 30 is not a multiple of 8",)),
    (["serve", ""], ("ARTIFACT_OR_MODEL ''",)),
    (["export-triton", "art", "--out", ""], ("--out ''",)),
    (["bench", "--steps", "0"], ("--steps 0",)),
    (["bench", "--batch", "0"], ("--batch 0",)),
    (["bench", "--repeats", "-1"], ("--repeats -1",)),
    (["bench", "--json", ""], ("--json ''",)),
    (["bench", "--height", "0"], ("--height 0",)),
])
def test_other_commands_check_their_arguments_first(argv: list[str], words: tuple[str, ...], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _refused(argv, capsys, *words)
    assert list(tmp_path.iterdir()) == []
