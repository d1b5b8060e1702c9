"""The artifact manifest's schema: typed records, parsed and validated once, when it is read.

``manifest.json`` records what was built: the model (identity, hashes, where it came from, and its
:class:`~toma_export.models.spec.ModelSpec`, so loaders read the family facts instead of deriving them
again), the full :class:`~toma_export.config.ToMAConfig`, the backend, the shapes it takes, the engine
files (variants, destination groups, input structure and dtypes, precision, merged sites) and a
SHA-256 of every file. :func:`parse_manifest` turns the JSON into a :class:`Manifest` key by key;
every error names the key and the fix, so nothing downstream reads a string key or meets a wrong
type. The folder checks (paths, hashes) and writing are :mod:`toma_export.engines.artifact`.

Format 2 added ``model.spec`` (and made every field a build writes required); manifests of another
format are refused with the version they were written in.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import PureWindowsPath
from typing import Any, Final

from toma_export.config import ToMAConfig
from toma_export.errors import ToMAError
from toma_export.models.spec import FLUX_LIKE, SPECS_BY_FAMILY, TRANSFORMER, ModelSpec
from toma_export.vocabulary import PRECISIONS, SELECTIONS, Precision, Selection

__all__ = [
    "FORMAT_VERSION", "MANIFEST", "ArtifactError", "BuildDetails", "Manifest", "ModelRecord", "Shapes", "SiteRecord",
    "parse_manifest", "spec_from_json", "spec_to_json",
]

MANIFEST: Final = "manifest.json"
#: 2: ``model.spec`` recorded; every field a build writes is required.
FORMAT_VERSION: Final = 2
REBUILD: Final = "rebuild the artifact (toma-export build ... --force --out FOLDER)"
#: The variant sets an artifact holds: one stateless program, or ToMA's select/reuse pair.
VARIANT_SETS: Final = ({"single"}, {"select", "reuse"})
#: Every spec a manifest may record (the family table plus Flux.1 look-alikes and other transformers).
KNOWN_SPECS: Final = (*SPECS_BY_FAMILY.values(), FLUX_LIKE, TRANSFORMER)


class ArtifactError(ToMAError):
    """An artifact folder is missing, incomplete, corrupted, or does not fit this runtime."""


# --- reading one JSON object ----------------------------------------------------------------------
def bad_entry(where: str, key: str, problem: str) -> ArtifactError:
    return ArtifactError(f"{where}: {key} {problem}; {REBUILD}.")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_KIND_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an int", bool: "true or false",
               float: "a number", type(None): "null"}


def _fits(v: Any, kinds: tuple[type, ...]) -> bool:
    return any(_is_int(v) if k is int else (isinstance(v, (int, float)) and not isinstance(v, bool)) if k is float
               else isinstance(v, k) for k in kinds)


class _Obj:
    """One JSON object of a manifest: typed reads that name the key (``path`` + key), unknown keys refused."""

    def __init__(self, data: dict[str, Any], where: str, path: str, known: set[str]):
        self.data, self.where, self.path = data, where, path
        for key in data:
            if key not in known:
                raise self.bad(key, "is not a manifest key this toma-export knows")

    def bad(self, key: str, problem: str) -> ArtifactError:
        return bad_entry(self.where, f"'{self.path}{key}'", problem)

    def get(self, key: str, *kinds: type, default: Any = None, required: bool = True) -> Any:
        if key not in self.data:
            if required:
                raise self.bad(key, "is missing")
            return default
        v = self.data[key]
        if not _fits(v, kinds):
            raise self.bad(key, f"must be {' or '.join(_KIND_NAMES.get(k, k.__name__) for k in kinds)}, not {type(v).__name__}")
        return v

    def obj(self, key: str, known: set[str]) -> _Obj:
        return _Obj(self.get(key, dict), self.where, f"{self.path}{key}.", known)

    def count(self, key: str, required: bool = True, default: int = 1) -> int:
        """An int >= 1."""
        v = self.get(key, int, required=required, default=default)
        if v < 1:
            raise self.bad(key, f"must be an int >= 1, not {v!r}")
        return int(v)

    def one_of(self, key: str, choices: tuple[str, ...]) -> Any:
        v = self.get(key, str)
        if v not in choices:
            raise self.bad(key, f"must be one of {', '.join(choices)}, not {v!r}")
        return v

    def strings(self, key: str) -> dict[str, str]:
        """An object of string values."""
        d = self.get(key, dict)
        for k, v in d.items():
            if not isinstance(v, str):
                raise self.bad(f"{key}.{k}", f"must be a string, not {type(v).__name__}")
        return dict(d)


def _keys(cls: type, renamed: dict[str, str] | None = None) -> set[str]:
    renamed = renamed or {}
    return {renamed.get(f.name, f.name) for f in fields(cls)}


# --- the records ----------------------------------------------------------------------------------
def spec_to_json(spec: ModelSpec) -> dict[str, Any]:
    """A :class:`ModelSpec`'s facts as JSON (``float32_inputs`` sorted)."""
    return {**asdict(spec), "float32_inputs": sorted(spec.float32_inputs)}


