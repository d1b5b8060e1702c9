"""Built artifacts: a folder of files plus ``manifest.json``, published atomically, checked on load.

The manifest records what was built (model identity and hash, config, shapes, opset, library
versions, backend) and a SHA-256 of every file, so a loader can refuse an artifact that belongs
to another model or version, or that was corrupted or only half written.

An artifact is trusted only as far as it proves itself (:func:`read_manifest`): the manifest is
read bounded and validated key by key; every path it names is a plain relative path to a regular
file inside the folder (no ``..``, no absolute part, no symbolic link); its ``files`` map lists
every file of the folder, and every file matches its hash. Errors name the manifest entry, never
anything outside the folder.

Writers (:func:`atomic_folder`) build inside a temporary sibling ``.NAME.XXXX.partial`` (holding
the builder's PID and host in ``.owner``, so partials of killed builds are removed by the next
build) and rename the result into place at the end without replacing anything: a path that
appears meanwhile wins and the build fails. ``--force`` replaces only a folder that is itself an
artifact (moved aside, the new one renamed in, the old one removed; restored on failure).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PureWindowsPath
from typing import Any, Iterator

from toma_export.errors import ToMAError
from toma_export.fsutil import apply_umask, atomic_write_text, fsync_dir, rename_noreplace

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
#: manifest.json larger than this is refused before it is read (a real one is a few KiB).
MAX_MANIFEST_BYTES = 16 << 20
#: Inside a ``.NAME.XXXX.partial`` folder: who builds there, the folder being built, the artifact moved aside.
OWNER, WORK, PREVIOUS = ".owner", "artifact", "previous"
_REBUILD = "rebuild the artifact (toma-export build ... --force --out FOLDER)"
_VARIANT_SETS = ({"single"}, {"select", "reuse"})


class ArtifactError(ToMAError):
    """An artifact folder is missing, incomplete, corrupted, or does not fit this runtime."""


def shape_frames(shapes: dict[str, Any]) -> int:
    """Pixel frames of a manifest's ``shapes`` (``frames``; manifests from before it were built for 1, an image)."""
    return int(shapes.get("frames", 1))


@dataclass
class Manifest:
    """What an artifact holds; serialised as ``manifest.json``."""

    model: dict[str, Any]  # name, family, class, config hash, weights hash
    config: dict[str, Any]  # ToMAConfig.to_dict()
    backend: str
    shapes: dict[str, Any]  # batch, height, width, frames (pixel frames; absent in older manifests: 1), per-input shapes
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # variants, groups, input_spec, ...
    format_version: int = FORMAT_VERSION

    @property
    def frames(self) -> int:
        """Pixel frames the artifact was built for (:func:`shape_frames`)."""
        return shape_frames(self.shapes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, where: str = MANIFEST) -> Manifest:
        """Parse and validate (schema only; :func:`read_manifest` also checks the folder)."""
        return _parse(_loads(text, where), where)


# --- manifest schema ------------------------------------------------------------------------------
def _bad(where: str, key: str, problem: str) -> ArtifactError:
    return ArtifactError(f"{where}: {key} {problem}; {_REBUILD}.")


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ArtifactError(
            f"{where} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}): corrupted or "
            f"half written; {_REBUILD}."
        ) from err
    except (ValueError, RecursionError) as err:  # absurd nesting or number sizes
        raise ArtifactError(f"{where} is not a manifest toma-export can read ({err}); {_REBUILD}.") from err


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_KINDS = {dict: "an object", list: "a list", str: "a string", int: "an int"}


