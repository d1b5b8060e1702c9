"""An artifact folder is trusted only as far as it proves itself; building never destroys the user's data.

One real ``sdxl-tiny`` build per module (``--force`` onto an artifact of another version, so the
replacement path is exercised end to end); tests that corrupt it work on a ``shutil.copytree`` copy.
Publishing tests drive :func:`artifact_folder` (``fsutil.atomic_folder`` with the artifact's replacement
rule) directly with a few small files (what ``build_artifact`` does around its export stages), so they
take milliseconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from toma_export import ToMAError
from toma_export.engines.artifact import (
    MAX_MANIFEST_BYTES,
    ArtifactError,
    Manifest,
    artifact_folder,
    read_manifest,
    write_manifest,
)
from toma_export.engines.build import BuildRequest, build_artifact
from toma_export.engines.load import load_artifact
from toma_export.fsutil import OWNER, PublishError, atomic_folder, atomic_write_text, clean_stale_partials, current_umask, rename_noreplace

from toma_export.engines.verify import verify_artifact

SIZE = 256


def _request(out: Path, **kw: Any) -> BuildRequest:
    return BuildRequest("sdxl-tiny", batch=2, height=SIZE, width=SIZE, out=out, recompute_every=2, **kw)


def _old_artifact(folder: Path) -> None:
    """A (fake) artifact of another toma-export version: what --force may replace."""
    folder.mkdir()
    (folder / "old.onnx").write_bytes(b"old engine")
    digest = hashlib.sha256(b"old engine").hexdigest()
    manifest = {"format_version": 1, "versions": {"toma-export": "0.0.1"}, "files": {"old.onnx": digest}}
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("safety") / "sdxl-toma"
    _old_artifact(out)
    return build_artifact(_request(out, force=True), progress=False)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def _write(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _fill(tmp: Path, artifact: Path, marker: str = "") -> None:
    """Small stand-in engine files and a real manifest (schema of ``artifact``), as a build writes them."""
    (tmp / "select.onnx").write_bytes(b"select" + marker.encode())
    (tmp / "reuse.onnx").write_bytes(b"reuse" + marker.encode())
    write_manifest(tmp, Manifest.from_json((artifact / "manifest.json").read_text()))


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# --- --force and existing paths ----------------------------------------------------------------------
def test_force_replaces_an_artifact_folder_and_leaves_nothing_beside_it(artifact: Path) -> None:
    assert set(_manifest(artifact)["files"]) == {"select.onnx", "reuse.onnx"}
    assert not (artifact / "old.onnx").exists()  # the old version's artifact was replaced ...
    assert _listing(artifact.parent) == [artifact.name]  # ... with no .partial / .old leftovers
    assert load_artifact(artifact).manifest.backend == "onnxruntime"


def _user_folder(p: Path) -> None:
    p.mkdir()
    (p / "notes.txt").write_text("mine")


def _file(p: Path) -> None:
    p.write_text("mine")


def _artifact_with_user_file(p: Path) -> None:
    _old_artifact(p)
    (p / "notes.txt").write_text("mine")


def _foreign_manifest(p: Path) -> None:
    p.mkdir()
    (p / "manifest.json").write_text(json.dumps({"name": "some other tool"}))


def _symlink_to_artifact(p: Path) -> None:
    _old_artifact(p.with_name("real"))
    p.symlink_to(p.with_name("real"))


@pytest.mark.parametrize(
    "make,why",
    [
        (_user_folder, "is a folder without a toma-export manifest.json"),
        (_file, "is a file, not an artifact folder"),
        (_artifact_with_user_file, "holds notes.txt, which its artifact manifest does not list"),
        (_foreign_manifest, "is a folder whose manifest.json is not a toma-export manifest"),
        (_symlink_to_artifact, "is a symbolic link"),
    ],
)
def test_force_refuses_what_is_not_an_artifact(make: Callable[[Path], None], why: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    make(out)
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    listing = _listing(tmp_path)
    with pytest.raises(ArtifactError, match=re.escape(f"{out} {why}") + r".*--force replaces only.*choose another --out"):
        build_artifact(_request(out, force=True), progress=False)
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before
    assert _listing(tmp_path) == listing  # nothing created beside it (no .partial, no .old)


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), _file, _old_artifact])
def test_existing_path_is_never_overwritten_without_force(make: Callable[[Path], None], tmp_path: Path) -> None:
    out = tmp_path / "out"
    make(out)
    with pytest.raises(ArtifactError, match=re.escape(f"{out} already exists") + ".*--force"):
        build_artifact(_request(out), progress=False)
    assert _listing(tmp_path) == ["out"]


@pytest.mark.parametrize("content", [{"mine.txt": "keep"}, {}], ids=["user-folder", "empty-folder"])
def test_folder_created_at_out_during_the_build_is_kept(content: dict[str, str], artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ArtifactError, match=re.escape(f"{out} appeared while this build ran")):
        with artifact_folder(out) as tmp:
            _fill(tmp, artifact)
            out.mkdir()  # e.g. the user, or another tool, creates it meanwhile
            for name, text in content.items():
                (out / name).write_text(text)
    assert {p.name: p.read_text() for p in out.iterdir()} == content
    assert _listing(tmp_path) == ["out"]


def test_two_concurrent_builds_into_one_out_one_wins(artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with contextlib.ExitStack() as first, contextlib.ExitStack() as second:
        tmp_a = first.enter_context(artifact_folder(out))  # both start while --out does not exist
        tmp_b = second.enter_context(artifact_folder(out))
        _fill(tmp_a, artifact, "A")
        _fill(tmp_b, artifact, "B")
        first.close()  # A finishes first and wins
        with pytest.raises(ArtifactError, match="appeared while this build ran"):
            second.close()
    assert read_manifest(out) and (out / "select.onnx").read_bytes() == b"selectA"
    assert _listing(tmp_path) == ["out"]


def test_force_replacement_keeps_the_old_artifact_when_the_build_fails(artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with artifact_folder(out) as tmp:
        _fill(tmp, artifact, "old")
    with pytest.raises(RuntimeError, match="export failed"):
        with artifact_folder(out, overwrite=True) as tmp:
            _fill(tmp, artifact, "new")
            raise RuntimeError("export failed")
    assert (out / "select.onnx").read_bytes() == b"selectold" and read_manifest(out)
    with artifact_folder(out, overwrite=True) as tmp:
        _fill(tmp, artifact, "new")
    assert (out / "select.onnx").read_bytes() == b"selectnew" and read_manifest(out)
    assert _listing(tmp_path) == ["out"]


def test_atomic_folder_without_a_replacement_rule_replaces_nothing(tmp_path: Path) -> None:
    """The one folder publisher, as export-triton uses it: no rule, so nothing existing is ever replaced."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(PublishError, match=re.escape(f"{out} already exists; choose another --out")):
        with atomic_folder(out):
            pass
    with pytest.raises(ValueError, match="needs a replaceable rule"):
        with atomic_folder(out, overwrite=True):
            pass
    assert _listing(tmp_path) == ["out"] and (out / "mine.txt").read_text() == "keep"
    with atomic_folder(tmp_path / "new") as tmp:
        (tmp / "a.txt").write_text("a")
    assert (tmp_path / "new" / "a.txt").read_text() == "a" and _listing(tmp_path) == ["new", "out"]


