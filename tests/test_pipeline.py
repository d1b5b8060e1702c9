"""Patched pipelines: the step schedule follows the denoising loop with no wiring by the user."""

from __future__ import annotations

import pytest
import torch

import toma_export
from toma_export import ToMAConfig
from toma_export.models.pipelines import build_pipeline, prompt_embeddings


@pytest.mark.parametrize("name", ["sdxl-tiny", "flux-tiny"])
def test_pipeline_resets_per_generation_and_reuses_between_steps(name: str) -> None:
    pipe = build_pipeline(name)
    pipe.set_progress_bar_config(disable=True)
    cls = type(pipe)
    toma_export.apply(pipe, ToMAConfig(ratio=0.5, recompute_every=2))
    kwargs = dict(prompt_embeddings(pipe), num_inference_steps=3, height=128, width=128, output_type="pt")
    if name == "flux-tiny":
        kwargs["guidance_scale"] = 1.0
    first = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    st = toma_export.state(pipe)  # the cache context the pipeline ran in
    assert st.selections == 2  # steps 0 and 2 select; step 1 reuses
    assert st.step == 0  # diffusers' stateful-hook reset after the call: the next call starts clean
    second = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    assert st.selections == 4  # same schedule again
    torch.testing.assert_close(first, second)  # nothing leaks from one generation to the next
    toma_export.remove(pipe)
    assert type(pipe) is cls
