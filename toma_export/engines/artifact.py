"""Artifact folders: a folder of files plus ``manifest.json``, published atomically, checked on load.

The manifest's schema is :mod:`toma_export.engines.manifest`; this module checks a folder against it.
An artifact is trusted only as far as it proves itself (:func:`read_manifest`): the manifest is read
bounded and parsed once into typed records; every path it names is a plain relative path to a
regular file inside the folder (no ``..``, no absolute part, no symbolic link); its ``files`` map
lists every file of the folder, and every file matches its hash. Errors name the manifest entry,
never anything outside the folder.

Writers publish through :func:`artifact_folder`, the one atomic folder writer
(:func:`toma_export.fsutil.atomic_folder`) with the artifact's replacement rule: ``--force``
replaces only a folder that is itself an artifact (:func:`replace_refusal`).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from toma_export.engines.manifest import MANIFEST, REBUILD, ArtifactError, Manifest, bad_entry, loads, parse_manifest
from toma_export.fsutil import PublishError, atomic_folder, atomic_write_text

__all__ = [
    "MANIFEST", "ArtifactError", "Manifest", "artifact_folder", "library_versions", "read_manifest", "replace_refusal",
    "sha256_file", "write_manifest",
]

#: manifest.json larger than this is refused before it is read (a real one is a few KiB).
MAX_MANIFEST_BYTES = 16 << 20


# --- reading and checking a folder ----------------------------------------------------------------
def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a regular file, read in chunks; a symbolic link or a non-regular file is refused."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ArtifactError(f"{path} is not a regular file")
        digest = hashlib.sha256()
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest_bytes(folder: Path, shown: Path) -> bytes:
    """manifest.json of ``folder``: a regular file (not a link) of at most MAX_MANIFEST_BYTES."""
    path = folder / MANIFEST
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ArtifactError(
            f"{shown} has no {MANIFEST}: it is not a toma-export artifact, or its build did not finish. "
            "Rebuild it with `toma-export build`."
        ) from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise ArtifactError(f"{shown}/{MANIFEST} is {kind}; {REBUILD}.")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(
            f"{shown}/{MANIFEST} is {st.st_size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit of a manifest; {REBUILD}."
        )
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ArtifactError(f"{shown}/{MANIFEST} is not a regular file; {REBUILD}.")
        raw = fh.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{shown}/{MANIFEST} is over the {MAX_MANIFEST_BYTES}-byte limit of a manifest; {REBUILD}.")
    return raw


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ArtifactError(f"{where} is not UTF-8 text (bad byte at offset {err.start}); {REBUILD}.") from err


def _check_member(root: Path, rel: str, key: str, where: str, shown: Path) -> Path:
    """``root/rel`` is a regular file reached through real folders only, and resolves inside ``root``."""
    parts = rel.split("/")
    p = root
    for i, part in enumerate(parts):
        p = p / part
        try:
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            raise ArtifactError(f"{shown} is incomplete: {rel} is missing. Rebuild the artifact.") from None
        last = i == len(parts) - 1
        if stat.S_ISLNK(st.st_mode):
            raise bad_entry(where, key, f"is {'a symbolic link' if last else 'reached through a symbolic link'} "
                                        "(artifacts hold regular files only)")
        if not last and not stat.S_ISDIR(st.st_mode):
            raise ArtifactError(f"{shown} is incomplete: {rel} is missing. Rebuild the artifact.")
        if last and not stat.S_ISREG(st.st_mode):
            raise bad_entry(where, key, "is not a regular file")
    try:
        p.resolve(strict=True).relative_to(root)
    except (OSError, ValueError):
        raise bad_entry(where, key, "does not resolve inside the artifact folder") from None
    return p


def _unlisted(root: Path, listed: set[str]) -> list[str]:
    """Entries under ``root`` (files, links, devices, linked folders) that ``listed`` does not name."""
    out: list[str] = []
    for top, dirs, names in os.walk(root):
        rel_top = Path(top).relative_to(root)
        for name in sorted(dirs):
            if os.path.islink(os.path.join(top, name)):
                out.append((rel_top / name).as_posix())
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
        for name in sorted(names):
            rel = (rel_top / name).as_posix()
            if rel != MANIFEST and rel not in listed:
                out.append(rel)
    return out


def read_manifest(folder: str | Path, *, verify_files: bool = True, expect_version: str | None = None) -> Manifest:
    """Load and check an artifact's manifest; raise :class:`ArtifactError` naming what is wrong.

    Checks, in order: the folder and a bounded, regular ``manifest.json``; UTF-8, JSON and the schema
    (including the config); ``expect_version`` of toma-export, when given; that every path named lies
    inside the folder as a regular file and that ``files`` lists every file of the folder; with
    ``verify_files`` each file's SHA-256.
    """
    shown = Path(folder)
    if not shown.is_dir():
        what = "it is not a folder" if os.path.lexists(shown) else "it does not exist"
        raise ArtifactError(f"{shown} is not an artifact folder ({what}). Build one with `toma-export build`.")
    root = shown.resolve()
    where = f"{shown}/{MANIFEST}"
    text = _decode(_read_manifest_bytes(root, shown), where)
    manifest = parse_manifest(loads(text, where), where, expect_version=expect_version)

    members = {rel: _check_member(root, rel, f"'files' entry {rel!r}", where, shown) for rel in manifest.files}
    extra_files = _unlisted(root, set(manifest.files))
    if extra_files:
        more = f" and {len(extra_files) - 5} more" if len(extra_files) > 5 else ""
        raise ArtifactError(
            f"{shown} holds {', '.join(extra_files[:5])}{more}, which its manifest does not list (the 'files' map "
            f"must name every file of the artifact, so nothing unchecked is loaded); {REBUILD}."
        )
    if verify_files:
        for rel, digest in manifest.files.items():
            if sha256_file(members[rel]) != digest:
                raise ArtifactError(f"{shown}/{rel} does not match its manifest hash (corrupted or edited). Rebuild it.")
    return manifest


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


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Hash every file in ``folder`` into the manifest, validate it as the loader will, write it last."""
    folder = Path(folder)
    files: dict[str, str] = {}
    for top, dirs, names in os.walk(folder):
        for name in sorted(dirs + names):
            p = Path(top) / name
            rel = p.relative_to(folder).as_posix()
            mode = os.lstat(p).st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise ArtifactError(f"the build left {rel} in the artifact, which is not a regular file; artifacts "
                                    "hold regular files only (a bug in the backend's writer).")
            if stat.S_ISREG(mode) and rel != MANIFEST:
                files[rel] = sha256_file(p)
    manifest.files = dict(sorted(files.items()))
    text = manifest.to_json()
    parse_manifest(json.loads(text), f"{folder}/{MANIFEST} (being written)")  # never write what the loader refuses
    atomic_write_text(folder / MANIFEST, text)


