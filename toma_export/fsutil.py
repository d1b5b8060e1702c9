"""Atomic file-system writes: the one place that writes a file or publishes a folder atomically.

* :func:`atomic_write_bytes` / :func:`atomic_write_text`: write a temporary file in the target's
  folder, fsync it, give it the user's umask mode, then ``os.replace`` it onto the target. A crash
  leaves either the old file or the new one, never half of one.
* :func:`rename_noreplace`: rename that fails (``FileExistsError``) if the destination exists, also
  when it appears concurrently (``renameat2(RENAME_NOREPLACE)`` on Linux, ``renamex_np(RENAME_EXCL)``
  on macOS; elsewhere a check right before ``os.rename``, which POSIX still refuses onto a non-empty
  folder).
* :func:`apply_umask` gives a tree the modes ``open``/``mkdir`` would have given it, for content
  made by tools that create files 0600 or folders 0700 (``tempfile``).
* :func:`atomic_folder` publishes a folder: it is built inside a temporary sibling
  ``.NAME.XXXX.partial`` (holding the builder's PID and host in ``.owner``, so partials of killed
  builds are removed by the next build) and renamed into place at the end without replacing
  anything: a path that appears meanwhile wins and the build fails. With ``overwrite`` it replaces
  only a folder its caller's ``replaceable`` rule accepts (artifacts: one that is itself an
  artifact): moved aside, the new one renamed in, the old one removed; restored on failure. Nothing
  half-written is ever at the final path, and nothing of the user's is deleted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from toma_export.errors import ToMAError

__all__ = [
    "PublishError", "apply_umask", "atomic_folder", "atomic_write_bytes", "atomic_write_text", "clean_stale_partials",
    "current_umask", "fsync_dir", "rename_noreplace",
]

#: Inside a ``.NAME.XXXX.partial`` folder: who builds there, the folder being built, the folder moved aside.
OWNER, WORK, PREVIOUS = ".owner", "artifact", "previous"
#: Why ``overwrite`` may not replace a path (None: it may); the caller's rule (artifacts: engines.artifact).
Replaceable = Callable[[Path], str | None]


class PublishError(ToMAError):
    """A folder could not be published at its final path (it exists, appeared meanwhile, or may not be replaced)."""


def current_umask() -> int:
    """The process umask (read by setting it and putting it back: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (and Windows) do not fsync folders; the rename itself is still atomic
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically; the file gets ``mode`` (default ``0o666 & ~umask``)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, (0o666 & ~current_umask()) if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8", mode: int | None = None) -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding``."""
    return atomic_write_bytes(path, text.encode(encoding), mode=mode)


def apply_umask(root: str | os.PathLike[str]) -> None:
    """chmod ``root`` and everything under it as if created under the current umask.

    Folders get ``0o777 & ~umask``; files ``0o666 & ~umask``, or ``0o777 & ~umask`` when they had an
    execute bit. Symbolic links are left alone (never followed).
    """
    umask = current_umask()
    dir_mode, file_mode, exec_mode = 0o777 & ~umask, 0o666 & ~umask, 0o777 & ~umask
    os.chmod(root, dir_mode)
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(top, name)
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                os.chmod(p, dir_mode)
            elif stat.S_ISREG(st.st_mode):
                os.chmod(p, exec_mode if st.st_mode & 0o111 else file_mode)


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True) if name else ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc() if sys.platform in ("linux", "darwin") else None
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1  # Linux renameat2 flag
_RENAME_EXCL = 0x4  # macOS renamex_np flag


def _native_noreplace(src: bytes, dst: bytes) -> int | None:
    """0 on success, an errno on failure, None when the platform has no no-replace rename."""
    if _LIBC is None:
        return None
    if sys.platform == "linux" and hasattr(_LIBC, "renameat2"):
        rc = _LIBC.renameat2(_AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_NOREPLACE)
    elif sys.platform == "darwin" and hasattr(_LIBC, "renamex_np"):
        rc = _LIBC.renamex_np(src, dst, _RENAME_EXCL)
    else:
        return None
    return 0 if rc == 0 else ctypes.get_errno()


def rename_noreplace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Rename ``src`` to ``dst``; raise ``FileExistsError`` if ``dst`` exists (even a link or empty folder)."""
    s, d = os.fsencode(src), os.fsencode(dst)
    err = _native_noreplace(s, d)
    if err == 0:
        return
    if err is not None and err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), os.fsdecode(d))
        raise OSError(err, os.strerror(err), os.fsdecode(s), None, os.fsdecode(d))
    # No native no-replace rename (or this file system lacks it): check, then rename. POSIX rename still
    # refuses a non-empty folder or a non-folder as the destination of a folder.
    if os.path.lexists(d):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(d))
    try:
        os.rename(s, d)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(d)) from e
        raise


# --- publishing a folder atomically ---------------------------------------------------------------
def _start_time(pid: int) -> str | None:
    """The process start time (Linux: /proc/PID/stat field 22), to tell a reused PID apart."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return text[text.rindex(")") + 2 :].split()[19]
    except (OSError, ValueError, IndexError):
        return None


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
    pid = owner.get("pid") if isinstance(owner, dict) else None
    ok = (
        isinstance(owner, dict) and owner.get("tool") == "toma-export" and owner.get("final") == final.name
        and isinstance(pid, int) and not isinstance(pid, bool) and isinstance(owner.get("host"), str)
    )
    return owner if ok else None


