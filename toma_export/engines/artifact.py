"""Built artifacts: a folder of files plus ``manifest.json``, written atomically, checked on load.

The manifest records what was built (model identity and hash, config, shapes, opset, library
versions, backend) and a SHA-256 of every file, so a loader can refuse an artifact that belongs
to another model or version, or that was corrupted or only half written. Writers build into a
temporary sibling folder and rename it into place at the end: a crash leaves no partial folder
under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from toma_export.errors import ToMAError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class ArtifactError(ToMAError):
    """An artifact folder is missing, incomplete, corrupted, or does not fit this runtime."""


@dataclass
class Manifest:
    """What an artifact holds; serialised as ``manifest.json``."""

    model: dict[str, Any]  # name, family, class, config hash, weights hash
    config: dict[str, Any]  # ToMAConfig.to_dict()
    backend: str
    shapes: dict[str, Any]  # batch, height, width, per-input shapes
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(**data)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries an artifact depends on (absent ones omitted)."""
    from importlib import metadata

    import toma_export

    out = {"toma-export": toma_export.__version__}
    for dist in ("torch", "diffusers", "onnx", "onnxruntime", "onnxscript", "tensorrt", "torch-tensorrt", "triton"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


@contextmanager
def atomic_folder(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success rename it to ``final``, else delete it."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise ArtifactError(f"{final} already exists; pass --force (overwrite=True) or choose another --out.")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Hash every file in ``folder`` into the manifest and write it (last, via a temp file)."""
    manifest.files = {
        str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST
    }
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(manifest.to_json())
    os.replace(tmp, folder / MANIFEST)


def read_manifest(folder: Path, *, verify_files: bool = True) -> Manifest:
    """Load and check an artifact's manifest; raise :class:`ArtifactError` naming what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not an artifact folder (it does not exist). Build one with `toma-export build`.")
    path = folder / MANIFEST
    if not path.exists():
        raise ArtifactError(
            f"{folder} has no {MANIFEST}: it is not a toma-export artifact, or its build did not finish. "
            "Rebuild it with `toma-export build`."
        )
    try:
        manifest = Manifest.from_json(path.read_text())
    except (json.JSONDecodeError, TypeError) as err:
        raise ArtifactError(f"{path} is corrupted ({err}); rebuild the artifact.") from err
    if manifest.format_version != FORMAT_VERSION:
        raise ArtifactError(
            f"{folder} was written in artifact format {manifest.format_version}; this toma-export reads format "
            f"{FORMAT_VERSION}. Rebuild it with this version."
        )
    if verify_files:
        for rel, digest in manifest.files.items():
            f = folder / rel
            if not f.exists():
                raise ArtifactError(f"{folder} is incomplete: {rel} is missing. Rebuild the artifact.")
            if sha256_file(f) != digest:
                raise ArtifactError(f"{folder}/{rel} does not match its manifest hash (corrupted or edited). Rebuild it.")
    return manifest
