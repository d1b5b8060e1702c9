"""First contact: the demo prints what it measured, and the commands are quiet unless ``--verbose``."""

from __future__ import annotations

import importlib.util
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from toma_export.quiet import LOG_RECORDS, library_noise, show_library_noise

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "toma_export.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "Warning" in line or "torchvision" in line]


def test_library_noise_hides_the_listed_messages_only() -> None:
    name, _ = LOG_RECORDS[0]
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with library_noise():
                warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
                warnings.warn("some other future change", FutureWarning)
                logger.warning("torchvision is not installed. Skipping torchvision::nms")
                logger.warning("an unrelated exporter warning")
            logger.warning("torchvision is not installed. Skipping torchvision::nms")  # outside: shown
            with show_library_noise(), library_noise():
                warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
    finally:
        logger.removeHandler(handler)
    assert [str(w.message) for w in caught] == ["some other future change",
                                                "`isinstance(treespec, LeafSpec)` is deprecated, use ..."]
    assert seen == ["an unrelated exporter warning", "torchvision is not installed. Skipping torchvision::nms"]
    assert not logger.filters


def test_demo_prints_verification_and_the_measured_speed_up_quietly(tmp_path: Path) -> None:
    """The demo builds, verifies and runs engines and times the block: no library warning on the way."""
    proc = _cli("demo", "--size", "64", "--steps", "2", "--repeats", "1", "--speed-backend", "eager",
                "--speed-size", "256", "--speed-repeats", "2", "--out", tmp_path)
    out = proc.stdout
    checks = re.findall(r"step (\d) \((\w+)\): max \|engine - eager ToMA\| (\S+), max \|engine - unmerged model\| (\S+)",
                        out)
    assert [(step, variant) for step, variant, _, _ in checks] == [("0", "select"), ("1", "reuse")], out
    assert all(float(eager) <= 1e-3 < float(unmerged) for _, _, eager, unmerged in checks), out
    assert "generated through the full pipeline" in out and (tmp_path / "toma.png").is_file()
    assert "speed at 256x256 px: SDXL level-1 BasicTransformerBlock, 256 tokens" in out, out
    ms = {}
    for row in ("unmerged", "ToMA r=0.5", "ideal"):
        found = re.search(rf"^    {re.escape(row)} +(\d+\.\d) ms +\d+\.\d\dx", out, re.M)
        assert found, (row, out)
        ms[row] = float(found.group(1))
    final = re.search(r"^\[demo\] ToMA r=0\.5 on eager at 256x256 px: (\d+\.\d\d)x the unmerged speed "
                      r"\(ideal (\d+\.\d\d)x\)", out, re.M)
    assert final, out
    assert float(final.group(1)) == pytest.approx(ms["unmerged"] / ms["ToMA r=0.5"], abs=0.02)
    assert float(final.group(2)) == pytest.approx(ms["unmerged"] / ms["ideal"], abs=0.02)
    assert _noise(proc.stderr) == [], proc.stderr


def test_verbose_lets_the_library_noise_through() -> None:
    proc = _cli("--verbose", "bench", "--workload", "sdxl-block", "--height", "64", "--width", "64", "--methods", "none",
                "--no-ideal", "--backends", "onnxruntime", "--repeats", "1", "--warmup", "1", "--no-memory", "--quiet")
    assert "FutureWarning: `isinstance(treespec, LeafSpec)` is deprecated" in proc.stderr, proc.stderr
    if not HAS_TORCHVISION:
        assert "torchvision is not installed. Skipping torchvision::nms" in proc.stderr, proc.stderr


@pytest.mark.parametrize("bad, message", [
    (["--speed-size", "1000"], "not a multiple of 16"),
    (["--speed-backend", "tensorflow"], "not a bench backend"),
])
def test_demo_refuses_bad_speed_options(bad: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "toma_export.cli", "demo", *bad, "--out", "/nonexistent/demo"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
