"""Eager ToMA on diffusers' hook system: composes with diffusers' caches, shares state rules with
every pipeline holding the model, and compiles without graph breaks."""

from __future__ import annotations

import pytest
import torch

import toma_export
from toma_export import ToMAConfig
from toma_export.models.inputs import example_inputs
from toma_export.models.pipelines import build_pipeline, prompt_embeddings


def _generate(pipe, seed: int = 0, steps: int = 3, **extra) -> torch.Tensor:
    kwargs = dict(prompt_embeddings(pipe), num_inference_steps=steps, height=128, width=128, output_type="pt")
    if "transformer" in pipe.components:
        kwargs["guidance_scale"] = 1.0
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs, **extra).images


def _hook_names(model: torch.nn.Module) -> set[str]:
    return {n for m in model.modules() if hasattr(m, "_diffusers_hook") for n in m._diffusers_hook.hooks}


@pytest.mark.parametrize("toma_first", [False, True], ids=["cache-then-toma", "toma-then-cache"])
def test_toma_composes_with_first_block_cache(toma_first: bool) -> None:
    from diffusers.hooks import FirstBlockCacheConfig

    pipe = build_pipeline("flux-tiny")
    pipe.set_progress_bar_config(disable=True)
    cache = FirstBlockCacheConfig(threshold=0.2)
    pipe.transformer.enable_cache(cache)
    cache_only = _generate(pipe)
    pipe.transformer.disable_cache()

    if toma_first:
        toma_export.apply(pipe, ToMAConfig(ratio=0.5, recompute_every=2))
        pipe.transformer.enable_cache(cache)
    else:
        pipe.transformer.enable_cache(cache)
        toma_export.apply(pipe, ToMAConfig(ratio=0.5, recompute_every=2))
    both = _generate(pipe)
    names = _hook_names(pipe.transformer)
    assert {"fbc_leader_block_hook", "fbc_block_hook"} <= names and "toma_step" in names
    assert toma_export.state(pipe).selections == 2  # merging ran: steps 0 and 2 selected
    assert torch.isfinite(both).all()
    assert not torch.allclose(both, cache_only, atol=1e-6), "ToMA should change the cached pipeline's output"

    toma_export.remove(pipe)
    names = _hook_names(pipe.transformer)
    assert not any(n.startswith("toma_") for n in names) and "fbc_leader_block_hook" in names
    torch.testing.assert_close(_generate(pipe), cache_only)  # the cache alone, as before
    pipe.transformer.disable_cache()


@pytest.mark.parametrize("name", ["sdxl-tiny", "flux-tiny"])
def test_every_pipeline_sharing_the_model_starts_each_call_clean(name: str) -> None:
    pipe = build_pipeline(name)
    pipe.set_progress_bar_config(disable=True)
    toma_export.apply(pipe, ToMAConfig(ratio=0.5, recompute_every=2))
    try:
        other = type(pipe).from_pipe(pipe)
        other.set_progress_bar_config(disable=True)
        steps_seen: list[int] = []

        def record(p, i, t, kw):  # the model's step count when each denoising step ends
            steps_seen.append(toma_export.state(p).step)
            return kw

        a = _generate(other, callback_on_step_end=record)
        b = _generate(other, callback_on_step_end=record)
        c = _generate(pipe, callback_on_step_end=record)
        assert steps_seen == [1, 2, 3] * 3  # each call of either pipeline starts at step 0
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=0, atol=0)
    finally:
        toma_export.remove(pipe)


CASES = [(m, meth) for m in ("sdxl_tiny", "flux_tiny") for meth in ("toma", "tomesd", "todo")]


@pytest.mark.parametrize(("model_name", "method"), CASES)
def test_applied_model_is_one_graph_between_host_step_boundaries(model_name: str, method: str,
                                                                 request: pytest.FixtureRequest) -> None:
    """The model's computation is one graph; the only code dynamo skips is the step hook's host code."""
    model = request.getfixturevalue(model_name)
    kw = example_inputs(model, batch=2, height=128, width=128)
    toma_export.apply(model, ToMAConfig(ratio=0.5, method=method, recompute_every=2))
    try:
        torch._dynamo.reset()
        with torch.no_grad():
            explained = torch._dynamo.explain(model)(**kw)
        reasons = [str(b.reason) for b in explained.break_reasons]
        assert all("StepHook." in r for r in reasons), [r[:200] for r in reasons]
        assert explained.graph_count == 1
    finally:
        toma_export.remove(model)
        torch._dynamo.reset()


@pytest.mark.parametrize("model_name", ["sdxl_tiny", "flux_tiny"])
def test_compile_equals_eager_on_select_and_reuse_steps(model_name: str, request: pytest.FixtureRequest) -> None:
    """Three steps at recompute_every=2 (select, reuse, select) with other inputs each step: the
    compiled model's step state follows eager's exactly. The step boundary is host code (the step
    hook is ``torch.compiler.disable``), so the whole model compiles without ``fullgraph``."""
    model = request.getfixturevalue(model_name)
    steps = [example_inputs(model, batch=1, height=128, width=128, seed=s) for s in range(3)]
    toma_export.apply(model, ToMAConfig(ratio=0.5, recompute_every=2))
    try:
        with torch.no_grad():
            eager = [model(**kw)[0] for kw in steps]
            toma_export.reset(model)
            torch._dynamo.reset()
            compiled = torch.compile(model, backend="inductor", dynamic=False)
            got = [compiled(**kw)[0] for kw in steps]
            toma_export.reset(model)
            again = compiled(**steps[1])[0]  # a new generation selects on these inputs: not step 1's reuse
    finally:
        toma_export.remove(model)
        torch._dynamo.reset()
    for e, g in zip(eager, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(again, eager[1], atol=1e-5), "a reset must end reuse in the compiled model too"
