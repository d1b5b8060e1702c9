"""Benchmark harness: JSON schema, speed-up arithmetic, interleaving, markdown, plots (no timing asserts)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from toma_export.bench import interleaved_order, run_interleaved
from toma_export.bench.backends import BACKENDS, register_backend
from toma_export.cli.bench import main as bench_main
from toma_export.bench.ideal import IdealSites, kept_tokens
from toma_export.bench.plots import bench_plots
from toma_export.bench.report import load_json, markdown_table
from toma_export.bench.runner import IDEAL, add_derived
from toma_export.bench.workloads import shared_clone
from toma_export.config import ToMAConfig
from toma_export.models.inputs import example_inputs
from toma_export.models.registry import load_model

REQUIRED = {"workload", "backend", "method", "ratio", "median_ms", "min_ms", "max_ms", "speedup", "peak_mem_mb"}


def test_interleaved_order_rotates_every_case_through_every_position():
    order = interleaved_order(4, 8)
    assert order[0] == [0, 1, 2, 3] and order[1] == [1, 2, 3, 0]
    for rnd in order:
        assert sorted(rnd) == [0, 1, 2, 3]  # every case once per repeat
    for case in range(4):
        assert Counter(rnd.index(case) for rnd in order) == {p: 2 for p in range(4)}


def test_run_interleaved_calls_round_robin_with_before_hooks():
    log: list[str] = []
    calls = [lambda i=i: log.append(f"c{i}") for i in range(3)]
    before = [lambda i=i: log.append(f"b{i}") for i in range(3)]
    stats, memory = run_interleaved(calls, before=before, repeats=2, warmup=1, measure_memory=False)
    assert log == ["b0", "c0", "b1", "c1", "b2", "c2",  # warm-up round
                   "b0", "c0", "b1", "c1", "b2", "c2",  # repeat 0
                   "b1", "c1", "b2", "c2", "b0", "c0"]  # repeat 1 starts one later
    assert all(len(s.times_ms) == 2 for s in stats)
    assert [m for m, _ in memory] == [None] * 3


def test_add_derived_speedup_and_efficiency_arithmetic():
    rows = [
        dict(workload="w", backend="eager", method="none", ratio=0.0, median_ms=100.0),
        dict(workload="w", backend="eager", method="toma", ratio=0.5, median_ms=80.0),
        dict(workload="w", backend="eager", method=IDEAL, ratio=0.5, median_ms=60.0),
        dict(workload="w", backend="inductor", method="none", ratio=0.0, median_ms=50.0),
        dict(workload="w", backend="inductor", method="toma", ratio=0.5, median_ms=40.0),
    ]
    add_derived(rows)
    assert rows[1]["speedup"] == pytest.approx(100 / 80)
    assert rows[1]["overhead_efficiency"] == pytest.approx((100 - 80) / (100 - 60))
    assert rows[4]["speedup"] == pytest.approx(50 / 40)  # against its own backend's baseline
    assert rows[4]["overhead_efficiency"] is None  # no ideal row for that backend
    assert rows[0]["speedup"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["--workload", "sdxl-tiny-unet", "--methods", "none,toma,tomesd,todo", "--ratios", "0.5",
            "--repeats", "2", "--warmup", "1", "--height", "128", "--width", "128", "--quiet",
            "--json", str(out / "b.json"), "--markdown", str(out / "b.md"), "--plots", str(out / "plots")]
    assert bench_main(argv) == 0
    return out


def test_bench_json_schema_and_speedup(bench_json):
    result = load_json(bench_json / "b.json")
    rows = result["results"]
    assert {"machine", "torch_threads", "memory_methods", "workloads"} <= set(result["meta"])
    assert {(r["method"], r["ratio"]) for r in rows} == {
        ("none", 0.0), ("toma", 0.5), ("tomesd", 0.5), ("todo", 0.5), (IDEAL, 0.5)}
    base = next(r for r in rows if r["method"] == "none")
    for r in rows:
        assert REQUIRED <= set(r), r
        assert r["status"] == "ok" and r["workload"] == "sdxl-tiny-unet" and r["backend"] == "eager"
        assert len(r["times_ms"]) == 2
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["speedup"] == pytest.approx(base["median_ms"] / r["median_ms"])
    toma = next(r for r in rows if r["method"] == "toma")
    ideal = next(r for r in rows if r["method"] == IDEAL)
    assert toma["overhead_efficiency"] == pytest.approx(
        (base["median_ms"] - toma["median_ms"]) / (base["median_ms"] - ideal["median_ms"]))


def test_bench_writes_markdown_and_plots(bench_json):
    md = (bench_json / "b.md").read_text()
    assert "| method |" in md and "tomesd" in md and "speed-up" in md
    names = {p.name for p in (bench_json / "plots").iterdir()}
    assert {"sdxl-tiny-unet_eager_latency.png", "sdxl-tiny-unet_eager_speedup.png"} <= names
    assert all((bench_json / "plots" / n).stat().st_size > 1000 for n in names)


def test_bench_flux_tiny_and_loop_run(tmp_path):
    out = tmp_path / "f.json"
    assert bench_main(["--workload", "flux-tiny,sdxl-loop", "--methods", "none,toma", "--ratios",
                       "0.5", "--repeats", "1", "--warmup", "1", "--height", "128", "--width", "128",
                       "--steps", "3", "--no-memory", "--quiet", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert {(r["workload"], r["method"]) for r in rows} == {
        (w, m) for w in ("flux-tiny", "sdxl-loop") for m in ("none", "toma", IDEAL)}
    assert all(r["status"] == "ok" for r in rows)


def test_backend_registry_is_one_function(tmp_path):
    seen = []

    def fake(model, config, example):
        seen.append(config.method if config else None)
        return model

    register_backend("fake-test", fake)
    try:
        out = tmp_path / "x.json"
        assert bench_main(["--workload", "flux-tiny", "--methods", "none,toma", "--ratios", "0.5", "--backends",
                           "fake-test", "--repeats", "1", "--warmup", "1", "--no-memory", "--quiet",
                           "--json", str(out)]) == 0
        assert sorted(map(str, seen)) == ["None", "None", "toma"]  # baseline, ideal, toma
        assert {r["backend"] for r in json.loads(out.read_text())["results"]} == {"fake-test"}
    finally:
        BACKENDS.pop("fake-test")


def test_ideal_sites_shrink_only_the_merged_level():
    unet = load_model("sdxl-tiny")
    kwargs = example_inputs(unet, height=128, width=128)
    clone = shared_clone(unet)
    assert clone.conv_in.weight is unet.conv_in.weight  # weights shared, not copied
    sites = IdealSites(unet, ToMAConfig(ratio=0.5))
    seen: dict[str, int] = {}

    def record(name: str):
        def hook(module, args, kwargs):
            seen[name] = (args[0] if args else kwargs["hidden_states"]).shape[1]

        return hook

    for name, mod in unet.named_modules():
        if name.endswith("attn1"):  # registered after IdealSites' hooks: sees what attention gets
            mod.register_forward_pre_hook(record(name), with_kwargs=True)
    with torch.inference_mode():
        unet(**kwargs)
    sites.remove()
    full = (128 // 8 // 2) ** 2  # level 1 of a 16x16 latent
    assert sorted(set(seen.values())) == [(128 // 8 // 4) ** 2, kept_tokens(full, 0.5)]


def test_markdown_table_shows_variants_only_when_they_differ():
    rows = [dict(method="toma", variant="toma", ratio=0.5, median_ms=1.0, speedup=1.0)]
    assert "variant" not in markdown_table(rows)
    rows.append(dict(method="toma", variant="toma[attn]", ratio=0.5, median_ms=1.0, speedup=1.0))
    assert "toma[attn]" in markdown_table(rows)


def test_bench_plots_skip_failed_rows(tmp_path):
    rows = add_derived([
        dict(workload="w", backend="b", method="none", ratio=0.0, median_ms=10.0, min_ms=9.0, max_ms=11.0),
        dict(workload="w", backend="b", method="catome", ratio=0.5, median_ms=None, min_ms=None, max_ms=None,
             status="error: x"),
    ])
    paths = bench_plots({"results": rows}, tmp_path)
    assert [p.name for p in paths] == ["w_b_latency.png", "w_b_speedup.png"]


def test_self_merging_backends_run_toma_on_the_block() -> None:
    """ONNX Runtime and the compiled graph pass time ToMA rows (not error rows) on the block workload,
    select on the first call and reuse on the next, and record the first call's (build) time."""
    from toma_export.bench.runner import Plan, run_plan
    from toma_export.bench.workloads import Options

    plan = Plan(workloads=["sdxl-block"], methods=["none", "toma"], ratios=[0.5], backends=["onnxruntime"],
                repeats=1, warmup=1, ideal=False, memory=False, options=Options(height=128, width=128))
    rows = run_plan(plan, progress_bar=False)["results"]
    assert [(r["method"], r["status"]) for r in rows] == [("none", "ok"), ("toma", "ok")], rows
    assert all(r["first_call_ms"] > 0 and r["median_ms"] > 0 for r in rows)
    assert all(r["build_ms"] > 0 for r in rows)


