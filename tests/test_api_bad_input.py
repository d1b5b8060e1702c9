"""Bad input through the Python API: typed errors for wrong types, numpy scalars taken as numbers,
``rewrite`` refusing what ``apply`` refuses, rewritten programs refusing calls they were not built for,
and the merge state of a ``torch.compile``d model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import toma_export
from toma_export import ToMAConfig
from toma_export.errors import ToMAConfigError, ToMATypeError, UnsupportedModelError
from toma_export.models.inputs import example_inputs


def test_numpy_scalars_are_numbers_and_serialise_as_plain_json() -> None:
    cfg = ToMAConfig(ratio=np.float32(0.5), temperature=np.float64(100.0), tile=(np.int64(2), np.int32(2)),
                     recompute_every=np.int64(3), seed=np.uint32(7), merge_cross=np.bool_(True), threshold=np.float16(0.5))
    assert cfg == ToMAConfig(ratio=0.5, temperature=100.0, tile=(2, 2), recompute_every=3, seed=7, merge_cross=True,
                             threshold=0.5)
    assert type(cfg.ratio) is float and type(cfg.tile[0]) is int and type(cfg.seed) is int and cfg.merge_cross is True
    assert ToMAConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ToMAConfigError, match=r"outside \[0, 1\)") as info:
        ToMAConfig(ratio=np.float32(1.5))  # a range error stays a range error
    assert not isinstance(info.value, TypeError)


@pytest.mark.parametrize("kwargs, words", [
    (dict(ratio="half"), "ratio='half' is a str, not a number"),
    (dict(ratio=None), "ratio=None is a NoneType"),
    (dict(ratio=True), "ratio=True is a bool"),
    (dict(temperature="hot"), "temperature='hot'"),
    (dict(threshold=[0.5]), "threshold=[0.5] is a list"),
    (dict(recompute_every=2.0), "recompute_every=2.0 is a float, not an int"),
    (dict(max_downsample="2"), "max_downsample='2' is a str, not an int or None"),
    (dict(seed=1.5), "seed=1.5 is a float"),
    (dict(merge_mlp=1), "merge_mlp=1 is a int, not True or False"),
    (dict(method=None), "method=None is a NoneType, not a string"),
    (dict(tile="4x4"), "tile='4x4' must be two ints"),
    (dict(tile=(4.0, 4)), "tile=(4.0, 4) must be two ints"),
])
def test_wrong_types_are_type_errors_naming_the_field(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ToMATypeError) as info:
        ToMAConfig(**kwargs)
    assert words in str(info.value) and "e.g." in str(info.value) or "(4, 4)" in str(info.value)
    assert isinstance(info.value, TypeError) and isinstance(info.value, ToMAConfigError)


@pytest.mark.parametrize("kwargs", [dict(ratio=-0.1), dict(ratio=math.nan), dict(temperature=0), dict(tile=(0, 4)),
                                    dict(recompute_every=0), dict(seed=-1), dict(threshold=1.5), dict(method="nope")])
def test_out_of_range_values_are_not_type_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ToMAConfigError) as info:
        ToMAConfig(**kwargs)
    assert not isinstance(info.value, TypeError)


def test_a_plain_dict_as_the_config_is_refused_naming_the_conversion(sdxl_tiny: torch.nn.Module) -> None:
    kw = example_inputs(sdxl_tiny, batch=1, height=64, width=64)
    for call in (lambda: toma_export.apply(sdxl_tiny, {"ratio": 0.5}), lambda: toma_export.rewrite(sdxl_tiny, kw, {"ratio": 0.5})):
        with pytest.raises(ToMATypeError, match=r"config is a dict \(ratio\), not a ToMAConfig; pass ToMAConfig\(\*\*d\)"):
            call()
    assert not hasattr(sdxl_tiny, "_toma_installed")  # nothing was patched
    with pytest.raises(ToMATypeError, match="not a ToMAConfig"):
        toma_export.apply(sdxl_tiny, 0.5)


def test_rewrite_refuses_what_apply_refuses(sdxl_tiny: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UnsupportedModelError, match="no attention or MLP over an image-token grid"):
        toma_export.rewrite(torch.nn.Linear(4, 4), {"input": torch.randn(2, 4)}, ToMAConfig())
    program = toma_export.rewrite(torch.nn.Linear(4, 4), {"input": torch.randn(2, 4)}, ToMAConfig(), strict=False)
    assert program.sites == []  # strict=False: the report, as inspect shows it
    import toma_export.graph as graph

    monkeypatch.setattr(graph, "capture", lambda *a, **k: pytest.fail("captured before refusing the method"))
    kw = example_inputs(sdxl_tiny, batch=1, height=64, width=64)
    for method in ("tomesd", "catome"):
        with pytest.raises(UnsupportedModelError, match=f"method '{method}' has no graph pass.*toma_export.apply"):
            toma_export.rewrite(sdxl_tiny, kw, ToMAConfig(method=method))
    with pytest.raises(ToMATypeError, match="torch.nn.Module"):
        toma_export.rewrite(object(), kw, ToMAConfig())  # type: ignore[arg-type]


def test_rewrite_refuses_a_config_that_merges_no_site(sdxl_tiny: torch.nn.Module) -> None:
    kw = example_inputs(sdxl_tiny, batch=1, height=64, width=64)
    with pytest.raises(UnsupportedModelError, match="merges no site.*merge_attn=False"):
        toma_export.rewrite(sdxl_tiny, kw, ToMAConfig(merge_attn=False, merge_mlp=False))
    assert toma_export.rewrite(sdxl_tiny, kw, ToMAConfig(ratio=0.0)).sites == []  # ratio 0: the model itself


def test_rewritten_program_refuses_calls_it_was_not_built_for(sdxl_tiny: torch.nn.Module) -> None:
    kw = example_inputs(sdxl_tiny, batch=1, height=64, width=64)
    program = toma_export.rewrite(sdxl_tiny, kw, ToMAConfig())
    with torch.no_grad():
        program(**kw)
        bigger = example_inputs(sdxl_tiny, batch=1, height=128, width=128)
        with pytest.raises(ToMAConfigError, match=r"input sample has shape \[1, 4, 16, 16\].*\[1, 4, 8, 8\].*rewrite"):
            program(**bigger)
        with pytest.raises(ToMAConfigError, match=r"shape \[2, 4, 8, 8\]"):
            program(**example_inputs(sdxl_tiny, batch=2, height=64, width=64))
        with pytest.raises(ToMAConfigError, match="timestep missing"):
            program(**{k: v for k, v in kw.items() if k != "timestep"})
        with pytest.raises(ToMAConfigError, match="colour not among them"):
            program(**kw, colour=torch.zeros(1))
        with pytest.raises(ToMATypeError, match="must be a tensor"):
            program(**{**kw, "sample": 3.0})
    assert program.step == 1  # no refused call counted as a step


def test_state_of_a_compiled_model_counts_its_selections(sd15_tiny: torch.nn.Module) -> None:
    """ToMA applied to a torch.compile'd UNet merges inside the compiled graph; the selections it keeps
    are counted there too, as eager counts them, and remove() through the wrapper takes the hooks off."""
    kw = example_inputs(sd15_tiny, batch=1, height=64, width=64)
    cfg = ToMAConfig(recompute_every=2)
    counts = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        model = torch.compile(sd15_tiny, backend="eager") if compiled else sd15_tiny
        toma_export.apply(model, cfg)
        try:
            with torch.no_grad():
                for _ in range(3):
                    model(**kw)
            st = toma_export.state(model)
            counts[compiled] = (st.step, st.selections)
        finally:
            toma_export.remove(model)
        assert not hasattr(sd15_tiny, "_toma_installed")
    assert counts[False] == counts[True] == (3, 2)  # steps 0 and 2 select, step 1 reuses


def test_build_request_fields_of_the_wrong_type(tmp_path: Path) -> None:
    from toma_export.engines.build import BuildRequest, build_artifact

    for field, value in (("batch", "2"), ("height", 64.0), ("frames", None), ("backend", 1)):
        with pytest.raises(ToMATypeError, match=f"BuildRequest.{field}="):
            build_artifact(BuildRequest("sdxl-tiny", out=tmp_path / "a", **{field: value}), progress=False)
    with pytest.raises(ToMAConfigError, match="--out '' is empty"):
        build_artifact(BuildRequest("sdxl-tiny", out=""), progress=False)  # type: ignore[arg-type]
    with pytest.raises(ToMATypeError, match="must be a ToMAConfig"):
        build_artifact(BuildRequest("sdxl-tiny", out=tmp_path / "a", config={"ratio": 0.5}), progress=False)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("model_name", ["flux_tiny", "wan"])
def test_unet_options_on_a_transformer_are_refused_and_nothing_stays(model_name: str,
                                                                      request: pytest.FixtureRequest) -> None:
    """UNet-only installer options (``max_downsample``) on the Flux adapter or the graph-pass route: an
    error naming them, and no hook left on the model (the Flux adapter used to drop them silently)."""
    from toma_export.eager.api import install
    from toma_export.models.registry import load_model

    model = request.getfixturevalue(model_name) if model_name.endswith("_tiny") else load_model(f"{model_name}-tiny")
    with pytest.raises(TypeError, match=r"\['max_downsample'\] apply to UNets only"):
        install(model, ToMAConfig(), max_downsample=1)
    assert not any(hasattr(m, "_diffusers_hook") for m in model.modules())
