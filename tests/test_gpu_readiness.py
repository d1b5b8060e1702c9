"""GPU readiness, measured on CPU: the launch/sync counter and the compile probe on tiny models.

The zeros of issue 26 are kept at zero here: no host-device copy, device read or CPU node in a
forward or a compiled graph, select and reuse as two graphs, regional compilation one graph per
block class and variant.
"""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch

import toma_export
from toma_export import ToMAConfig
from toma_export.bench.compile_probe import TargetProbe, probe, probe_target
from toma_export.bench.launches import CONFIGS, LaunchCounter, count_forwards
from toma_export.bench.workloads import Options, get_workload, shared_clone

FAST = ToMAConfig(**CONFIGS["fast"])


def _count(fn, *args):
    counter = LaunchCounter("meta")
    with counter:
        fn(*args)
    return counter.tally


# -- the counter itself ----------------------------------------------------------------------------
def test_counter_sorts_ops_into_kernels_views_cpu_ops_copies_and_reads() -> None:
    def forward(x: torch.Tensor) -> None:
        index = torch.arange(4)  # host work: a CPU tensor ...
        y = x[index.to(x.device)]  # ... copied in, then a gather on the device
        z = y.view(-1)
        bool(z.sum() > 0)  # a device value read on the host

    t = _count(forward, torch.ones(8, 2, device="meta"))
    assert t.total("cpu_ops") == 1 and t.ops["cpu_ops"]["arange"] == 1
    assert t.total("copies") == 1 and t.ops["copies"]["_to_copy"] == 1
    assert t.total("reads") == 1 and t.ops["reads"]["_local_scalar_dense"] == 1
    assert t.ops["views"]["view"] == 1
    assert {"index", "sum", "gt"} <= set(t.ops["kernels"]) and t.total("kernels") == 3


def test_counter_counts_attention_as_one_kernel() -> None:
    q = torch.ones(1, 2, 16, 8, device="meta")
    t = _count(torch.nn.functional.scaled_dot_product_attention, q, q, q)
    assert t.total("kernels") == 1 and t.ops["kernels"]["scaled_dot_product_attention"] == 1


def test_sdxl_steps_select_then_reuse_through_the_schedule() -> None:
    built = get_workload("sdxl-tiny-unet").build(Options(device="meta"))
    unmerged, select, reuse = count_forwards(built.model, built.kwargs, FAST)
    for row in (unmerged, select, reuse):
        assert row.tally.total("copies") == 0 and row.tally.total("reads") == 0, row.label
    assert unmerged.tally.total("cpu_ops") == 0
    assert select.tally.ops["kernels"]["facility_location"] > 0
    assert reuse.tally.ops["kernels"]["facility_location"] == 0  # eager reuse steps skip selection
    assert reuse.tally.total("kernels") > unmerged.tally.total("kernels")  # the merge machinery is counted


def _flux_rows():
    built = get_workload("flux-tiny").build(Options(device="meta"))
    return count_forwards(built.model, built.kwargs, ToMAConfig(), grid=(16, 16))


def test_flux_forward_has_no_host_work() -> None:
    """Issue 26: no host-to-device copy, no device read and at most 2 CPU-side ops per forward, on
    select and reuse steps (today 2 copies and about 15 CPU ops per block)."""
    for row in _flux_rows()[1:]:
        kinds = row.kinds()
        assert kinds["copies"] == 0 and kinds["reads"] == 0 and kinds["cpu_ops"] <= 2, (row.label, kinds)


