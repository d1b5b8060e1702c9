"""AOT PTX for sm_80 / sm_89 / sm_90, built without a GPU by ``scripts/build_ptx.py``.

The build runs in a child process without ``TRITON_INTERPRET`` (the interpreter tests in this
session may have put Triton in interpreter mode, where it cannot compile).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: features, S, C, K, indices (plugins.triton_selection.KERNEL_N_PARAMS; not imported at module
#: level so that collecting this file does not import Triton before the interpreter tests can).
KERNEL_N_PARAMS = 5


@pytest.fixture(scope="module")
def ptx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ptx")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_ptx.py"), "--out", str(out), "--dtype", "fp32", "fp16"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("arch", [80, 89, 90])
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_ptx_for_target(ptx_dir: Path, arch: int, dtype: str) -> None:
    ptx = (ptx_dir / f"facility_location_sm{arch}_{dtype}_s16.ptx").read_text()
    assert re.search(rf"^\.target sm_{arch}a?\s*$", ptx, re.M), "missing .target directive"
    assert f".target sm_{arch}" in ptx
    assert re.search(r"^\.version 8\.4\s*$", ptx, re.M)
    entry = re.search(r"\.visible \.entry (\w+)\((.*?)\)", ptx, re.S)
    assert entry is not None and entry.group(1) == "facility_location_kernel"
    params = [p for p in entry.group(2).split(",") if p.strip()]
    # features, S, C, K, indices; Triton's hidden scratch pointers are stripped for TensorRT.
    assert len(params) == KERNEL_N_PARAMS
    assert [".u64" in p for p in params] == [True, False, False, False, True]


def test_manifest(ptx_dir: Path) -> None:
    manifest = json.loads((ptx_dir / "manifest.json").read_text())
    kernels = manifest["kernels"]
    assert {(k["arch"], k["dtype"]) for k in kernels} == {(a, d) for a in (80, 89, 90) for d in ("fp32", "fp16")}
    for k in kernels:
        assert (ptx_dir / k["file"]).stat().st_size == k["bytes"] > 10_000
        assert k["target"].startswith(f"sm_{k['arch']}")
        assert k["block_x"] == 128 and k["params"] == KERNEL_N_PARAMS and k["shared_mem"] >= 0


_FAKE = """.visible .entry kern(
\t.param .u64 .ptr .global .align 1 kern_param_0,
\t.param .u32 kern_param_1,
\t.param .u64 .ptr .global .align 1 kern_param_2,
\t.param .u64 .ptr .global .align 1 kern_param_3
)
{
\tld.param.b64 \t%rd1, [kern_param_0];
\tld.param.b32 \t%r1, [kern_param_1];
\tld.param.b64 \t%rd2, [kern_param_2];
BODY
}
"""


def test_strip_scratch_params() -> None:
    from plugins.triton_selection import KERNEL_N_PARAMS as n_params
    from plugins.triton_selection import strip_scratch_params

    assert n_params == KERNEL_N_PARAMS
    stripped = strip_scratch_params(_FAKE.replace("BODY", ""), "kern", 3)
    assert "kern_param_3" not in stripped and "kern_param_2" in stripped
    assert strip_scratch_params(stripped, "kern", 3) == stripped
    with pytest.raises(RuntimeError, match="reads hidden parameter kern_param_3"):
        strip_scratch_params(_FAKE.replace("BODY", "\tld.param.b64 \t%rd3, [kern_param_3];"), "kern", 3)
    with pytest.raises(RuntimeError, match="not found"):
        strip_scratch_params(_FAKE, "other", 3)