def _need(d: dict[str, Any], key: str, kind: type, where: str, prefix: str = "") -> Any:
    """``d[key]``, which must exist and be a ``kind`` (a bool is not an int)."""
    name = f"'{prefix}{key}'"
    if key not in d:
        raise _bad(where, name, "is missing")
    value = d[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _bad(where, name, f"must be {_KINDS.get(kind, kind.__name__)}, not {type(value).__name__}")
    return value


def _check_relpath(rel: Any, key: str, where: str) -> str:
    """A path named by the manifest: relative, ``/``-separated, no ``..``/``.``/empty part. No file-system access."""
    if not isinstance(rel, str) or not rel:
        raise _bad(where, key, f"names {rel!r}, which is not a file name")
    win = PureWindowsPath(rel)
    parts = rel.split("/")
    if "\x00" in rel or "\\" in rel or rel.startswith("/") or win.drive or win.root or any(p in ("", ".", "..") for p in parts):
        raise _bad(where, key, f"names {rel!r}, which is not a plain relative path inside the artifact folder")
    if rel == MANIFEST:
        raise _bad(where, key, f"names {MANIFEST} itself")
    return rel


def _check_versions(data: dict[str, Any], where: str) -> dict[str, str]:
    versions = _need(data, "versions", dict, where)
    for k, v in versions.items():
        if not isinstance(v, str):
            raise _bad(where, f"'versions.{k}'", f"must be a version string, not {type(v).__name__}")
    return versions


def _check_format(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _bad(where, "the top level", f"must be a JSON object, not {type(data).__name__}")
    version = _need(data, "format_version", int, where)
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{where} was written in artifact format {version}; this toma-export reads format "
            f"{FORMAT_VERSION}. Rebuild it with this version."
        )
    return data


def _parse(data: Any, where: str, *, expect_version: str | None = None) -> Manifest:
    """Validate manifest JSON ``data`` key by key; every error names the key and the fix."""
    data = _check_format(data, where)
    known = {f.name for f in fields(Manifest)}
    for key in data:
        if key not in known:
            raise _bad(where, f"'{key}'", "is not a manifest key this toma-export knows")
    versions = _check_versions(data, where)
    if expect_version is not None and versions.get("toma-export") != expect_version:
        built = versions.get("toma-export", "an unknown version")
        raise ArtifactError(f"{where} was built by toma-export {built}; this is {expect_version}. Rebuild the artifact.")

    model = _need(data, "model", dict, where)
    _need(model, "name", str, where, "model.")
    config = _need(data, "config", dict, where)
    from toma_export.config import ToMAConfig

    try:
        ToMAConfig.from_dict(dict(config))
    except (ToMAError, TypeError, ValueError) as err:
        raise _bad(where, "'config'", f"is not a valid ToMAConfig ({err})") from err
    backend = _need(data, "backend", str, where)
    if not backend:
        raise _bad(where, "'backend'", "is empty")

    shapes = _need(data, "shapes", dict, where)
    for key in ("batch", "height", "width"):
        if _need(shapes, key, int, where, "shapes.") < 1:
            raise _bad(where, f"'shapes.{key}'", f"must be an int >= 1, not {shapes[key]!r}")
    if "frames" in shapes and not (_is_int(shapes["frames"]) and shapes["frames"] >= 1):
        raise _bad(where, "'shapes.frames'", f"must be an int >= 1, not {shapes['frames']!r}")
    inputs = _need(shapes, "inputs", list, where, "shapes.")
    if not all(isinstance(s, list) and all(_is_int(n) and n >= 0 for n in s) for s in inputs):
        raise _bad(where, "'shapes.inputs'", "must be a list of shapes (lists of ints >= 0)")
    if "dynamic_batch" in shapes and not isinstance(shapes["dynamic_batch"], bool):
        raise _bad(where, "'shapes.dynamic_batch'", "must be true or false")
    if shapes.get("dynamic_batch"):
        dims = _need(shapes, "batch_dims", list, where, "shapes.")
        if len(dims) != len(inputs) or not all(d is None or _is_int(d) and d >= 0 for d in dims):
            raise _bad(where, "'shapes.batch_dims'", "must hold one int or null per input")
        top = shapes.get("batch_max")
        if top is not None and not (_is_int(top) and top >= 1):
            raise _bad(where, "'shapes.batch_max'", "must be an int >= 1 or null")

    files = _need(data, "files", dict, where)
    for rel, digest in files.items():
        _check_relpath(rel, f"'files' entry {rel!r}", where)
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise _bad(where, f"'files' entry {rel!r}", "must map to a SHA-256 hex digest")

    extra = _need(data, "extra", dict, where)
    variants = _need(extra, "variants", dict, where, "extra.")
    if set(variants) not in _VARIANT_SETS:
        raise _bad(where, "'extra.variants'", f"must name the variants 'single' or 'select' and 'reuse', not {sorted(variants)}")
    for name, rel in variants.items():
        key = f"'extra.variants.{name}'"
        _check_relpath(rel, key, where)
        if rel not in files:
            raise _bad(where, key, f"names {rel!r}, which the 'files' map does not list (no hash to check it against)")
    groups = _need(extra, "groups", list, where, "extra.")
    if not all(isinstance(g, list) and len(g) == 2 and all(_is_int(n) and n >= 1 for n in g) for g in groups):
        raise _bad(where, "'extra.groups'", "must be a list of [tiles, destinations] int pairs")
    if set(variants) == {"select", "reuse"} and not groups:
        raise _bad(where, "'extra.groups'", "is empty, but a select/reuse artifact has destination groups")
    _need(extra, "input_spec", str, where, "extra.")

    return Manifest(
        model=model, config=config, backend=backend, shapes=shapes, files=files, versions=versions, extra=extra,
        format_version=data["format_version"],
    )


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
        raise ArtifactError(f"{shown}/{MANIFEST} is {kind}; {_REBUILD}.")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(
            f"{shown}/{MANIFEST} is {st.st_size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit of a manifest; {_REBUILD}."
        )
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ArtifactError(f"{shown}/{MANIFEST} is not a regular file; {_REBUILD}.")
        raw = fh.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{shown}/{MANIFEST} is over the {MAX_MANIFEST_BYTES}-byte limit of a manifest; {_REBUILD}.")
    return raw


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ArtifactError(f"{where} is not UTF-8 text (bad byte at offset {err.start}); {_REBUILD}.") from err


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
            raise _bad(where, key, f"is {'a symbolic link' if last else 'reached through a symbolic link'} "
                                   "(artifacts hold regular files only)")
        if not last and not stat.S_ISDIR(st.st_mode):
            raise ArtifactError(f"{shown} is incomplete: {rel} is missing. Rebuild the artifact.")
        if last and not stat.S_ISREG(st.st_mode):
            raise _bad(where, key, "is not a regular file")
    try:
        p.resolve(strict=True).relative_to(root)
    except (OSError, ValueError):
        raise _bad(where, key, "does not resolve inside the artifact folder") from None
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
    manifest = _parse(_loads(text, where), where, expect_version=expect_version)

    members = {rel: _check_member(root, rel, f"'files' entry {rel!r}", where, shown) for rel in manifest.files}
    extra_files = _unlisted(root, set(manifest.files))
    if extra_files:
        more = f" and {len(extra_files) - 5} more" if len(extra_files) > 5 else ""
        raise ArtifactError(
            f"{shown} holds {', '.join(extra_files[:5])}{more}, which its manifest does not list (the 'files' map "
            f"must name every file of the artifact, so nothing unchecked is loaded); {_REBUILD}."
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
    _parse(json.loads(text), f"{folder}/{MANIFEST} (being written)")  # never write what the loader refuses
    atomic_write_text(folder / MANIFEST, text)


# --- publishing a folder atomically ---------------------------------------------------------------
def _start_time(pid: int) -> str | None:
    """The process start time (Linux: /proc/PID/stat field 22), to tell a reused PID apart."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return text[text.rindex(")") + 2 :].split()[19]
    except (OSError, ValueError, IndexError):
        return None


def _owner() -> dict[str, Any]:
    return {"tool": "toma-export", "pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid())}


def _alive(owner: dict[str, Any]) -> bool:
    pid = owner["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    except (OSError, OverflowError):
        return False
    start = owner.get("start")
    return start is None or _start_time(pid) in (None, start)


def _read_owner(holder: Path, final: Path) -> dict[str, Any] | None:
    """The ``.owner`` record of a partial folder of ``final``, or None when absent or not ours."""
    path = holder / OWNER
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > 4096:
            return None
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (
        isinstance(owner, dict) and owner.get("tool") == "toma-export" and owner.get("final") == final.name
        and _is_int(owner.get("pid")) and isinstance(owner.get("host"), str)
    )
    return owner if ok else None


def clean_stale_partials(final: Path) -> list[Path]:
    """Remove ``.NAME.*.partial`` folders of builds into ``final`` whose builder died on this host.

    A partial holding an artifact moved aside by a killed ``--force`` build is put back at ``final``
    first when nothing took its place. Partials without a readable ``.owner`` (being created right
    now, or written by another tool) are left alone. Returns the folders removed.
    """
    final = Path(final)
    prefix, host = f".{final.name}.", socket.gethostname()
    removed: list[Path] = []
    try:
        entries = list(os.scandir(final.parent))
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(".partial")) or not entry.is_dir(follow_symlinks=False):
            continue
        holder = Path(entry.path)
        owner = _read_owner(holder, final)
        if owner is None or owner["host"] != host or _alive(owner):
            continue
        previous = holder / PREVIOUS
        if os.path.isdir(previous) and not os.path.islink(previous) and not os.path.lexists(final):
            try:
                rename_noreplace(previous, final)
            except OSError:
                continue  # keep it: it holds the user's previous artifact
        shutil.rmtree(holder, ignore_errors=True)
        removed.append(holder)
    return removed


def _not_replaceable(path: Path) -> str | None:
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
        isinstance(data, dict) and _is_int(data.get("format_version")) and isinstance(data.get("files"), dict)
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


def _refusal(final: Path, reason: str, when: str = "") -> ArtifactError:
    return ArtifactError(
        f"{final} {reason}{when}: --force replaces only a folder that holds a toma-export artifact, so nothing "
        f"was changed. Move or remove {final} yourself, or choose another --out."
    )


def _appeared(final: Path) -> ArtifactError:
    return ArtifactError(
        f"{final} appeared while this build ran (another build or process created it); it was left as it is and "
        "this build was discarded. Remove it and build again, pass --force to replace an artifact, or choose "
        "another --out."
    )


class _PreviousKept(ArtifactError):
    """The replaced artifact could not be put back; its partial folder is kept (and named in the message)."""


def _publish(work: Path, final: Path, holder: Path, overwrite: bool) -> None:
    """Rename ``work`` to ``final`` without replacing anything but a verified artifact (``overwrite``)."""
    previous: Path | None = None
    if overwrite and os.path.lexists(final):
        reason = _not_replaceable(final)
        if reason:
            raise _refusal(final, reason, " (it changed while this build ran)")
        previous = holder / PREVIOUS
        try:
            rename_noreplace(final, previous)
        except FileNotFoundError:
            previous = None  # removed meanwhile: nothing to replace
        if previous is not None:
            reason = _not_replaceable(previous)  # what was actually moved, not what was checked before
            if reason:
                _put_back(previous, final, holder)
                raise _refusal(final, reason, " (it changed while this build ran)")
    try:
        rename_noreplace(work, final)
    except BaseException as err:
        if previous is not None:
            _put_back(previous, final, holder)
        if isinstance(err, FileExistsError):
            raise _appeared(final) from err
        raise
    fsync_dir(final.parent)


def _put_back(previous: Path, final: Path, holder: Path) -> None:
    try:
        rename_noreplace(previous, final)
    except OSError as err:
        (holder / OWNER).unlink(missing_ok=True)  # never cleaned automatically: it holds the user's artifact
        raise _PreviousKept(
            f"{final} was taken by another process while this build replaced it; the artifact that was there is "
            f"kept at {previous}. Move it back yourself if you need it."
        ) from err


@contextmanager
def atomic_folder(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; on success rename it to ``final``, else delete it.

    ``final`` must not exist, at the start and at the rename (of two concurrent builds one wins, the
    other raises :class:`ArtifactError`). With ``overwrite`` an existing ``final`` is replaced only if
    it is an artifact folder. The result gets the user's umask modes. Stale partial folders of dead
    builds into ``final`` are removed first.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ArtifactError(f"cannot create the folder {final.parent} for {final} ({err.strerror}); choose another --out.") from err
    clean_stale_partials(final)
    if os.path.lexists(final):
        if not overwrite:
            raise ArtifactError(
                f"{final} already exists; pass --force (overwrite=True) to replace an artifact folder, or choose "
                "another --out."
            )
        reason = _not_replaceable(final)
        if reason:
            raise _refusal(final, reason)
    holder = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        atomic_write_text(holder / OWNER, json.dumps({**_owner(), "final": final.name}))
        work = holder / WORK
        os.mkdir(work)
        yield work
        apply_umask(work)
        _publish(work, final, holder, overwrite)
    except _PreviousKept:
        shutil.rmtree(holder / WORK, ignore_errors=True)
        raise
    except BaseException:
        shutil.rmtree(holder, ignore_errors=True)
        raise
    shutil.rmtree(holder, ignore_errors=True)
