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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
import sys
import tempfile
from pathlib import Path

__all__ = ["apply_umask", "atomic_write_bytes", "atomic_write_text", "current_umask", "fsync_dir", "rename_noreplace"]


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
