"""FLOP ceiling (toma_export/bench/ceiling.py) and its plot script (scripts/plot_ceiling.py).

Fast: tiny workloads on the meta device, one small real-compute check that meta counts are exact.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from toma_export.bench.ceiling import (
    Ceiling,
    Spec,
    flop_ceilings,
    machine_label,
    saving_share,
    speed_rows,
)

from toma_export.graph.flops import count_flops, graph_flops

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "plot_ceiling.py"


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_linear_flops_are_the_hand_count(device: str) -> None:
    lin = torch.nn.Linear(32, 48, device=device)
    x = torch.randn(2, 10, 32, device=device)
    total, by_op = count_flops(lambda: lin(x))
    assert total == 2 * (2 * 10) * 32 * 48  # one multiply-add = 2 FLOPs per (token, in, out)
    assert set(by_op) == {"aten.addmm"}


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_conv_flops_are_the_hand_count(device: str) -> None:
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, device=device)
    x = torch.randn(2, 4, 8, 8, device=device)
    assert count_flops(lambda: conv(x))[0] == 2 * (2 * 8 * 8) * 6 * (4 * 3 * 3)  # per output pixel and channel


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_attention_flops_are_the_hand_count(device: str) -> None:
    """QK^T and AV, 2·S_q·S_k·d each, per batch and head; the CPU kernel (absent from torch's
    table) counts the same as the meta math path."""
    b, h, sq, sk, d = 2, 3, 16, 24, 8
    q = torch.randn(b, h, sq, d, device=device)
    kv = torch.randn(b, h, sk, d, device=device)
    total, _ = count_flops(lambda: F.scaled_dot_product_attention(q, kv, kv))
    assert total == 2 * (2 * b * h * sq * sk * d)


def test_ceiling_is_one_at_zero_and_grows_with_ratio() -> None:
    ceilings = flop_ceilings(Spec.make("flux-tiny"), [0.0, 0.25, 0.5, 0.75])
    values = [c.ceiling for c in ceilings]
    assert values[0] == 1.0
    assert all(v > 1.0 for v in values[1:])
    assert values == sorted(values) and len(set(values)) == 4
    for c in ceilings[1:]:  # ToMA's own FLOPs: fewer than unmerged, more than the free-merge ideal
        assert c.toma_ratio is not None and 1.0 < c.toma_ratio < c.ceiling, c.to_dict()


def test_ratio_outside_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"ratio 1.0 must be in \[0, 1\)"):
        flop_ceilings(Spec.make("flux-tiny"), [1.0])


def test_meta_counts_equal_real_counts() -> None:
    """The meta device (shapes only) counts exactly what a real CPU forward counts, ToMA row included."""
    spec = Spec.make("flux-tiny")
    meta = flop_ceilings(spec, [0.5])[0]
    cpu = flop_ceilings(spec, [0.5], device="cpu")[0]
    assert (meta.unmerged_flops, meta.ideal_flops, meta.toma_flops) == (cpu.unmerged_flops, cpu.ideal_flops,
                                                                        cpu.toma_flops)
    assert meta.toma_flops is not None and meta.ideal_flops < meta.toma_flops < meta.unmerged_flops


def test_graph_pass_ops_count_as_the_eager_matmuls(one_thread_quiet_fakes: None) -> None:
    """ToMA's custom ops (graph pass) are counted by formula; the eager hooks run plain matmuls: the
    same forward must count the same FLOPs both ways."""
    import toma_export
    from toma_export.bench.workloads import Options, get_workload, shared_clone
    from toma_export.config import ToMAConfig

    built = get_workload("flux-tiny").build(Options())
    config = ToMAConfig(ratio=0.5)
    eager = shared_clone(built.model)
    handle = built.patch(eager, config)
    handle.reset()
    eager_total, eager_ops = count_flops(lambda: eager(**built.kwargs))
    program = toma_export.rewrite(shared_clone(built.model), built.kwargs, config)
    graph_total, graph_ops = count_flops(lambda: program(**built.kwargs))  # first call: a selecting step
    assert {"toma.merge", "toma.unmerge", "toma.merge_weights"} <= set(graph_ops)
    assert graph_total == eager_total, (eager_ops, graph_ops)


def test_spec_from_bench_meta() -> None:
    meta = {"workloads": {"sdxl-unet": "UNet sdxl at 1024x1024 px, batch 1",
                          "wan": "WanTransformer3DModel wan-1.3b-d2 at 480x832 px, 17 frames (5 latent) = ...",
                          "sdxl-block": "SDXL level-1 BasicTransformerBlock, 4096 tokens (64x64), 640 ch"},
            "config": {"max_downsample": 4, "tile": [3, 4]}}
    unet = Spec.from_meta("sdxl-unet", meta)
    assert (unet.model, unet.height, unet.width) == ("sdxl", 1024, 1024)
    assert unet.label() == "sdxl-unet: sdxl, max_downsample=4, tile=3x4"
    assert Spec.from_meta("wan", meta).height == 480
    block = Spec.from_meta("sdxl-block", meta)
    assert (block.model, block.height, block.width) == (None, 1024, 1024)
    with pytest.raises(ValueError, match="unknown"):
        Spec.from_meta("no-such-workload", meta)
    ceiling = flop_ceilings(Spec.make("flux-tiny"), [0.5], toma=False)[0]
    assert Ceiling.from_dict(json.loads(json.dumps(ceiling.to_dict()))).ceiling == ceiling.ceiling


def test_rows_machine_and_saving_share() -> None:
    assert machine_label({"device": "cuda", "cuda": "NVIDIA H100 80GB HBM3"}) == "H100"
    assert machine_label({"device": "cpu", "cpu_count": 2}) == "CPU 2-core"
    rows = speed_rows(_bench(), "synthetic")
    assert [(r.backend, r.toma, r.ideal) for r in rows] == [("eager", 1.5, 2.0)]  # variant rows left out
    assert saving_share(1.5, 3.0) == pytest.approx((1 - 1 / 1.5) / (1 - 1 / 3.0))
    assert saving_share(1.5, 1.0) is None


def _bench() -> dict[str, Any]:
    rows: list[dict[str, Any]] = [
        dict(method="none", variant="none", ratio=0.0, speedup=1.0),
        dict(method="toma", variant="toma", ratio=0.5, speedup=1.5),
        dict(method="toma", variant="toma[attn]", ratio=0.5, speedup=1.2),
        dict(method="ideal", variant="ideal", ratio=0.5, speedup=2.0),
    ]
    for r in rows:
        r.update(workload="flux-tiny", backend="eager", median_ms=10.0 / r["speedup"], status="ok")
    return {"meta": {"device": "cpu", "cpu_count": 2, "config": {},
                     "workloads": {"flux-tiny": "Flux flux-tiny at 256x256 px = 256 image + 16 text tokens, batch 1"}},
            "results": rows}


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("plot_ceiling", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_writes_png_and_md_into_out_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "in").mkdir()
    bench = tmp_path / "in" / "bench.json"
    bench.write_text(json.dumps(_bench()))
    committed = {p: p.stat().st_mtime_ns for p in (ROOT / "docs" / "benchmarks").glob("*ceiling*")}
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert _script().main([str(bench), "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["bench.json"]
    assert sorted(p.name for p in out.iterdir()) == ["ceiling.md", "ceiling.png", "flop_ceiling.json"]
    assert (out / "ceiling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "ceiling.md").read_text()
    assert "| flux-tiny: flux-tiny | 0.5 | eager | CPU 2-core | bench | 1.50x | 2.00x |" in md
    cache = json.loads((out / "flop_ceiling.json").read_text())
    assert cache["command"].startswith("python scripts/plot_ceiling.py") and len(cache["entries"]) == 1
    assert cache["entries"][0]["ceiling"] > 1.0
    assert {p: p.stat().st_mtime_ns for p in (ROOT / "docs" / "benchmarks").glob("*ceiling*")} == committed


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_script_missing_or_bad_file_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _run(str(tmp_path / "missing.json"), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2
    assert f"{tmp_path / 'missing.json'}: no such file" in proc.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    proc = _run(str(bad), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2 and "bad.json: not valid JSON" in proc.stderr
    bad.write_text(json.dumps({"rows": []}))
    proc = _run(str(bad), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2 and "bad.json: not a bench result" in proc.stderr
    assert not out.exists()
    help_text = _run("--help", cwd=tmp_path).stdout
    assert "FLOP ceiling" in help_text and "--out" in help_text


@pytest.mark.parametrize("name", ["sdxl-tiny", "flux-tiny", "wan-tiny"])
def test_inspect_counts_a_graph_as_the_ceiling_counts_its_run(name: str, one_thread_quiet_fakes: None) -> None:
    """One FLOP count: a captured graph's nodes (inspect) sum to what ``FlopCounterMode`` counts when the
    model runs (the ceiling); the select variant adds selection's tile similarity to the reuse variant."""
    import toma_export
    from toma_export.graph import capture
    from toma_export.models import load_model
    from toma_export.models.inputs import example_inputs

    model = load_model(name)
    kw = example_inputs(model, height=64, width=64, frames=5 if name == "wan-tiny" else 1)
    assert graph_flops(capture(model, kw).ep.graph) == count_flops(lambda: model(**kw))[0] > 0
    program = toma_export.rewrite(model, kw, toma_export.ToMAConfig(ratio=0.5))
    assert program.select_graph_module is not None
    assert graph_flops(program.select_graph_module.graph) > graph_flops(program.graph_module.graph)