# -- the compile probe -----------------------------------------------------------------------------
class _Counted(torch.nn.Module):
    """A module with a CPU step counter it bumps in place: the host state the probe must find."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones((), device="meta"))
        self.count = torch.zeros((), dtype=torch.int64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count.add_(1)
        return x * self.weight + (self.count % 2 == 0).to(x.device)


def test_probe_finds_cpu_nodes_inputs_mutations_and_recompiles() -> None:
    model = _Counted()
    shapes = [torch.ones(4, device="meta"), torch.ones(8, device="meta")]
    p = probe(model, {}, steps=2, step_kwargs=lambda i: {"x": shapes[i]})
    assert len(p.graphs) == 2 and p.per_step == [1, 1]
    g = p.graphs[0]
    assert len(g.cpu_inputs) == 1 and g.mutated_inputs == g.cpu_inputs
    assert len(g.cpu_nodes) >= 4  # add_, remainder, eq, the copy to the device
    assert len(p.recompile_reasons) == 1 and "size mismatch" in p.recompile_reasons[0]


@pytest.fixture(scope="module")
def sdxl_whole() -> TargetProbe:
    """Tiny SDXL compiled whole, unmerged and with ToMA ``fast``, 6 steps each (about a minute)."""
    return probe_target("sdxl-tiny", regional=False)


@pytest.mark.slow
def test_unmerged_sdxl_compiles_to_one_graph_without_host_nodes(sdxl_whole: TargetProbe) -> None:
    s = sdxl_whole.unmerged.summary()
    assert s["graphs"] == 1 and s["cpu_nodes"] == 0 and s["cpu_inputs"] == 0


@pytest.mark.slow
def test_toma_sdxl_compiles_to_select_and_reuse_graphs_without_host_nodes(sdxl_whole: TargetProbe) -> None:
    """Issue 26: ToMA ``fast`` on the tiny SDXL UNet under torch.compile, 6 steps: no CPU node or
    input (today 8 and 2), at most 2 graphs, and no selection in a graph first run on a reuse step."""
    p = sdxl_whole.toma
    s = p.summary()
    assert s["cpu_nodes"] == 0 and s["cpu_inputs"] == 0, s
    assert s["graphs"] <= 2, s
    assert not any(g.selects for g, step in zip(p.graphs, p.made_at()) if step > 0), s


# -- regional compilation (issue 26 deliverable 4) ------------------------------------------------
def test_whole_model_fullgraph_names_the_way_out(flux_tiny: torch.nn.Module) -> None:
    """The step hook is host code outside the graph: ``fullgraph=True`` on a whole applied model fails,
    and dynamo's error carries our reason (what to compile instead)."""
    from toma_export.models.inputs import example_inputs

    model = shared_clone(flux_tiny)
    toma_export.apply(model, ToMAConfig())
    torch._dynamo.reset()
    try:
        with torch.no_grad(), pytest.raises(Exception, match="without fullgraph=True.*compile_repeated_blocks"):
            torch.compile(model, fullgraph=True, backend="eager")(**example_inputs(model, height=64, width=64))
    finally:
        torch._dynamo.reset()
        toma_export.remove(model)


def test_hooked_forwards_are_shared_code_and_removed_exactly(flux_tiny: torch.nn.Module) -> None:
    """Each hooked module's forward is a bound method of one function per hook chain shape (dynamo
    matches it by code), with the module's own signature; remove leaves no instance forward."""
    import inspect

    from diffusers.hooks import HookRegistry, ModelHook

    model = shared_clone(flux_tiny)
    own = inspect.signature(model.forward)
    registry = HookRegistry.check_if_exists_or_initialize(model)
    registry.register_hook(ModelHook(), "other")  # a hook before ToMA's on the root (a cache, say)
    toma_export.apply(model, ToMAConfig())
    attns = [b.attn for b in model.transformer_blocks]
    forwards = [vars(a)["forward"] for a in attns]
    assert all(isinstance(f, types.MethodType) and f.__self__ is a for f, a in zip(forwards, attns))
    assert len({f.__func__.__code__ for f in forwards}) == 1
    assert inspect.signature(model.forward) == own  # torch.export binds arguments by it
    toma_export.remove(model)
    registry.remove_hook("other")
    del model._diffusers_hook, model.forward  # what the registry leaves of the other hook
    assert not any("forward" in vars(m) or hasattr(m, "_diffusers_hook") for m in model.modules())


