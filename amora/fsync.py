"""Durability helpers: a rename or a new file is only safe from a power cut once its folder is
fsynced too."""

from __future__ import annotations

import os


def fsync_dir(path: str | os.PathLike[str], *, missing_ok: bool = False) -> None:
    """fsync a directory, so that renames and creations in it are on disk."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