# --- publishing ---------------------------------------------------------------------------------
def replace_refusal(path: Path) -> str | None:
    """Why ``--force`` must not replace ``path``; None when it is an artifact folder (or an empty one).

    An artifact here: a real folder whose manifest.json parses as a toma-export manifest (any version,
    any hash: rebuilding a stale or corrupted artifact is what --force is for) and that holds nothing
    its manifest does not list (so no file of the user's is deleted).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is a file, not an artifact folder"
    if not os.listdir(path):
        return None
    try:
        data = json.loads(_read_manifest_bytes(path, path).decode("utf-8"))
    except (ArtifactError, OSError, ValueError, RecursionError):
        return f"is a folder without a toma-export {MANIFEST}"
    if not (
        isinstance(data, dict) and isinstance(data.get("format_version"), int) and isinstance(data.get("files"), dict)
        and isinstance(data.get("versions"), dict) and "toma-export" in data["versions"]
    ):
        return f"is a folder whose {MANIFEST} is not a toma-export manifest"
    unlisted = _unlisted(path, {k for k in data["files"] if isinstance(k, str)})
    if unlisted:
        return f"holds {', '.join(unlisted[:5])}, which its artifact manifest does not list (not the build's files)"
    for top, _dirs, names in os.walk(path):
        for name in names:
            if os.path.islink(os.path.join(top, name)):
                return f"holds the symbolic link {Path(top, name).relative_to(path).as_posix()}"
    return None


@contextmanager
def artifact_folder(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """:func:`toma_export.fsutil.atomic_folder` for an artifact: ``overwrite`` (``--force``) replaces only
    a folder :func:`replace_refusal` accepts; a refusal is an :class:`ArtifactError`."""
    try:
        with atomic_folder(final, overwrite=overwrite, replaceable=replace_refusal) as work:
            yield work
    except PublishError as err:
        raise ArtifactError(str(err)) from err
