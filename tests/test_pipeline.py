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
    st = toma_export.state(pipe)
    kwargs = dict(prompt_embeddings(pipe), num_inference_steps=3, height=128, width=128, output_type="pt")
    if name == "flux-tiny":
        kwargs["guidance_scale"] = 1.0
    first = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    assert st.step == 3 and st.selections == 2  # steps 0 and 2 select; step 1 reuses
    second = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    assert st.step == 3 and st.selections == 4  # reset at the call: same schedule again
    torch.testing.assert_close(first, second)  # nothing leaks from one generation to the next
    toma_export.remove(pipe)
    assert type(pipe) is cls