@pytest.mark.slow
def test_aotinductor_backend_times_compiled_packages() -> None:
    """AOTInductor rows: the unmerged model (captured with keyword inputs) and ToMA's select/reuse
    variants compiled to .pt2 packages and run on flat tensors; the compile is the row's build time.
    (~2 min of compiling on 2 cores.)"""
    from toma_export.bench.runner import Plan, run_plan
    from toma_export.bench.workloads import Options

    plan = Plan(workloads=["flux-tiny"], methods=["none", "toma"], ratios=[0.5], backends=["aotinductor"],
                repeats=1, warmup=1, ideal=False, memory=False, options=Options(height=128, width=128))
    rows = run_plan(plan, progress_bar=False)["results"]
    assert [(r["method"], r["status"]) for r in rows] == [("none", "ok"), ("toma", "ok")], rows
    assert all(r["build_ms"] > 1000 and r["median_ms"] > 0 for r in rows)


@pytest.mark.slow
def test_inductor_ideal_row_is_not_served_another_cases_graph():
    """Bench cases share weights, so dynamo's guards cannot tell the UNet ideal row (forward hooks that
    slice tokens) from the unmerged row compiled before it: the inductor backend guards on hooks, and
    the compiled ideal equals the eager ideal, not the unmerged model. (~95 s: two compiles.)"""
    from toma_export.bench.backends import inductor

    unet = load_model("sdxl-tiny")
    kwargs = example_inputs(unet, height=64, width=64)
    with torch.no_grad():
        plain = inductor(shared_clone(unet), None, kwargs)(**kwargs)[0]
        ideal_model = shared_clone(unet)
        IdealSites(ideal_model, ToMAConfig(ratio=0.5))
        want = ideal_model(**kwargs)[0]
        got = inductor(ideal_model, None, kwargs)(**kwargs)[0]
    assert (want - plain).abs().max() > 1e-2  # the ideal differs from the model...
    assert (got - want).abs().max() < 1e-4  # ...and the compiled ideal computes it
