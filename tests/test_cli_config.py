"""The full ToMAConfig on the command line: one definition, --config files, presets, inspect ARTIFACT."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from toma_export.cli import build_parser, main
from toma_export.cli.config_options import DEFAULTS, OPTIONS, config_from_args
from toma_export.config import ToMAConfig
from toma_export.errors import ToMAConfigError
from toma_export.presets import PRESETS

SIZE = 128


def _args(*argv: str):
    return build_parser().parse_args(["build", "sdxl-tiny", "--out", "unused", *argv])


def test_the_options_mirror_every_config_field() -> None:
    fields = dataclasses.fields(ToMAConfig)
    assert list(DEFAULTS) == [f.name for f in fields]
    assert DEFAULTS == {**ToMAConfig().to_dict(), "tile": ToMAConfig().tile}
    covered = [name for option in OPTIONS for name in option.fields]
    assert sorted(covered) == sorted(DEFAULTS), "every ToMAConfig field needs exactly one option"
    assert all(o.help.strip() for o in OPTIONS)


def test_flags_build_the_full_config() -> None:
    args = _args("--ratio", "0.3", "--method", "todo", "--tile", "2x2", "--temperature", "500", "--merge", "attn,cross",
                 "--max-downsample", "4", "--recompute-every", "3", "--weights", "group", "--remainder", "error",
                 "--threshold", "0.5", "--merge-seed", "7")
    assert config_from_args(args) == ToMAConfig(
        ratio=0.3, method="todo", tile=(2, 2), temperature=500.0, merge_attn=True, merge_cross=True, merge_mlp=False,
        max_downsample=4, recompute_every=3, weights="group", remainder="error", threshold=0.5, seed=7)
    assert config_from_args(_args()) == ToMAConfig()
    assert config_from_args(_args("--max-downsample", "auto")).max_downsample is None


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_config_file_then_flags_override(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"cfg{suffix}"
    if suffix == ".toml":
        path.write_text('ratio = 0.4\ntile = "2x2"\nmax_downsample = 4\nmerge_mlp = false\n')
    else:
        path.write_text(json.dumps({"ratio": 0.4, "tile": [2, 2], "max_downsample": 4, "merge_mlp": False}))
    assert config_from_args(_args("--config", str(path))) == ToMAConfig(ratio=0.4, tile=(2, 2), max_downsample=4,
                                                                        merge_mlp=False)
    over = config_from_args(_args("--config", str(path), "--ratio", "0.6", "--merge", "attn,mlp"))
    assert over == ToMAConfig(ratio=0.6, tile=(2, 2), max_downsample=4, merge_mlp=True)


def test_presets_are_configs_and_flags_override_them(tmp_path: Path) -> None:
    for name, fields in PRESETS.items():
        cfg = config_from_args(_args("--preset", name))
        assert all(getattr(cfg, k) == v for k, v in fields.items()), name
    assert config_from_args(_args("--preset", "fast")).max_downsample == 4
    assert config_from_args(_args("--preset", "quality")).ratio == 0.25
    assert config_from_args(_args("--preset", "fast", "--ratio", "0.7")).ratio == 0.7
    path = tmp_path / "c.json"
    path.write_text('{"ratio": 0.1}')
    assert config_from_args(_args("--preset", "fast", "--config", str(path))).ratio == 0.1  # file over preset


@pytest.mark.parametrize("content, words", [
    ('{"ratio": 0.5, "bogus": 1}', "bogus"),
    ("{not json", "not valid TOML or JSON"),
    ('{"tile": [0, 4]}', "tile"),
    ("[1, 2]", "not a table"),
])
def test_bad_config_files_are_refused(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ToMAConfigError, match=words.split()[0]):
        config_from_args(_args("--config", str(path)))


def test_inspect_and_bench_take_the_config() -> None:
    parser = build_parser()
    args = parser.parse_args(["inspect", "sdxl-tiny", "--tile", "2x2", "--max-downsample", "4", "--merge", "attn"])
    assert config_from_args(args) == ToMAConfig(tile=(2, 2), max_downsample=4, merge_mlp=False)
    from toma_export.cli.bench import config_overrides

    args = parser.parse_args(["bench", "--preset", "fast", "--tile", "2x2"])
    assert config_overrides(args) == {**{k: v for k, v in PRESETS["fast"].items() if k != "ratio"}, "tile": [2, 2]}


def test_precision_flags() -> None:
    args = build_parser().parse_args(["build", "sdxl-tiny", "--out", "x", "--bf16"])
    assert args.precision == "bf16"
    assert build_parser().parse_args(["build", "sdxl-tiny", "--out", "x", "--fp16"]).precision == "fp16"
    assert build_parser().parse_args(["build", "sdxl-tiny", "--out", "x", "--dtype", "bf16"]).precision == "bf16"


@pytest.fixture(scope="module")
def configured_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cfg") / "art"
    rc = main(["build", "sdxl-tiny", "--max-downsample", "4", "--merge", "attn,mlp", "--tile", "2x2", "--ratio", "0.5",
               "--height", str(SIZE), "--width", str(SIZE), "--batch", "1", "--recompute-every", "2", "--quiet",
               "--out", str(out)])
    assert rc == 0
    return out


def test_build_records_the_full_config_and_verifies(configured_artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = json.loads((configured_artifact / "manifest.json").read_text())
    expected = ToMAConfig(max_downsample=4, tile=(2, 2), ratio=0.5, recompute_every=2)
    assert manifest["config"] == expected.to_dict()
    assert len(manifest["extra"]["groups"]) == 2  # both attention levels of the UNet merge
    assert main(["verify", str(configured_artifact), "--steps", "3"]) == 0
    assert "PASS" in capsys.readouterr().out


def test_inspect_artifact_prints_its_config(configured_artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(configured_artifact)]) == 0
    out = capsys.readouterr().out
    for words in ("backend: onnxruntime", "precision fp32", "tile 2x2", "max_downsample 4", "ratio 0.5",
                  "recompute_every 2", "128x128 px", "select", "reuse", "groups:"):
        assert words in out, (words, out)