def spec_from_json(data: Any, where: str, path: str = "model.spec") -> ModelSpec:
    """The recorded spec, which must be one this toma-export knows, fact for fact."""
    if not isinstance(data, dict):
        raise bad_entry(where, f"'{path}'", f"must be an object, not {type(data).__name__}")
    obj = _Obj(data, where, f"{path}.", _keys(ModelSpec))
    for name in _keys(ModelSpec):
        obj.get(name, object)  # present (types: by the comparison below)
    for spec in KNOWN_SPECS:
        if spec_to_json(spec) == data:
            return spec
    raise bad_entry(where, f"'{path}'", f"records a model family this toma-export does not know "
                                   f"({data.get('family')!r}, kind {data.get('kind')!r}, adapter {data.get('adapter')!r})")


@dataclass(frozen=True)
class ModelRecord:
    """The model an artifact was built from (``model``): name, class, hashes, source and spec."""

    name: str
    class_name: str  # JSON "class"
    config_hash: str
    weights_hash: str
    spec: ModelSpec
    source: str | None = None  # "embedded" | "local" | "hub" (registry.ModelSource.kind)
    revision: str | None = None
    variant: str | None = None
    subfolder: str | None = None
    component: str | None = None  # the pipeline's denoiser attribute when the model came from a pipeline
    commit: str | None = None  # the Hub snapshot

    SOURCES = ("embedded", "local", "hub")
    _OPTIONAL = ("source", "revision", "variant", "subfolder", "component", "commit")

    @property
    def load_revision(self) -> str | None:
        """What to load again: the Hub snapshot the files came from, else the revision asked for."""
        return self.commit or self.revision

    @classmethod
    def from_identity(cls, identity: dict[str, Any], spec: ModelSpec) -> ModelRecord:
        """From :func:`toma_export.models.identity.model_identity`'s record and the model's spec."""
        return cls(name=identity["name"], class_name=identity["class"], config_hash=identity["config_hash"],
                   weights_hash=identity["weights_hash"], spec=spec,
                   **{k: identity.get(k) for k in cls._OPTIONAL})

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["class"] = out.pop("class_name")
        out["spec"] = spec_to_json(self.spec)
        return out

    @classmethod
    def from_json(cls, parent: _Obj) -> ModelRecord:
        obj = parent.obj("model", _keys(cls, {"class_name": "class"}))
        name = obj.get("name", str)
        if not name:
            raise obj.bad("name", "is empty")
        opt = {k: obj.get(k, str, type(None), required=False) for k in cls._OPTIONAL}
        if opt["source"] is not None and opt["source"] not in cls.SOURCES:
            raise obj.bad("source", f"must be one of {', '.join(cls.SOURCES)}, not {opt['source']!r}")
        return cls(name=name, class_name=obj.get("class", str), config_hash=obj.get("config_hash", str),
                   weights_hash=obj.get("weights_hash", str),
                   spec=spec_from_json(obj.get("spec", dict), obj.where, f"{obj.path}spec"), **opt)


@dataclass
class Shapes:
    """What the artifact takes (``shapes``): the example batch, resolution, pixel frames and the flat
    inputs' shapes; with a dynamic batch, which dim of each input is the batch and the largest batch
    the exported program is valid for (``batch_max``, None: unbounded)."""

    batch: int
    height: int
    width: int
    inputs: list[list[int]]
    frames: int = 1
    dynamic_batch: bool = False
    batch_dims: list[int | None] | None = None
    batch_max: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"batch": self.batch, "height": self.height, "width": self.width, "frames": self.frames,
                               "inputs": self.inputs}
        if self.dynamic_batch:
            out.update(dynamic_batch=True, batch_dims=self.batch_dims, batch_max=self.batch_max)
        return out

    @classmethod
    def from_json(cls, data: Any, where: str, path: str = "shapes.") -> Shapes:
        if not isinstance(data, dict):
            raise bad_entry(where, f"'{path.rstrip('.')}'", f"must be an object, not {type(data).__name__}")
        obj = _Obj(data, where, path, _keys(cls))
        batch, height, width = obj.count("batch"), obj.count("height"), obj.count("width")
        frames = obj.count("frames", required=False)
        inputs = obj.get("inputs", list)
        if not all(isinstance(s, list) and all(_is_int(n) and n >= 0 for n in s) for s in inputs):
            raise obj.bad("inputs", "must be a list of shapes (lists of ints >= 0)")
        dynamic = obj.get("dynamic_batch", bool, required=False, default=False)
        if not dynamic:
            for key in ("batch_dims", "batch_max"):
                if key in data:
                    raise obj.bad(key, "is set, but 'dynamic_batch' is not true")
            return cls(batch, height, width, [list(s) for s in inputs], frames)
        dims = obj.get("batch_dims", list)
        if len(dims) != len(inputs) or not all(d is None or _is_int(d) and d >= 0 for d in dims):
            raise obj.bad("batch_dims", "must hold one int or null per input")
        top = obj.get("batch_max", int, type(None))
        if top is not None and top < 1:
            raise obj.bad("batch_max", "must be an int >= 1 or null")
        return cls(batch, height, width, [list(s) for s in inputs], frames, True, list(dims), top)


