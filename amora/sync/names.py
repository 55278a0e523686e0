"""Mapping blob names to local paths, refusing any name that could escape or misbehave on disk.

A blob name is only a string: it may hold `..`, a leading `/`, control characters or components
longer than the filesystem allows. Every name goes through `local_relpath` before it is used; a
refused name is reported with the reason and never written. Two names that differ only in case
or Unicode normalisation would land on the same file on FAT/exFAT media and confuse MPD, so
`collision_key` folds both.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath

NAME_MAX = 255  # bytes per path component (ext4, FAT, exFAT)
PATH_MAX = 1024  # bytes for the whole relative name: the blob service's own limit
PLAYLIST_SUFFIXES = (".m3u", ".m3u8")
TEMP_PREFIX = ".amora-"
TEMP_SUFFIX = ".part"


class UnsafeName(ValueError):
    """The blob name cannot be used as a local path; str() is the reason."""


# C0, DEL, C1, the Unicode line/paragraph separators, lone surrogates, and backslash (a path
# separator elsewhere): one regex pass, as this runs for every blob of every listing.
_BAD_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\\\\]")


def local_relpath(name: str) -> PurePosixPath:
    """The relative path for blob `name` (already stripped of the sync prefix), or UnsafeName."""
    return PurePosixPath(*checked_parts(name))


def checked_parts(name: str) -> list[str]:
    """`local_relpath` as a list of components (cheaper: this runs for every blob of a listing)."""
    if not name:
        raise UnsafeName("empty name")
    bad = _BAD_CHAR.search(name)
    if bad is not None:
        ch = bad.group()
        if ch == "\\":
            raise UnsafeName("backslash in name")
        if 0xD800 <= ord(ch) <= 0xDFFF:
            raise UnsafeName("invalid Unicode (surrogate) in name")
        raise UnsafeName("control character in name")
    if name.startswith("/"):
        raise UnsafeName("absolute path")
    if name.endswith("/"):
        raise UnsafeName("directory marker (name ends with '/')")
    if len(name.encode("utf-8")) > PATH_MAX:
        raise UnsafeName(f"name longer than {PATH_MAX} bytes")
    parts = name.split("/")
    for part in parts:
        if part == "":
            raise UnsafeName("empty path component ('//')")
        if part in (".", ".."):
            raise UnsafeName(f"'{part}' path component")
        if part.startswith("."):
            # Hidden files are ignored by MPD, and `.amora-*` is the sync's own temp namespace.
            raise UnsafeName("hidden path component (starts with '.')")
        if len(part.encode("utf-8")) > NAME_MAX:
            raise UnsafeName(f"path component longer than {NAME_MAX} bytes")
    return parts


def is_playlist(name: str) -> bool:
    return name.lower().endswith(PLAYLIST_SUFFIXES)


def collision_key(path: str) -> str:
    """Paths with equal keys are the same file on a case-insensitive or normalising filesystem."""
    # Unicode's canonical caseless match: NFD(casefold(NFD(x))).
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", path).casefold())


def is_temp_name(filename: str) -> bool:
    return filename.startswith(TEMP_PREFIX) and filename.endswith(TEMP_SUFFIX)
