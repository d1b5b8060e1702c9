"""``ModelSpec`` (``toma_export/models/spec.py``): one record per family, decided in one place, and the
route (``toma_export.methods.route``) every caller asks.

The first test lists every place in the library that decides what kind of model something is (by
UNet config fields, Flux.1's block attributes, class names, or which pipeline attribute is set): the
list must be one function, ``spec._decide``. Everything else reads the spec.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from toma_export.config import ToMAConfig
from toma_export.errors import ToMAConfigError, UnsupportedModelError
from toma_export.methods import Route, route
from toma_export.models import spec as specs
from toma_export.models.registry import EMBEDDED_MODELS, embedded_config, model_shell

ROOT = Path(__file__).resolve().parents[1]

#: What deciding a model's kind looks like in source: UNet config fields, Flux.1's block attributes,
#: class-name tables, pipeline attributes probed, and the helpers that used to do it.
KIND_DECISIONS = re.compile(
    r"(hasattr\([^)]*|config_has\()\"down_block_types\"|\"down_block_types\" in "
    r"|\"single_transformer_blocks\", \"pos_embed\""
    r"|SPECS_BY_CLASS\[|in SPECS_BY_CLASS"
    r"|isinstance\([^)]*(UNet2DConditionModel|Transformer2DModel|Transformer3DModel)\)"
    r"|(hasattr|getattr)\((self\.)?pipe\w*, \"(unet|transformer)\""
    r"|FAMILY_OF_CLASS|PACKED_CLASSES|PACKED_FAMILIES|model_family\(|architecture_family\(|_is_sdxl_like|_eager_family"
)


def _places(path: Path) -> set[str]:
    text = path.read_text()
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if KIND_DECISIONS.search(line)]
    if not lines:
        return set()
    funcs = [n for n in ast.walk(ast.parse(text)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    rel = path.relative_to(ROOT).as_posix()
    out = set()
    for line in lines:
        inner = [f for f in funcs if f.lineno <= line <= (f.end_lineno or f.lineno)]
        name = min(inner, key=lambda f: (f.end_lineno or f.lineno) - f.lineno).name if inner else "<module>"
        out.add(f"{rel}:{name}")
    return out


def test_one_function_decides_model_kind() -> None:
    places = set().union(*(_places(p) for p in sorted((ROOT / "toma_export").rglob("*.py"))))
    assert places == {"toma_export/models/spec.py:_decide"}, sorted(places)


def test_the_place_lister_sees_a_decision() -> None:
    """The pattern catches the checks this test exists to keep out (the wrapper's old family check)."""
    assert KIND_DECISIONS.search('family = "unet" if hasattr(self._shell.config, "down_block_types") else "flux"')
    assert KIND_DECISIONS.search('denoiser = pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer')


@pytest.mark.parametrize("name", sorted(EMBEDDED_MODELS))
def test_the_spec_before_loading_is_the_spec_of_the_model(name: str) -> None:
    """Build checks sides and frames from the config before loading; the loaded model gets the same spec."""
    assert specs.spec_for_config(embedded_config(name)) is specs.spec_for(model_shell(name))


def test_specs_of_pipelines_look_alikes_and_other_objects() -> None:
    flux = model_shell("flux-tiny")

    class Pipe:
        transformer = flux
        unet = None

    assert specs.spec_for(Pipe()) is specs.FLUX and specs.FLUX.adapter == "flux"
    assert specs.spec_for(model_shell("sdxl-tiny")).pixel_multiple == 8 and specs.FLUX.pixel_multiple == 16
    assert specs.spec_for(model_shell("wan-tiny")).video and not specs.FLUX2.video
    # a Flux.1-shaped class that is not Flux's (Chroma, ...): Flux's inputs, the graph pass, no adapter
    assert specs._decide(["ChromaLike"], lambda f: False, lambda a: True, configured=True) is specs.FLUX_LIKE
    with pytest.raises(UnsupportedModelError, match="object is not supported"):
        specs.spec_for(object())


def test_route_per_family_method_and_backend() -> None:
    unet, wan = specs.UNET, specs.WAN
    toma, todo, tomesd, catome = (ToMAConfig(method=m) for m in ("toma", "todo", "tomesd", "catome"))
    assert route(unet, toma) is Route.ADAPTER and route(unet, toma, "onnxruntime") is Route.GRAPH_PASS
    assert route(wan, toma) is Route.GRAPH_PASS and route(wan, todo) is Route.KV_PASS
    assert route(unet, todo, "inductor") is Route.ADAPTER and route("flux", tomesd) is Route.ADAPTER
    assert route(wan, ToMAConfig(ratio=0.0)) is Route.UNMERGED and route(wan, ToMAConfig(method="none")) is Route.UNMERGED
    with pytest.raises(UnsupportedModelError, match="Wan: .* implements ToMA and ToDo only; 'tomesd'"):
        route(wan, tomesd, name="Wan")
    with pytest.raises(ToMAConfigError, match="--method tomesd with --backend onnxruntime cannot be built: ToMeSD's"):
        route(unet, tomesd, "onnxruntime")
    with pytest.raises(ToMAConfigError, match="--backend inductor cannot be built: CA-ToMe merges a data-dependent"):
        route(unet, catome, "inductor")
    assert route(unet, catome) is Route.ADAPTER  # eager takes every method


def test_the_embedded_pipeline_is_the_specs() -> None:
    """SDXL and Flux denoisers get the encoder-free pipeline their spec names; other families are refused
    with the way out (their own pipeline), not as a UNet lacking SDXL's conditioning."""
    from toma_export.models.pipelines import build_pipeline, prompt_embeddings

    assert (specs.UNET.embedded_pipeline, specs.FLUX.embedded_pipeline, specs.WAN.embedded_pipeline) == ("sdxl", "flux", None)
    pipe = build_pipeline("flux-tiny")
    assert type(pipe).__name__ == "FluxPipeline" and prompt_embeddings(pipe, text_len=4)["prompt_embeds"].shape[1] == 4
    with pytest.raises(UnsupportedModelError, match="WanTransformer3DModel: toma-export embeds encoder-free SDXL and Flux "
                       "pipelines only; build from this model's diffusers pipeline"):
        build_pipeline("wan-tiny")

    class WanPipe:
        transformer = model_shell("wan-tiny")

    with pytest.raises(UnsupportedModelError, match="WanTransformer3DModel: stand-in prompt embeddings exist for SDXL"):
        prompt_embeddings(WanPipe())