# --- partial folders of killed builds ------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _partial(parent: Path, name: str, final: str, pid: int | None, contents: Callable[[Path], None] | None = None) -> Path:
    holder = parent / f".{final}.{name}.partial"
    (holder / "artifact").mkdir(parents=True)
    (holder / "artifact" / "select.onnx").write_bytes(b"half")
    if pid is not None:
        owner = {"tool": "toma-export", "pid": pid, "host": socket.gethostname(), "start": None, "final": final}
        (holder / OWNER).write_text(json.dumps(owner))
    if contents is not None:
        contents(holder)
    return holder


def test_stale_partials_of_dead_builds_are_removed(artifact: Path, tmp_path: Path) -> None:
    dead = _dead_pid()
    stale = _partial(tmp_path, "dead", "out", dead)
    live = _partial(tmp_path, "live", "out", os.getpid())  # a build running in this process
    unknown = _partial(tmp_path, "noowner", "out", None)  # just being created, or not ours
    other = _partial(tmp_path, "x", "out.x", dead)  # .out.x.partial of --out out.x: not ours to judge
    with artifact_folder(tmp_path / "out") as tmp:
        _fill(tmp, artifact)
    assert not stale.exists() and live.exists() and unknown.exists()
    assert read_manifest(tmp_path / "out")
    # A build killed between moving the old artifact aside and renaming the new one in: it is put back.
    mid_swap = _partial(tmp_path, "swap", "out.x", dead, lambda h: _old_artifact(h / "previous"))
    assert set(clean_stale_partials(tmp_path / "out.x")) == {other, mid_swap}
    assert (tmp_path / "out.x" / "old.onnx").read_bytes() == b"old engine"