def test_regional_flux_compiles_once_per_block_class_and_variant() -> None:
    """Flux-shaped 2 + 4 blocks, ``compile_repeated_blocks``: ToMA makes at most twice the unmerged
    graphs (before hooks shared their forward: 7 against 3, one graph per hooked block), and no
    recompile is caused by a hooked forward's identity."""
    p = probe_target("flux", regional=True)
    plain, toma = len(p.unmerged.graphs), len(p.toma.graphs)
    assert toma <= 2 * plain, (plain, toma, p.toma.recompile_reasons)
    assert not any("check_obj_id" in r and ".forward" in r for r in p.toma.recompile_reasons)


@pytest.mark.slow
def test_regional_sdxl_compiles_one_selecting_and_one_plain_graph_per_level() -> None:
    """Tiny SDXL (``fast``), ``compile_repeated_blocks``: per token count one graph that selects (the
    group's first block on a select step) and one that does not (every other block, reuse steps
    included: they read the carried buffers from the step's table), so at most twice the unmerged
    graphs (7 graphs and the recompile limit before; 5 while a tile-ordered block's output was a view,
    which dynamo guards on)."""
    p = probe_target("sdxl-tiny", regional=True)
    selecting = [g for g in p.toma.graphs if g.ops.get("facility_location")]
    assert len(selecting) == len(p.unmerged.graphs), [g.name for g in selecting]
    assert len(p.toma.graphs) <= 2 * len(p.unmerged.graphs), (len(p.unmerged.graphs), len(p.toma.graphs),
                                                              p.toma.recompile_reasons)


@pytest.mark.parametrize(("model_name", "config"),
                         [pytest.param("sdxl_tiny", FAST, marks=pytest.mark.slow), ("flux_tiny", ToMAConfig()),
                          ("flux_tiny", ToMAConfig(weights="period"))])  # kept weights: buffers written in place
def test_regional_compile_equals_eager_on_select_and_reuse_steps(model_name: str, config: ToMAConfig,
                                                                request: pytest.FixtureRequest) -> None:
    """Blocks of one class share graphs under regional compilation: each block's own hook state
    (its site, first or later in its group, the step) still reaches its graph, so three steps at
    recompute_every=2 (select, reuse, select) equal eager ToMA."""
    from toma_export.bench.compile_probe import RecordingBackend, compile_regions
    from toma_export.models.inputs import example_inputs

    base = request.getfixturevalue(model_name)
    cfg = dataclasses.replace(config, recompute_every=2)
    steps = [example_inputs(base, batch=1, height=128, width=128, seed=s) for s in range(3)]
    eager_model, compiled_model = shared_clone(base), shared_clone(base)
    toma_export.apply(eager_model, cfg)
    toma_export.apply(compiled_model, cfg)
    backend = RecordingBackend("cpu")
    torch._dynamo.reset()
    try:
        compile_regions(compiled_model, backend)
        with torch.no_grad():
            eager = [eager_model(**kw)[0] for kw in steps]
            got = [compiled_model(**kw)[0] for kw in steps]
    finally:
        torch._dynamo.reset()
    assert backend.graphs  # the blocks ran compiled
    for e, g in zip(eager, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("script", "bad"), [("count_launches.py", "--targets=sdxl,nope"),
                                              ("compile_probe.py", "--modes=partial"),
                                              ("host_time.py", "--rows=unmerged,nope")])
def test_scripts_answer_help_without_torch_and_refuse_unknown_names(script: str, bad: str) -> None:
    import subprocess
    import sys
    from pathlib import Path

    path = Path(__file__).parents[1] / "scripts" / script
    probe_help = (f"import runpy, sys; sys.argv = [{str(path)!r}, '--help']\n"
                  f"try:\n    runpy.run_path({str(path)!r}, run_name='__main__')\n"
                  "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported for --help'")
    done = subprocess.run([sys.executable, "-c", probe_help], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage" in done.stdout, done.stderr
    done = subprocess.run([sys.executable, str(path), bad], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "unknown" in done.stderr and bad.split("=")[1].split(",")[-1] in done.stderr
