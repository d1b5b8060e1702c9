"""The TensorRT glue type-checks against tensorrt-stubs (installed with --no-deps).

The stubs as installed are not usable by mypy directly: the ``tensorrt`` folder has no ``py.typed``
(so mypy ignores it and ``tensorrt`` becomes ``Any``), and ``tensorrt_bindings/tensorrt.pyi`` has
syntax errors (parameters named ``in``; a non-default parameter after defaults in
``add_scale_nd``). :func:`prepare_stub_path` copies them into ``build/typings`` with those lines
fixed, and mypy runs with that folder on ``MYPYPATH`` and errors inside the stubs themselves
silenced. ``tensorrt.plugin`` is not in the stubs; it stays ``Any`` (``ignore_missing_imports``).

Run by hand:  python tests/test_tensorrt_typing.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["plugins", "toma_export/engines/trt_engine", "toma_export/engines/torch_tensorrt.py"]


def prepare_stub_path(dest: Path) -> Path | None:
    """Sanitised copy of tensorrt-stubs under ``dest``; None when the stubs are not installed."""
    site = Path(sysconfig.get_paths()["purelib"])
    src_pkg, src_bind = site / "tensorrt", site / "tensorrt_bindings"
    if not (src_pkg / "__init__.pyi").is_file() or not (src_bind / "tensorrt.pyi").is_file():
        return None
    for sub in ("tensorrt", "tensorrt_bindings"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    (dest / "tensorrt" / "__init__.pyi").write_text((src_pkg / "__init__.pyi").read_text())
    for f in src_bind.glob("*.pyi"):
        text = f.read_text()
        text = re.sub(r"\((self(?:: \w+)?), in: ", r"(\1, in_: ", text)
        text = text.replace("channel_axis: int) -> IScaleLayer", "channel_axis: int = ...) -> IScaleLayer")
        (dest / "tensorrt_bindings" / f.name).write_text(text)
    (dest / "mypy.ini").write_text(
        "[mypy]\npython_version = 3.11\nignore_missing_imports = True\nfollow_imports = silent\n"
        "[mypy-tensorrt_bindings.*]\nignore_errors = True\n[mypy-tensorrt.*]\nignore_errors = True\n"
    )
    return dest


def run_mypy(stub_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MYPYPATH": str(stub_dir)}
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(stub_dir / "mypy.ini"), "--cache-dir",
         str(stub_dir / ".mypy_cache"), *TARGETS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.slow
def test_tensorrt_glue_type_checks(tmp_path: Path) -> None:
    stubs = prepare_stub_path(tmp_path / "typings")
    if stubs is None:
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
    proc = run_mypy(stubs)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    # The stubs are really used: a misspelt TensorRT call must be caught.
    probe = tmp_path / "probe.py"
    probe.write_text("import tensorrt as trt\ntrt.Builder(trt.Logger()).create_netwrk(0)\n")
    env = {**os.environ, "MYPYPATH": str(stubs)}
    bad = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(stubs / "mypy.ini"), "--cache-dir",
         str(stubs / ".mypy_cache"), str(probe)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert bad.returncode != 0 and "create_netwrk" in bad.stdout, bad.stdout


if __name__ == "__main__":
    d = prepare_stub_path(ROOT / "build" / "typings")
    if d is None:
        raise SystemExit("tensorrt-stubs is not installed")
    p = run_mypy(d)
    print(p.stdout + p.stderr, end="")
    raise SystemExit(p.returncode)