# --- modes and atomic single-file writes ------------------------------------------------------------
def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_artifacts_get_the_users_umask(artifact: Path, tmp_path: Path) -> None:
    umask = current_umask()
    assert _mode(artifact) == 0o777 & ~umask
    assert {_mode(p) for p in artifact.iterdir()} == {0o666 & ~umask}
    old = os.umask(0o027)
    try:
        with artifact_folder(tmp_path / "out") as tmp:
            _fill(tmp, artifact)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "out") == 0o750
    assert {p.name: _mode(p) for p in (tmp_path / "out").iterdir()} == dict.fromkeys(
        ["manifest.json", "select.onnx", "reuse.onnx"], 0o640
    )


def test_atomic_write_and_rename_noreplace(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and _mode(target) == 0o666 & ~current_umask()
    assert _listing(tmp_path) == ["a.json"]  # no temporary file left
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "missing" / "b.json", "x")
    (tmp_path / "src").mkdir()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "src", tmp_path / "empty")  # plain os.rename would replace it
    assert (tmp_path / "src").is_dir()


# --- the manifest proves the folder ------------------------------------------------------------------
def _set_file_entry(rel: str, source: str | None = None) -> Callable[[Path], None]:
    """Name ``rel`` in ``files`` (with the real hash of ``source`` when readable) and as the reuse variant."""

    def edit(folder: Path) -> None:
        m = _manifest(folder)
        digest = hashlib.sha256(Path(source).read_bytes()).hexdigest() if source and os.path.isfile(source) else "0" * 64
        del m["files"]["reuse.onnx"]
        (folder / "reuse.onnx").unlink()
        m["files"][rel] = digest
        m["extra"]["variants"]["reuse"] = rel
        _write(folder, m)

    return edit


def _symlinked_engine(folder: Path) -> None:
    outside = folder.parent / "outside.onnx"
    shutil.copyfile(folder / "reuse.onnx", outside)  # same bytes, same hash
    (folder / "reuse.onnx").unlink()
    (folder / "reuse.onnx").symlink_to(outside)


def _symlinked_subfolder(folder: Path) -> None:
    (folder.parent / "elsewhere").mkdir()
    shutil.move(folder / "reuse.onnx", folder.parent / "elsewhere" / "reuse.onnx")
    (folder / "sub").symlink_to(folder.parent / "elsewhere")
    m = _manifest(folder)
    m["files"]["sub/reuse.onnx"] = m["files"].pop("reuse.onnx")
    m["extra"]["variants"]["reuse"] = "sub/reuse.onnx"
    _write(folder, m)


def _fifo_engine(folder: Path) -> None:
    (folder / "reuse.onnx").unlink()
    os.mkfifo(folder / "reuse.onnx")  # reading it would block forever


def _variant_outside(folder: Path) -> None:
    shutil.copyfile(folder / "reuse.onnx", folder.parent / "outside.onnx")
    m = _manifest(folder)
    m["extra"]["variants"]["reuse"] = "../outside.onnx"
    _write(folder, m)


def _variant_unlisted(folder: Path) -> None:
    shutil.copyfile(folder / "reuse.onnx", folder / "other.onnx")
    m = _manifest(folder)
    m["extra"]["variants"]["reuse"] = "other.onnx"
    _write(folder, m)


