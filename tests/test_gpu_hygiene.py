"""No host work inside a forward, the schedule on the host, select and reuse as two graphs.

Counted on the ``meta`` device (real sizes cost no memory there): a host-to-device copy or a read of a
device value is a GPU sync, a CPU-side op is host work in the hot path (tests/op_count.py).
"""

from __future__ import annotations

import pytest
import torch
from op_count import count_forward

import toma_export
import toma_export.eager.flux as flux_hooks
from toma_export import ToMAConfig
from toma_export.models.inputs import example_inputs
from toma_export.models.registry import EMBEDDED_MODELS
from toma_export.presets import preset
from toma_export.schedule import StepSchedule


def _meta_model(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return EMBEDDED_MODELS[name][2]()


def _host_work_per_step(model: torch.nn.Module, kw: dict, config: ToMAConfig, grid: tuple[int, int] | None,
                        steps: int = 3) -> list[tuple[int, int, int]]:
    """(host-to-device copies, device reads, CPU ops) of each step after a first call at the shape."""
    toma_export.apply(model, config)
    try:
        if grid is not None:
            model._toma_installed.root.read_grid.remember(*grid)
        count_forward(model, kw)  # the first call at a shape may build its caches
        toma_export.reset(model)
        return [count_forward(model, kw).host_work() for _ in range(steps)]  # select, reuse, select
    finally:
        toma_export.remove(model)


@pytest.mark.parametrize(("name", "px", "grid", "text_len", "config"), [
    # Flux.1 full depth: 19 double + 38 single blocks, 4096 image + 512 text tokens (before: 114 copies)
    ("flux-full", 1024, (64, 64), 512, ToMAConfig(ratio=0.5, recompute_every=2)),
    # SDXL-base UNet at 1024², both attention levels, the fast preset
    ("sdxl", 1024, None, None, ToMAConfig(**preset("fast"), recompute_every=2)),
    ("flux-tiny", 256, (16, 16), None, ToMAConfig(ratio=0.5, recompute_every=2)),
    ("sdxl-tiny", 256, None, None, ToMAConfig(**preset("fast"), recompute_every=2)),
])
def test_real_size_forward_has_no_host_work(name: str, px: int, grid: tuple[int, int] | None, text_len: int | None,
                                            config: ToMAConfig) -> None:
    model = _meta_model(name)
    kw = example_inputs(model, height=px, width=px, device="meta", **({"text_len": text_len} if text_len else {}))
    assert count_forward(model, kw).host_work() == (0, 0, 0)  # the model itself
    for copies, reads, cpu_ops in _host_work_per_step(model, kw, config, grid):
        assert copies == 0 and reads == 0 and cpu_ops <= 2, (name, copies, reads, cpu_ops)


def test_meta_flux_ids_without_a_told_grid_are_a_clear_error() -> None:
    model = _meta_model("flux-tiny")
    kw = example_inputs(model, height=256, width=256, device="meta")
    toma_export.apply(model, ToMAConfig(ratio=0.5))
    try:
        with pytest.raises(toma_export.ToMAError, match=r"256 image tokens.*remember\(h, w\)"):
            model(**kw)
    finally:
        toma_export.remove(model)


def test_flux_pipeline_tells_the_grid_and_ids_are_never_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from toma_export.models.pipelines import build_pipeline, prompt_embeddings

    def unread(ids: torch.Tensor) -> None:
        raise AssertionError("the image grid was read from id values")

    pipe = build_pipeline("flux-tiny")
    pipe.set_progress_bar_config(disable=True)
    monkeypatch.setattr(flux_hooks, "image_grid", unread)
    toma_export.apply(pipe, ToMAConfig(ratio=0.5, recompute_every=2))
    try:
        kwargs = dict(prompt_embeddings(pipe), num_inference_steps=2, guidance_scale=1.0, output_type="pt")
        pipe(height=128, width=256, **kwargs)  # not square: a grid the token count alone cannot tell
        st = toma_export.state(pipe)
        assert st.grid == (128 // pipe.vae_scale_factor // 2, 256 // pipe.vae_scale_factor // 2)
        assert st.selections >= 1
    finally:
        toma_export.remove(pipe)
    assert "_prepare_latent_image_ids" not in pipe.__dict__  # remove() undoes the pipeline hook


def test_schedule_decides_on_the_host_and_keeps_buffers_across_generations() -> None:
    s = StepSchedule(3)
    decisions = []
    for _ in range(7):
        decisions.append(s.begin(["k"]))
        if s.selecting:
            s.write("k", torch.full((1, 2, 1), s.step))
        s.advance()
    assert decisions == [True, False, False, True, False, False, True]
    assert s.step == 7 and s.selections == 3 and isinstance(s.step, int)
    buf = s.buffers["k"]
    assert buf.flatten().tolist() == [6, 6]  # written in place: the last select step's picks
    s.reset()
    assert s.begin(["k"]) and s.buffers["k"] is buf  # a new generation selects, into the same buffer
    s.write("k", torch.zeros(1, 2, 1, dtype=torch.long))
    s.advance()
    assert not s.begin(["k"]) and s.read(["k"])[0] is buf
    s.advance()
    assert s.begin(["k", "new batch"])  # a key that carries nothing forces selection mid-schedule


def test_reserved_keys_no_site_uses_do_not_force_selection() -> None:
    s = StepSchedule(2)
    s.reserve("used", (1, 4, 2), torch.device("cpu"))
    s.reserve("unused", (1, 1, 2), torch.device("cpu"))
    assert s.begin(["used", "unused"])
    s.write("used", torch.zeros(1, 4, 2, dtype=torch.long))
    s.advance()
    assert not s.begin(["used", "unused"])  # the select step left "unused" unwritten: not needed


@pytest.mark.slow
def test_compiled_fast_unet_has_two_graphs_no_cpu_work_and_no_selection_on_reuse() -> None:
    """A recording torch.compile backend over 6 steps (recompute_every=3) on the meta device."""
    graphs: list[torch.fx.GraphModule] = []

    def record(gm: torch.fx.GraphModule, example: list) -> object:
        graphs.append(gm)
        return gm.forward

    model = _meta_model("sdxl-tiny")
    kw = example_inputs(model, height=256, width=256, batch=2, device="meta")
    toma_export.apply(model, ToMAConfig(**preset("fast"), recompute_every=3))
    torch._dynamo.reset()
    try:
        compiled = torch.compile(model, backend=record, dynamic=False)
        with torch.no_grad():
            for _ in range(6):
                compiled(**kw)
    finally:
        toma_export.remove(model)
        torch._dynamo.reset()

    def on_cpu(n: torch.fx.Node) -> bool:
        v = n.meta.get("example_value")
        return isinstance(v, torch.Tensor) and v.device.type == "cpu"

    def selections(gm: torch.fx.GraphModule) -> int:
        return sum("facility_location" in str(n.target) for n in gm.graph.nodes)

    assert len(graphs) == 2
    for gm in graphs:
        assert not [n for n in gm.graph.nodes if n.op in ("placeholder", "call_function") and on_cpu(n)]
    select, reuse = sorted(graphs, key=selections, reverse=True)
    assert selections(select) > 0 and selections(reuse) == 0
    writes = [n for n in select.graph.nodes if "copy_" in str(n.target)]
    assert writes  # the select graph writes the carried buffers in place


def test_merge_ops_decompose_under_inductor_and_selection_stays_one_op(flux_tiny: torch.nn.Module) -> None:
    """Inductor's decomposition table (what torch.compile and AOTInductor apply) lowers the program's
    merge ops to ATen; the outputs equal the program's own."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.decomposition import select_decomp_table

    from toma_export.graph.decompositions import fuse_under_inductor

    kw = example_inputs(flux_tiny, height=128, width=128)
    program = toma_export.rewrite(flux_tiny, kw, ToMAConfig(ratio=0.5, recompute_every=2))
    graphs: list[torch.fx.GraphModule] = []

    def record(gm: torch.fx.GraphModule, example: list) -> object:
        graphs.append(gm)
        return gm.forward

    with torch.no_grad():
        expected = [program(**kw)[0] for _ in range(2)]  # select, reuse
        program.reset()
        torch._dynamo.reset()
        select_decomp_table()  # inductor's cached table made first, as after any earlier compile in the process
        fuse_under_inductor()  # what program.compile registers; inductor reads its table when it compiles
        program.compile(backend=aot_autograd(fw_compiler=record, decompositions=select_decomp_table()))
        got = [program(**kw)[0] for _ in range(2)]
    torch._dynamo.reset()
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e)
    assert len(graphs) == 2

    def toma_ops(gm: torch.fx.GraphModule) -> list[str]:
        return [str(n.target) for n in gm.graph.nodes if str(n.target).startswith("toma.")]

    found = sorted(toma_ops(graphs[0]) + toma_ops(graphs[1]))
    assert found and set(found) == {"toma.facility_location.default"}, found


@pytest.mark.parametrize("name", ["flux-tiny", "sdxl-tiny"])
def test_regional_backend_compiles_the_repeated_blocks_only(name: str) -> None:
    from toma_export.bench.backends import get_backend
    from toma_export.eager.unet import transformer_blocks
    from toma_export.models import load_model

    model = load_model(name)
    out = get_backend("inductor-regional")(model, None, {})
    assert out is model and model._compiled_call_impl is None  # the model itself stays eager
    declared = set(getattr(model, "_repeated_blocks", None) or ())
    blocks = ([m for m in model.modules() if type(m).__name__ in declared] if declared
              else [m for _, m in transformer_blocks(model)])
    assert blocks and all(b._compiled_call_impl is not None for b in blocks)