@dataclass(frozen=True)
class SiteRecord:
    """A merged site as the build recorded it (:class:`toma_export.graph.program.SiteInfo`)."""

    name: str
    kind: str  # a SubLayer value
    tokens: int
    channels: int
    group: int | None
    grid: tuple[int, ...]
    offset: int = 0
    sequence: int = 0
    merged: int = 0
    reason: str = ""

    @classmethod
    def of(cls, site: Any) -> SiteRecord:
        """From a :class:`~toma_export.graph.program.SiteInfo` (or anything with its fields)."""
        return cls(**{f.name: getattr(site, f.name) for f in fields(cls)} | {"grid": tuple(site.grid)})

    @classmethod
    def from_json(cls, data: Any, where: str, path: str) -> SiteRecord:
        if not isinstance(data, dict):
            raise bad_entry(where, f"'{path.rstrip('.')}'", f"must be an object, not {type(data).__name__}")
        obj = _Obj(data, where, path, _keys(cls))
        grid = obj.get("grid", list)
        if not all(_is_int(n) for n in grid):
            raise obj.bad("grid", "must be a list of ints")
        return cls(obj.get("name", str), obj.get("kind", str), obj.get("tokens", int), obj.get("channels", int),
                   obj.get("group", int, type(None)), tuple(grid), obj.get("offset", int), obj.get("sequence", int),
                   obj.get("merged", int), obj.get("reason", str))


@dataclass
class BuildDetails:
    """The engine files and how they were built (``extra``)."""

    #: Variant name (``single``, or ``select`` and ``reuse``) -> its engine file.
    variants: dict[str, str]
    #: Per destination group, ``(tiles, destinations per tile)``; empty for single-variant artifacts.
    groups: list[tuple[int, int]]
    #: The model's keyword-argument structure (:mod:`toma_export.engines.signature`).
    input_spec: str
    precision: Precision
    selection: Selection
    #: Per flat input, the torch dtype name it was built with (``float16``, ``int64``, ...).
    input_dtypes: list[str]
    seed: int
    sites: list[SiteRecord] = field(default_factory=list)
    build_seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["groups"] = [list(g) for g in self.groups]
        out["sites"] = [{**asdict(s), "grid": list(s.grid)} for s in self.sites]
        return out

    @classmethod
    def from_json(cls, parent: _Obj, files: dict[str, str]) -> BuildDetails:
        obj = parent.obj("extra", _keys(cls))
        variants = obj.strings("variants")
        if set(variants) not in VARIANT_SETS:
            raise obj.bad("variants", f"must name the variants 'single' or 'select' and 'reuse', not {sorted(variants)}")
        for name, rel in variants.items():
            key = f"'extra.variants.{name}'"
            check_relpath(rel, key, obj.where)
            if rel not in files:
                raise bad_entry(obj.where, key, f"names {rel!r}, which the 'files' map does not list (no hash to check it against)")
        groups = obj.get("groups", list)
        if not all(isinstance(g, list) and len(g) == 2 and all(_is_int(n) and n >= 1 for n in g) for g in groups):
            raise obj.bad("groups", "must be a list of [tiles, destinations] int pairs")
        if set(variants) == {"select", "reuse"} and not groups:
            raise obj.bad("groups", "is empty, but a select/reuse artifact has destination groups")
        input_spec = obj.get("input_spec", str)
        precision, selection = obj.one_of("precision", PRECISIONS), obj.one_of("selection", SELECTIONS)
        input_dtypes = obj.get("input_dtypes", list)
        if not all(isinstance(d, str) for d in input_dtypes):
            raise obj.bad("input_dtypes", "must be a list of dtype names (strings)")
        seed = obj.get("seed", int)
        sites = [SiteRecord.from_json(s, obj.where, f"extra.sites.{i}.")
                 for i, s in enumerate(obj.get("sites", list, required=False, default=[]))]
        seconds = obj.get("build_seconds", dict, required=False, default={})
        if not all(_fits(v, (float,)) for v in seconds.values()):
            raise obj.bad("build_seconds", "must map stage names to numbers")
        return cls(dict(variants), [(g[0], g[1]) for g in groups], input_spec, precision, selection, list(input_dtypes),
                   seed, sites, dict(seconds))


