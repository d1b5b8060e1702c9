"""The manifest's typed records (``engines/manifest.py``) without a build: write -> parse gives equal
records for every model family and shape kind; wrong types, missing keys and other formats are refused
naming the key. (A real build's manifest round-trips in ``test_artifact_safety.py``.)"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from toma_export.config import ToMAConfig
from toma_export.engines.manifest import (
    FORMAT_VERSION,
    KNOWN_SPECS,
    ArtifactError,
    BuildDetails,
    Manifest,
    ModelRecord,
    Shapes,
    SiteRecord,
    parse_manifest,
)
from toma_export.models.spec import FLUX, FLUX_LIKE, TRANSFORMER, ModelSpec

DIGEST = "ab" * 32


def _manifest(spec: ModelSpec, shapes: Shapes | None = None, single: bool = False) -> Manifest:
    variants = {"single": "single.onnx"} if single else {"select": "select.onnx", "reuse": "reuse.onnx"}
    return Manifest(
        model=ModelRecord("some-model", "SomeModel", "0" * 16, "1" * 16, spec, source="hub", revision="main",
                          commit="c" * 40, component="transformer", subfolder="transformer"),
        config=ToMAConfig(ratio=0.5, tile=(2, 4), recompute_every=3),
        backend="onnxruntime",
        shapes=shapes or Shapes(2, 64, 64, [[2, 4, 8, 8], [2]], frames=1),
        extra=BuildDetails(
            variants=variants, groups=[] if single else [(16, 8)], input_spec="[1, {}]", precision="fp16",
            selection="unrolled", input_dtypes=["float16", "float32"], seed=7,
            sites=[SiteRecord("blocks.0.attn", "attn", 64, 32, 0, (8, 8), sequence=64, merged=32)],
            build_seconds={"load model": 0.5},
        ),
        files={v: DIGEST for v in variants.values()},
        versions={"toma-export": "0.1.0", "torch": "2.13"},
    )


@pytest.mark.parametrize("spec", KNOWN_SPECS, ids=[f"{s.family}-{s.kind}-{s.adapter}" for s in KNOWN_SPECS])
def test_round_trip_gives_equal_records_for_every_family(spec: ModelSpec) -> None:
    m = _manifest(spec)
    back = Manifest.from_json(m.to_json())
    assert back == m
    assert back.model.spec is spec  # the family's own record, not a look-alike
    assert back.to_json() == m.to_json()


def test_flux_look_alikes_stay_apart() -> None:
    """Three specs share the family name "flux"; the recorded facts tell them apart."""
    specs = {Manifest.from_json(_manifest(s).to_json()).model.spec.adapter for s in (FLUX, FLUX_LIKE)}
    assert specs == {"flux", None}
    assert Manifest.from_json(_manifest(TRANSFORMER).to_json()).model.spec is TRANSFORMER


@pytest.mark.parametrize("shapes", [
    Shapes(1, 64, 64, [[1, 4, 2, 8, 8]], frames=5),
    Shapes(2, 64, 64, [[2, 4, 8, 8], [2]], dynamic_batch=True, batch_dims=[0, 0], batch_max=63),
    Shapes(2, 64, 64, [[2, 4, 8, 8], [2]], dynamic_batch=True, batch_dims=[0, None], batch_max=None),
], ids=["clip", "dynamic-bounded", "dynamic-unbounded"])
def test_round_trip_of_shapes(shapes: Shapes) -> None:
    m = _manifest(FLUX, shapes, single=True)
    assert Manifest.from_json(m.to_json()) == m


def _edited(path: tuple[Any, ...], value: Any = None, drop: bool = False) -> dict[str, Any]:
    data = json.loads(_manifest(FLUX).to_json())
    d = data
    for key in path[:-1]:
        d = d[key]
    if drop:
        del d[path[-1]]
    else:
        d[path[-1]] = value
    return data


@pytest.mark.parametrize("path,value,drop,message", [
    (("model", "name"), None, True, r"'model\.name' is missing"),
    (("model", "name"), "", False, r"'model\.name' is empty"),
    (("model", "commit"), 5, False, r"'model\.commit' must be a string or null, not int"),
    (("model", "spec", "text_len"), 9, False, r"'model\.spec' records a model family this toma-export does not know"),
    (("model", "spec", "colour"), "red", False, r"'model\.spec\.colour' is not a manifest key"),
    (("model", "spec"), "flux", False, r"'model\.spec' must be an object, not str"),
    (("shapes", "inputs"), [[1, -1]], False, r"'shapes\.inputs' must be a list of shapes"),
    (("shapes", "dynamic_batch"), "yes", False, r"'shapes\.dynamic_batch' must be true or false, not str"),
    (("extra", "groups"), [[16, 0]], False, r"'extra\.groups' must be a list of \[tiles, destinations\] int pairs"),
    (("extra", "groups"), [], False, r"'extra\.groups' is empty, but a select/reuse artifact"),
    (("extra", "seed"), 1.5, False, r"'extra\.seed' must be an int, not float"),
    (("extra", "build_seconds"), {"x": "slow"}, False, r"'extra\.build_seconds' must map stage names to numbers"),
    (("extra", "sites", 0, "grid"), [8, "8"], False, r"'extra\.sites\.0\.grid' must be a list of ints"),
    (("versions", "torch"), 2, False, r"'versions\.torch' must be a string, not int"),
    (("backend",), "", False, r"'backend' is empty"),
])
def test_wrong_or_missing_fields_name_the_key_and_the_fix(path: tuple[Any, ...], value: Any, drop: bool, message: str) -> None:
    with pytest.raises(ArtifactError, match=r"^m: " + message + r".*; rebuild the artifact \(toma-export build"):
        parse_manifest(_edited(path, value, drop), "m")


@pytest.mark.parametrize("version", [1, FORMAT_VERSION + 1])
def test_other_formats_are_refused_naming_both_versions(version: int) -> None:
    data = _edited(("format_version",), version)
    with pytest.raises(ArtifactError, match=re.escape(f"written in artifact format {version}; this toma-export reads "
                                                      f"format {FORMAT_VERSION}. Rebuild it")):
        parse_manifest(data, "m")


def test_expected_toma_export_version_is_checked() -> None:
    data = json.loads(_manifest(FLUX).to_json())
    assert parse_manifest(data, "m", expect_version="0.1.0") == _manifest(FLUX)
    with pytest.raises(ArtifactError, match=r"built by toma-export 0\.1\.0; this is 9\.9\. Rebuild"):
        parse_manifest(data, "m", expect_version="9.9")
