"""Blob name -> local path safety (amora.sync.names)."""

from __future__ import annotations

import os.path
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amora.sync.names import UnsafeName, collision_key, is_playlist, local_relpath


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../evil.mp3",
        "a/../../x",
        "./x",
        "/etc/x",
        "//x",
        "a//b",
        "dir/",
        "a\nb",
        "a\tb",
        "a\x7fb",
        "a\x00b",
        "a\x85b",
        "back\\slash",
        ".hidden",
        "a/.amora-123.part",
        "x" * 256,
        "/".join(["d" * 200] * 6),
    ],
)
def test_refused(name: str) -> None:
    with pytest.raises(UnsafeName):
        local_relpath(name)


@pytest.mark.parametrize(
    "name", ["a.mp3", "Artist/Album/01 - Intro.flac", "Café/日本語.ogg", "x" * 255, "a..b/c.."]
)
def test_accepted(name: str) -> None:
    assert str(local_relpath(name)) == name


@given(st.text(min_size=1, max_size=300))
def test_any_accepted_name_stays_inside(name: str) -> None:
    try:
        rel = local_relpath(name)
    except UnsafeName:
        return
    root = "/srv/music"
    joined = os.path.normpath(os.path.join(root, str(rel)))
    assert joined.startswith(root + "/")
    assert str(rel) == name  # never silently rewritten: what is written is what was listed
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)
    assert all(len(p.encode()) <= 255 and not p.startswith(".") for p in rel.parts)


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40))
def test_collision_key_folds_case_and_normal_form(name: str) -> None:
    key = collision_key(name)
    assert collision_key(unicodedata.normalize("NFD", name)) == key
    assert collision_key(unicodedata.normalize("NFC", name)) == key


def test_collision_key_examples() -> None:
    assert collision_key("Case.mp3") == collision_key("case.mp3")
    assert collision_key("Caf\u00e9") == collision_key("Cafe\u0301")
    assert collision_key("a.mp3") != collision_key("b.mp3")


def test_playlists() -> None:
    assert is_playlist("x/Relax.M3U") and is_playlist("a.m3u8")
    assert not is_playlist("a.mp3") and not is_playlist("m3u")
