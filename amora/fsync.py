"""Durability helpers: a rename or a new file is only safe from a power cut once its folder is
fsynced too."""

from __future__ import annotations

import os
from collections.abc import Callable


def fsync_dir(path: str | os.PathLike[str], *, missing_ok: bool = False) -> None:
    """fsync a directory, so that renames and creations in it are on disk."""
    _fsync(path, os.O_RDONLY | os.O_DIRECTORY, missing_ok)


def fsync_file(path: str | os.PathLike[str], *, missing_ok: bool = False) -> None:
    """fsync a file by name (its writer has closed it)."""
    _fsync(path, os.O_RDONLY, missing_ok)


def _fsync(path: str | os.PathLike[str], flags: int, missing_ok: bool) -> None:
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# libc's syncfs and ctypes.get_errno once looked up; False where there is none
_syncfs: tuple[Callable[[int], int], Callable[[], int]] | bool | None = None


def syncfs(path: str | os.PathLike[str]) -> bool:
    """Flush every dirty page and commit the journal of the file system holding `path`, in one
    call (Linux syncfs(2)). Many small files made durable this way cost one journal commit instead
    of one each. Returns False where syncfs is not available (then fsync each file instead)."""
    global _syncfs
    if _syncfs is None:
        try:
            import ctypes  # only here: a few ms of import the agent pays once, on its first sync

            libc_syncfs = ctypes.CDLL(None, use_errno=True).syncfs
            libc_syncfs.argtypes = [ctypes.c_int]
            _syncfs = (libc_syncfs, ctypes.get_errno)
        except (OSError, AttributeError, ImportError):
            _syncfs = False
    if _syncfs is False:
        return False
    assert isinstance(_syncfs, tuple)
    call, get_errno = _syncfs
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if call(fd) != 0:
            err = get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)
    return True