@dataclass
class Manifest:
    """What an artifact holds; serialised as ``manifest.json`` (:meth:`to_json`, :func:`parse_manifest`)."""

    model: ModelRecord
    config: ToMAConfig
    backend: str
    shapes: Shapes
    extra: BuildDetails
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    versions: dict[str, str] = field(default_factory=dict)  # library -> version
    format_version: int = FORMAT_VERSION

    @property
    def frames(self) -> int:
        """Pixel frames the artifact was built for (1: an image)."""
        return self.shapes.frames

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_json(), "config": self.config.to_dict(), "backend": self.backend,
            "shapes": self.shapes.to_json(), "extra": self.extra.to_json(), "files": dict(self.files),
            "versions": dict(self.versions), "format_version": self.format_version,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, where: str = MANIFEST) -> Manifest:
        """Parse and validate (schema only; :func:`toma_export.engines.artifact.read_manifest` also checks the folder)."""
        return parse_manifest(loads(text, where), where)


# --- parsing --------------------------------------------------------------------------------------
def loads(text: str, where: str) -> Any:
    """JSON of a manifest; a parse error names the file and the fix."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ArtifactError(
            f"{where} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}): corrupted or "
            f"half written; {REBUILD}."
        ) from err
    except (ValueError, RecursionError) as err:  # absurd nesting or number sizes
        raise ArtifactError(f"{where} is not a manifest toma-export can read ({err}); {REBUILD}.") from err


def check_relpath(rel: Any, key: str, where: str) -> str:
    """A path named by the manifest: relative, ``/``-separated, no ``..``/``.``/empty part. No file-system access."""
    if not isinstance(rel, str) or not rel:
        raise bad_entry(where, key, f"names {rel!r}, which is not a file name")
    win = PureWindowsPath(rel)
    parts = rel.split("/")
    if "\x00" in rel or "\\" in rel or rel.startswith("/") or win.drive or win.root or any(p in ("", ".", "..") for p in parts):
        raise bad_entry(where, key, f"names {rel!r}, which is not a plain relative path inside the artifact folder")
    if rel == MANIFEST:
        raise bad_entry(where, key, f"names {MANIFEST} itself")
    return rel


def _files(top: _Obj) -> dict[str, str]:
    files = top.get("files", dict)
    for rel, digest in files.items():
        check_relpath(rel, f"'files' entry {rel!r}", top.where)
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise bad_entry(top.where, f"'files' entry {rel!r}", "must map to a SHA-256 hex digest")
    return dict(files)


def parse_manifest(data: Any, where: str, *, expect_version: str | None = None) -> Manifest:
    """Validate manifest JSON ``data`` key by key into a :class:`Manifest`; every error names the key and the
    fix. ``expect_version``: the toma-export version that must have built it (loaders pass their own)."""
    if not isinstance(data, dict):
        raise bad_entry(where, "the top level", f"must be a JSON object, not {type(data).__name__}")
    top = _Obj(data, where, "", _keys(Manifest))
    version = top.get("format_version", int)
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{where} was written in artifact format {version}; this toma-export reads format "
            f"{FORMAT_VERSION}. Rebuild it with this version."
        )
    versions = top.strings("versions")
    if expect_version is not None and versions.get("toma-export") != expect_version:
        built = versions.get("toma-export", "an unknown version")
        raise ArtifactError(f"{where} was built by toma-export {built}; this is {expect_version}. Rebuild the artifact.")
    model = ModelRecord.from_json(top)
    try:
        config = ToMAConfig.from_dict(dict(top.get("config", dict)))
    except (ToMAError, TypeError, ValueError) as err:
        raise bad_entry(where, "'config'", f"is not a valid ToMAConfig ({err})") from err
    backend = top.get("backend", str)
    if not backend:
        raise top.bad("backend", "is empty")
    shapes = Shapes.from_json(top.get("shapes", dict), where)
    files = _files(top)
    extra = BuildDetails.from_json(top, files)
    return Manifest(model, config, backend, shapes, extra, files, versions, version)