def _empty_files_map(folder: Path) -> None:
    data = bytearray((folder / "reuse.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "reuse.onnx").write_bytes(bytes(data))
    m = _manifest(folder)
    m["files"] = {}
    _write(folder, m)


def _unlisted_file(folder: Path) -> None:
    (folder / "extra.bin").write_bytes(b"not in the manifest")


def _manifest_symlink(folder: Path) -> None:
    shutil.move(folder / "manifest.json", folder.parent / "manifest.json")
    (folder / "manifest.json").symlink_to(folder.parent / "manifest.json")


def _huge_manifest(folder: Path) -> None:
    with open(folder / "manifest.json", "r+b") as fh:
        fh.truncate(MAX_MANIFEST_BYTES + 1)  # sparse: costs no disk


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "tamper,message",
    [
        (_set_file_entry("../../etc/passwd", "/etc/passwd"), r"'files' entry '\.\./\.\./etc/passwd' names .* not a plain relative path"),
        (_set_file_entry("../../dev/zero"), r"'files' entry '\.\./\.\./dev/zero' names .* not a plain relative path"),
        (_set_file_entry("/etc/passwd", "/etc/passwd"), r"'files' entry '/etc/passwd' names .* not a plain relative path"),
        (_symlinked_engine, r"'files' entry 'reuse\.onnx' is a symbolic link"),
        (_symlinked_subfolder, r"'files' entry 'sub/reuse\.onnx' is reached through a symbolic link"),
        (_fifo_engine, r"'files' entry 'reuse\.onnx' is not a regular file"),
        (_variant_outside, r"'extra\.variants\.reuse' names '\.\./outside\.onnx', which is not a plain relative path"),
        (_variant_unlisted, r"'extra\.variants\.reuse' names 'other\.onnx', which the 'files' map does not list"),
        (_empty_files_map, r"'extra\.variants\.\w+' names '\w+\.onnx', which the 'files' map does not list"),
        (_unlisted_file, r"holds extra\.bin, which its manifest does not list"),
        (_manifest_symlink, r"manifest\.json is a symbolic link"),
        (_huge_manifest, r"manifest\.json is 16777217 bytes, over the 16777216-byte limit"),
    ],
    ids=["dotdot-passwd", "dotdot-dev-zero", "absolute", "symlink-file", "symlink-folder", "fifo", "variant-outside",
         "variant-unlisted", "empty-files-map", "unlisted-file", "manifest-symlink", "manifest-16MiB"],
)
def test_manifest_paths_are_proved_before_anything_runs(
    tamper: Callable[[Path], None], message: str, artifact: Path, tmp_path: Path
) -> None:
    folder = _copy(artifact, tmp_path / "art")
    tamper(folder)
    with pytest.raises(ArtifactError, match=message + ".*[Rr]ebuild"):
        load_artifact(folder)
    with pytest.raises(ArtifactError, match=message):
        verify_artifact(folder, steps=1)


def test_errors_do_not_reveal_whether_an_outside_path_exists(artifact: Path, tmp_path: Path) -> None:
    messages: list[str] = []
    for rel in ("../../etc/passwd", "../../etc/no-such-file"):
        folder = _copy(artifact, tmp_path / f"art{len(messages)}")
        _set_file_entry(rel, "/etc/passwd")(folder)
        with pytest.raises(ArtifactError) as err:
            load_artifact(folder)
        messages.append(str(err.value).replace(str(folder), "FOLDER").replace(rel, "ENTRY"))
    assert messages[0] == messages[1]


def test_run_goes_through_the_same_check(artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from toma_export.cli import main

    folder = _copy(artifact, tmp_path / "art")
    _empty_files_map(folder)  # corrupted engine, nothing listed to check it against
    png = tmp_path / "image.png"
    assert main(["run", str(folder), "--steps", "1", "--out", str(png)]) != 0
    assert "which the 'files' map does not list" in capsys.readouterr().err
    assert not png.exists()


# --- manifest schema ---------------------------------------------------------------------------------
def _drop(*path: str) -> Callable[[dict[str, Any]], Any]:
    def edit(m: dict[str, Any]) -> Any:
        d = m
        for key in path[:-1]:
            d = d[key]
        del d[path[-1]]
        return m

    return edit


def _set(value: Any, *path: str) -> Callable[[dict[str, Any]], Any]:
    def edit(m: dict[str, Any]) -> Any:
        d = m
        for key in path[:-1]:
            d = d[key]
        d[path[-1]] = value
        return m

    return edit


SCHEMA_CASES: list[tuple[str, Any, str]] = [
    ("not-utf8", b'{"model": "\xff\xfe"}', r"is not UTF-8 text"),
    ("not-json", b'{"model": ', r"is not valid JSON"),
    ("top-level-list", lambda m: [m], r"the top level must be a JSON object"),
    *[(f"missing-{k}", _drop(k), rf"'{k}' is missing") for k in
      ("model", "config", "backend", "shapes", "versions", "files", "extra", "format_version")],
    *[(f"missing-extra.{k}", _drop("extra", k), rf"'extra\.{k}' is missing") for k in ("variants", "groups", "input_spec")],
    ("missing-shapes.inputs", _drop("shapes", "inputs"), r"'shapes\.inputs' is missing"),
    ("config-type", _set("fast", "config"), r"'config' must be an object, not str"),
    ("files-type", _set([], "files"), r"'files' must be an object, not list"),
    ("batch-type", _set("2", "shapes", "batch"), r"'shapes\.batch' must be an int, not str"),
    ("groups-type", _set("1", "extra", "groups"), r"'extra\.groups' must be a list"),
    ("hash-type", _set("abc", "files", "select.onnx"), r"'files' entry 'select\.onnx' must map to a SHA-256"),
    ("recompute_every-0", _set(0, "config", "recompute_every"), r"'config' is not a valid ToMAConfig \(.*recompute_every"),
    ("ratio-1.5", _set(1.5, "config", "ratio"), r"'config' is not a valid ToMAConfig \(.*ratio"),
    ("config-unknown-key", _set(1, "config", "speed"), r"'config' is not a valid ToMAConfig .*speed"),
    ("unknown-key", _set(1, "signature"), r"'signature' is not a manifest key"),
    ("variants-names", _set({"fast": "select.onnx"}, "extra", "variants"), r"'extra\.variants' must name the variants"),
    ("precision-unknown", _set("fp8", "extra", "precision"), r"'extra\.precision' must be one of fp32, fp16, bf16, not 'fp8'"),
    ("selection-unknown", _set("fast", "extra", "selection"), r"'extra\.selection' must be one of unrolled, plugin"),
    ("input-dtypes-type", _set("float32", "extra", "input_dtypes"), r"'extra\.input_dtypes' must be a list, not str"),
    ("missing-extra.seed", _drop("extra", "seed"), r"'extra\.seed' is missing"),
    ("extra-unknown-key", _set(1, "extra", "speed"), r"'extra\.speed' is not a manifest key"),
    ("site-tokens-type", _set("3", "extra", "sites", 0, "tokens"), r"'extra\.sites\.0\.tokens' must be an int, not str"),
    ("batch-0", _set(0, "shapes", "height"), r"'shapes\.height' must be an int >= 1, not 0"),
    ("batch-dims-not-dynamic", _set([0, 0, 0, 0, 0], "shapes", "batch_dims"), r"'shapes\.batch_dims' is set, but 'dynamic_batch'"),
    ("missing-model.class", _drop("model", "class"), r"'model\.class' is missing"),
    ("model-hash-type", _set(7, "model", "weights_hash"), r"'model\.weights_hash' must be a string, not int"),
    ("model-source", _set("ftp", "model", "source"), r"'model\.source' must be one of embedded, local, hub, not 'ftp'"),
    ("missing-model.spec", _drop("model", "spec"), r"'model\.spec' is missing"),
    ("missing-model.spec.kind", _drop("model", "spec", "kind"), r"'model\.spec\.kind' is missing"),
    ("spec-unknown-family", _set("sdxl-turbo", "model", "spec", "family"), r"'model\.spec' records a model family this "
     r"toma-export does not know \('sdxl-turbo', kind 'unet'"),
    ("spec-edited-fact", _set(["sample"], "model", "spec", "float32_inputs"), r"'model\.spec' records a model family"),
]


@pytest.mark.parametrize("case,edit,message", SCHEMA_CASES, ids=[c[0] for c in SCHEMA_CASES])
def test_manifest_schema_errors_name_the_key_and_the_fix(case: str, edit: Any, message: str, artifact: Path, tmp_path: Path) -> None:
    folder = tmp_path / "art"
    folder.mkdir()  # schema errors come before any file is looked at: the manifest alone is enough
    raw = edit if isinstance(edit, bytes) else json.dumps(edit(_manifest(artifact))).encode()
    (folder / "manifest.json").write_bytes(raw)
    with pytest.raises(ArtifactError, match=re.escape(str(folder / "manifest.json")) + ".*" + message + ".*rebuild the artifact"):
        load_artifact(folder)
    assert issubclass(ArtifactError, ToMAError)


def test_manifest_of_another_format_is_refused_with_its_version(artifact: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from toma_export.cli import main
    from toma_export.engines.manifest import FORMAT_VERSION

    folder = _copy(artifact, tmp_path / "art")
    _write(folder, _set(FORMAT_VERSION - 1, "format_version")(_manifest(folder)))
    message = f"written in artifact format {FORMAT_VERSION - 1}; this toma-export reads format {FORMAT_VERSION}. Rebuild it"
    with pytest.raises(ArtifactError, match=re.escape(message)):
        load_artifact(folder)
    assert main(["inspect", str(folder)]) == 2
    assert message in capsys.readouterr().err


def test_manifest_round_trip_gives_equal_records(artifact: Path) -> None:
    """Written -> read -> written again: equal typed records and the same JSON; the model's spec is recorded
    as the family's own record, and the config as the ToMAConfig that was built."""
    from toma_export.config import ToMAConfig
    from toma_export.models.spec import UNET

    m = read_manifest(artifact)
    assert Manifest.from_json(m.to_json()) == m
    assert m.to_json() == json.dumps(_manifest(artifact), indent=2, sort_keys=True)
    assert m.model.spec is UNET and m.model.class_name == "UNet2DConditionModel" and m.model.source == "embedded"
    assert m.config == ToMAConfig(recompute_every=2) and (m.shapes.batch, m.shapes.height) == (2, SIZE)
    assert m.extra.groups and all(isinstance(g, tuple) and len(g) == 2 for g in m.extra.groups)
    assert {s.kind for s in m.extra.sites} <= {"attn", "cross", "mlp"} and m.extra.sites


# --- kept behaviour ----------------------------------------------------------------------------------
def test_other_version_and_corrupted_file_are_still_refused(artifact: Path, tmp_path: Path) -> None:
    old = _copy(artifact, tmp_path / "old")
    _write(old, _set("0.0.1", "versions", "toma-export")(_manifest(old)))
    with pytest.raises(ArtifactError, match=r"built by toma-export 0\.0\.1.*Rebuild"):
        load_artifact(old)
    corrupted = _copy(artifact, tmp_path / "corrupted")
    data = bytearray((corrupted / "select.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (corrupted / "select.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"select\.onnx does not match its manifest hash"):
        load_artifact(corrupted)


# --- the manifest against the engine files it describes (hashes rewritten: only consistency tells) ---
def _rehashed(artifact: Path, folder: Path, edit: Callable[[dict[str, Any], Path], Any]) -> Path:
    """A copy of ``artifact`` edited by ``edit(manifest, folder)``, every hash rewritten to match, so
    read_manifest's hash check passes and only the consistency checks can tell."""
    from toma_export.engines.artifact import sha256_file

    _copy(artifact, folder)
    m = _manifest(folder)
    edit(m, folder)
    m["files"] = {rel: sha256_file(folder / rel) for rel in m["files"]}
    _write(folder, m)
    return folder


def _swap_variants(m: dict[str, Any], folder: Path) -> None:
    (folder / "select.onnx").rename(folder / "tmp")
    (folder / "reuse.onnx").rename(folder / "select.onnx")
    (folder / "tmp").rename(folder / "reuse.onnx")


def _edit(*path: str, value: Any) -> Callable[[dict[str, Any], Path], None]:
    return lambda m, folder: _set(value, *path)(m)


INCONSISTENT: list[tuple[str, Callable[[dict[str, Any], Path], Any], str]] = [
    ("input-spec-garbage", _edit("extra", "input_spec", value='[1, {"type": null}]'), r"extra\.input_spec is not the input structure"),
    ("input-spec-keys", lambda m, f: _set(m["extra"]["input_spec"].replace("timestep", "t"), "extra", "input_spec")(m),
     r"extra\.input_spec is not the input structure of UNet2DConditionModel"),
    ("input-dtypes-fp16", lambda m, f: _set(["float16"] * 5, "extra", "input_dtypes")(m), r"precision says fp32.*precision mismatch"),
    ("input-dtypes-short", _edit("extra", "input_dtypes", value=["float32"]), r"one dtype per input"),
    ("input-dtypes-unknown", lambda m, f: _set(["float99"] * 5, "extra", "input_dtypes")(m), r"dtypes torch does not have"),
    ("precision-fp16", _edit("extra", "precision", value="fp16"), r"precision says fp16.*precision mismatch"),
    ("precision-and-dtypes-fp16", lambda m, f: (_set("fp16", "extra", "precision")(m), _set(["float16"] * 5, "extra", "input_dtypes")(m)),
     r"precision mismatch: extra\.precision fp16 / input_dtypes say float16, but (select|reuse)\.onnx takes float32"),
    ("backend-inductor", _edit("backend", value="inductor"), r"backend 'inductor' writes \.pt2 files"),
    ("backend-tensorrt", _edit("backend", value="tensorrt"), r"backend 'tensorrt' writes \.plan files"),
    ("backend-unknown", _edit("backend", value="tvm"), r"backend 'tvm' is not one this runtime loads"),
    ("shapes-inputs", lambda m, f: m["shapes"]["inputs"][0].__setitem__(3, 64), r"input 0 has shape \[2, 4, 32, 32\], but shapes\.inputs\[0\]"),
    ("shapes-height", _edit("shapes", "height", value=512), r"shapes says batch 2 at 512x256"),
    ("shapes-batch", _edit("shapes", "batch", value=4), r"shapes says batch 4"),
    ("variants-swapped", _swap_variants, r"reuse\.onnx takes 5 inputs and gives 2 outputs, but a 'reuse' variant"),
    ("engine-not-onnx", lambda m, f: (f / "reuse.onnx").write_bytes(b"PK\x03\x04 not an onnx model"), r"reuse\.onnx .* is not an ONNX model"),
]


@pytest.mark.parametrize("case,edit,message", INCONSISTENT, ids=[c[0] for c in INCONSISTENT])
def test_manifest_that_does_not_describe_its_engine_files_is_refused(
    case: str, edit: Callable[[dict[str, Any], Path], Any], message: str, artifact: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from toma_export.cli import main

    folder = _rehashed(artifact, tmp_path / "art", edit)
    png = tmp_path / "image.png"
    for argv in (["verify", str(folder), "--steps", "1"], ["run", str(folder), "--steps", "1", "--out", str(png)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("toma-export: error: ") and "Traceback" not in err, err
        assert re.search(message, err), (message, err)
        assert "inconsistent" in err and "rebuild" in err, err
        assert "weights" not in err  # a precision claim is named as such, not blamed on the weights hash
    assert not png.exists()


# --- what an artifact loads from outside itself --------------------------------------------------------
@pytest.fixture
def no_outside_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading any weights or pipeline from a folder fails the test (configs may be read to check them)."""
    import diffusers

    import toma_export.models.registry as registry

    def boom(*a: Any, **k: Any) -> Any:
        raise AssertionError("something was loaded from outside the artifact")

    monkeypatch.setattr(registry, "_load_local", boom)
    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", boom)


def _other_model(folder: Path) -> Path:
    from toma_export.models.registry import load_model

    load_model("sd15-tiny").save_pretrained(folder)  # type: ignore[operator]
    return folder


@pytest.mark.parametrize("source", [None, "local"])
def test_manifest_naming_an_outside_folder_is_not_loaded(
    source: str | None, artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_outside_weights: None
) -> None:
    from toma_export.cli import main

    outside = _other_model(tmp_path / "outside")

    def edit(m: dict[str, Any], folder: Path) -> None:
        m["model"]["name"] = str(outside)
        if source:
            m["model"]["source"] = source

    folder = _rehashed(artifact, tmp_path / "art", edit)
    png = tmp_path / "image.png"
    for argv in (["run", str(folder), "--steps", "1", "--out", str(png)], ["verify", str(folder), "--steps", "1"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "--model" in err, err
        assert ("model record is inconsistent" if source is None else "but the artifact was built from a") in err, err
    assert not png.exists()


def test_model_named_on_the_command_line_is_checked_then_used(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from toma_export.cli import main

    folder = _rehashed(artifact, tmp_path / "art", _edit("model", "name", value=str(tmp_path / "gone")))
    outside = _other_model(tmp_path / "outside")
    png = tmp_path / "image.png"
    assert main(["run", str(folder), "--steps", "1", "--out", str(png), "--model", str(outside)]) == 2
    err = capsys.readouterr().err
    assert "holds a UNet2DConditionModel" in err and "Name the model the artifact was built from with --model" in err
    assert not png.exists()
    assert main(["run", str(folder), "--steps", "1", "--out", str(png), "--model", "sdxl-tiny"]) == 0  # the user's model
    assert png.exists()