def clean_stale_partials(final: Path) -> list[Path]:
    """Remove ``.NAME.*.partial`` folders of builds into ``final`` whose builder died on this host.

    A partial holding a folder moved aside by a killed ``overwrite`` build is put back at ``final``
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
                continue  # keep it: it holds the user's previous folder
        shutil.rmtree(holder, ignore_errors=True)
        removed.append(holder)
    return removed


def _refusal(final: Path, reason: str, when: str = "") -> PublishError:
    return PublishError(
        f"{final} {reason}{when}: --force replaces only a folder that holds a toma-export artifact, so nothing "
        f"was changed. Move or remove {final} yourself, or choose another --out."
    )


def _appeared(final: Path, replaceable: Replaceable | None) -> PublishError:
    force = ", pass --force to replace an artifact," if replaceable is not None else ""
    return PublishError(
        f"{final} appeared while this build ran (another build or process created it); it was left as it is and "
        f"this build was discarded. Remove it and build again{force} or choose another --out."
    )


class _PreviousKept(PublishError):
    """The replaced folder could not be put back; its partial folder is kept (and named in the message)."""


def _put_back(previous: Path, final: Path, holder: Path) -> None:
    try:
        rename_noreplace(previous, final)
    except OSError as err:
        (holder / OWNER).unlink(missing_ok=True)  # never cleaned automatically: it holds the user's folder
        raise _PreviousKept(
            f"{final} was taken by another process while this build replaced it; the folder that was there is "
            f"kept at {previous}. Move it back yourself if you need it."
        ) from err


def _publish(work: Path, final: Path, holder: Path, replaceable: Replaceable | None) -> None:
    """Rename ``work`` to ``final`` without replacing anything but what ``replaceable`` accepts (None: nothing)."""
    previous: Path | None = None
    if replaceable is not None and os.path.lexists(final):
        reason = replaceable(final)
        if reason:
            raise _refusal(final, reason, " (it changed while this build ran)")
        previous = holder / PREVIOUS
        try:
            rename_noreplace(final, previous)
        except FileNotFoundError:
            previous = None  # removed meanwhile: nothing to replace
        if previous is not None:
            reason = replaceable(previous)  # what was actually moved, not what was checked before
            if reason:
                _put_back(previous, final, holder)
                raise _refusal(final, reason, " (it changed while this build ran)")
    try:
        rename_noreplace(work, final)
    except BaseException as err:
        if previous is not None:
            _put_back(previous, final, holder)
        if isinstance(err, FileExistsError):
            raise _appeared(final, replaceable) from err
        raise
    fsync_dir(final.parent)


@contextmanager
def atomic_folder(final: Path, *, overwrite: bool = False, replaceable: Replaceable | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; on success rename it to ``final``, else delete it.

    ``final`` must not exist, at the start and at the rename (of two concurrent builds one wins, the
    other raises :class:`PublishError`). With ``overwrite`` an existing ``final`` is replaced only when
    ``replaceable(final)`` gives no reason against it (asked again of what is moved aside). The result
    gets the user's umask modes. Stale partial folders of dead builds into ``final`` are removed first.
    """
    final = Path(final)
    if overwrite and replaceable is None:
        raise ValueError("atomic_folder(overwrite=True) needs a replaceable rule: what it may replace")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PublishError(f"cannot create the folder {final.parent} for {final} ({err.strerror}); choose another --out.") from err
    clean_stale_partials(final)
    rule = replaceable if overwrite else None
    if os.path.lexists(final):
        if rule is None:
            force = "pass --force (overwrite=True) to replace an artifact folder, or " if replaceable is not None else ""
            raise PublishError(f"{final} already exists; {force}choose another --out.")
        reason = rule(final)
        if reason:
            raise _refusal(final, reason)
    holder = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    owner = {"tool": "toma-export", "pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid()),
             "final": final.name}
    try:
        atomic_write_text(holder / OWNER, json.dumps(owner))
        work = holder / WORK
        os.mkdir(work)
        yield work
        apply_umask(work)
        _publish(work, final, holder, rule)
    except _PreviousKept:
        shutil.rmtree(holder / WORK, ignore_errors=True)
        raise
    except BaseException:
        shutil.rmtree(holder, ignore_errors=True)
        raise
    shutil.rmtree(holder, ignore_errors=True)
