"""The ``toma-export`` command line: starts without the heavy libraries, documents every option."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from toma_export.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]

#: Libraries the parser must not pull in (handlers import them when a command runs).
HEAVY = ("torch", "diffusers", "onnx", "onnxruntime", "triton", "transformers", "numpy")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_module_help_exits_zero() -> None:
    proc = subprocess.run([sys.executable, "-m", "toma_export.cli", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for command in ("demo", "inspect", "build", "verify", "run", "bench", "compare-trt"):
        assert command in proc.stdout


def test_building_the_parser_imports_no_heavy_library() -> None:
    proc = _python(
        "import sys\n"
        "from toma_export.cli import build_parser\n"
        "build_parser()\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
        "assert 'torch' not in sys.modules\n"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def test_subcommand_help_imports_no_torch() -> None:
    proc = _python(
        "import sys\n"
        "from toma_export.cli import main\n"
        "try:\n"
        "    main(['build', '--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules\n"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--dynamic-batch" in proc.stdout


def _parsers(parser: argparse.ArgumentParser, name: str = "toma-export"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_option_has_help() -> None:
    missing = []
    for name, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not (action.help or "").strip():
                missing.append(f"{name}: {action.option_strings or action.dest}")
    assert not missing, missing


def test_every_command_has_help_and_a_handler() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert set(helps) == set(sub.choices)
    assert all(h and h.strip() for h in helps.values()), helps
    for name, command in sub.choices.items():
        assert callable(command.get_default("handler")), name


def test_bench_help_lists_the_registries(capsys: pytest.CaptureFixture[str]) -> None:
    from toma_export.bench.backends import BACKENDS
    from toma_export.bench.workloads import WORKLOADS

    with pytest.raises(SystemExit) as info:
        main(["bench", "--help"])
    assert info.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # help wraps lines, also inside hyphenated names
    assert all(name in text for name in WORKLOADS) and all(name in text for name in BACKENDS), text


def test_bad_choice_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["build", "sdxl-tiny", "--out", "x", "--method", "nope"])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and "toma-export" in capsys.readouterr().out


def test_toma_error_is_reported_not_raised(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["verify", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("toma-export: error: ")
