"""Content sync against a real Azurite: the behaviours issue 4 asks for, end to end."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import time
import unicodedata
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from amora.sync import SyncBusyError, SyncOutcome, SyncProgress, SyncSource, SyncTargets, SyncTuning, run_sync
from amora.sync.engine import temp_name
from amora.sync.names import is_temp_name
from amora.sync.remote import RemoteBlob
from tests.fixtures.azurite import BlobContainer, make_container
from tools.stack import azurite as stack

pytestmark = pytest.mark.services


def content(i: int, size: int = 2000) -> bytes:
    seed = hashlib.sha256(str(i).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


@pytest.fixture
def targets(tmp_path: Path) -> SyncTargets:
    return SyncTargets(
        music_dir=tmp_path / "root" / "music",
        playlists_dir=tmp_path / "root" / "music" / "playlists",
        manifest_path=tmp_path / "state" / "content-manifest.json",
        min_free_bytes=0,
    )


def visible_files(root: Path) -> dict[str, bytes]:
    """Every non-hidden file under root, as MPD would see it."""
    out: dict[str, bytes] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if not f.startswith("."):
                p = Path(dirpath) / f
                out[str(p.relative_to(root))] = p.read_bytes()
    return out


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if is_temp_name(p.name)] if root.exists() else []


def manifest_files(t: SyncTargets) -> dict[str, list[object]]:
    files: dict[str, list[object]] = json.loads(t.manifest_path.read_text())["files"]
    return files


def assert_consistent(t: SyncTargets) -> None:
    """Every manifest entry is on disk with the recorded size and mtime."""
    for path, (_blob, _etag, size, _md5, mtime_ns) in manifest_files(t).items():
        st = os.stat(path)
        assert (st.st_size, st.st_mtime_ns) == (size, mtime_ns), path


async def sync(container: BlobContainer, t: SyncTargets, **kw: object) -> SyncOutcome:
    return await run_sync(SyncSource(container_url=container.sync_url), t, **kw)  # type: ignore[arg-type]


LIBRARY = {
    **{
        f"Artist {a}/Album {b}/{n:02d} Track.flac": content(a * 100 + b * 10 + n)
        for a in range(3)
        for b in range(2)
        for n in range(4)
    },
    "loose.mp3": content(999),
    "lists/Relaxing.m3u": b"Artist 0/Album 0/00 Track.flac\n",
    "Party.M3U8": b"#EXTM3U\nArtist 1/Album 1/01 Track.flac\n",
}


async def test_cold_then_no_change(blob_container: BlobContainer, targets: SyncTargets) -> None:
    blob_container.seed(LIBRARY)
    seen: list[SyncProgress] = []
    out = await sync(blob_container, targets, progress=seen.append)
    assert out.ok and out.error is None, out
    assert (out.downloaded, out.removed, out.unchanged, out.skipped) == (len(LIBRARY), 0, 0, [])
    assert out.changed and out.bytes == sum(map(len, LIBRARY.values()))
    assert out.last_success == pytest.approx(out.finished_at)
    music = visible_files(targets.music_dir)
    assert music.pop("playlists/Relaxing.m3u") == LIBRARY["lists/Relaxing.m3u"]
    assert music.pop("playlists/Party.M3U8") == LIBRARY["Party.M3U8"]
    assert music == {k: v for k, v in LIBRARY.items() if not k.lower().endswith((".m3u", ".m3u8"))}
    assert temp_files(targets.music_dir) == []
    phases = [p.phase for p in seen]
    assert phases[0] == "listing" and phases[-1] == "done" and "downloading" in phases
    assert seen[-1].files_done == seen[-1].files_total == len(LIBRARY)
    assert_consistent(targets)

    mtimes = {p: os.stat(p).st_mtime_ns for p in manifest_files(targets)}
    out2 = await sync(blob_container, targets)
    assert out2.ok and not out2.changed
    assert (out2.downloaded, out2.removed, out2.unchanged) == (0, 0, len(LIBRARY))
    assert {p: os.stat(p).st_mtime_ns for p in manifest_files(targets)} == mtimes


async def test_paged_listing(
    blob_container: BlobContainer, targets: SyncTargets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listings of several pages (markers holding XML-escaped characters at page ends) are
    parsed incrementally, the next page fetched while the current one is parsed."""
    from amora.sync import remote

    monkeypatch.setattr(remote, "LIST_PAGE", 3)
    monkeypatch.setattr(remote, "LIST_CHUNK", 100)  # elements split across parser feeds
    blobs = {
        f"{d}/{n:02d} <R&B> 'live' \"x\".mp3": content(i)
        for i, (d, n) in enumerate((d, n) for d in ("A&B", "C<D>", "E") for n in range(4))
    }
    blob_container.seed(blobs)
    out = await sync(blob_container, targets)
    assert out.ok and (out.downloaded, out.skipped) == (len(blobs), []), out
    assert visible_files(targets.music_dir) == blobs
    out2 = await sync(blob_container, targets)
    assert out2.ok and (out2.downloaded, out2.unchanged) == (0, len(blobs))


async def test_changed_deleted_and_ownership(blob_container: BlobContainer, targets: SyncTargets) -> None:
    blob_container.seed(LIBRARY)
    assert (await sync(blob_container, targets)).ok
    music = targets.music_dir
    user_file = music / "Artist 0" / "mine.mp3"
    user_file.write_bytes(b"user's own file")
    edited = music / "Artist 2" / "Album 1" / "03 Track.flac"
    edited.write_bytes(b"edited by hand")

    blob_container.seed({"loose.mp3": b"new version", "Artist 0/Album 0/00 Track.flac": content(7, 3000)})
    blob_container.seed({"Fresh/new.ogg": content(5)})
    blob_container.delete("Artist 1/Album 0/00 Track.flac", "Artist 2/Album 1/03 Track.flac")
    blob_container.delete(*[f"Artist 1/Album 1/{n:02d} Track.flac" for n in range(4)])
    out = await sync(blob_container, targets)
    assert out.ok, out.error
    assert (out.downloaded, out.removed) == (3, 5)
    assert out.skipped == [
        (
            "Artist 2/Album 1/03 Track.flac",
            f"removed from the container, but {edited} was modified locally: left in place",
        )
    ]
    assert (music / "loose.mp3").read_bytes() == b"new version"
    assert (music / "Artist 0/Album 0/00 Track.flac").read_bytes() == content(7, 3000)
    assert (music / "Fresh/new.ogg").read_bytes() == content(5)
    assert not (music / "Artist 1/Album 0/00 Track.flac").exists()
    assert not (music / "Artist 1/Album 1").exists(), "emptied folder is pruned"
    assert user_file.read_bytes() == b"user's own file"
    assert edited.read_bytes() == b"edited by hand"
    assert str(edited) not in manifest_files(targets)
    assert_consistent(targets)


async def test_files_not_owned_are_never_overwritten(
    blob_container: BlobContainer, targets: SyncTargets
) -> None:
    targets.music_dir.mkdir(parents=True)
    (targets.music_dir / "theirs.mp3").write_bytes(b"someone else's")
    (targets.music_dir / "same.mp3").write_bytes(content(1))
    blob_container.seed({"theirs.mp3": content(2), "same.mp3": content(1)})
    out = await sync(blob_container, targets)
    assert out.ok
    assert out.skipped == [
        (
            "theirs.mp3",
            f"{targets.music_dir}/theirs.mp3 exists and was not put there by the sync: left in place",
        )
    ]
    assert (targets.music_dir / "theirs.mp3").read_bytes() == b"someone else's"
    assert (out.downloaded, out.unchanged) == (0, 1)  # identical content is adopted, not rewritten
    assert f"{targets.music_dir}/same.mp3" in manifest_files(targets)
    blob_container.delete("same.mp3")
    assert (await sync(blob_container, targets)).removed == 1


async def test_force_reverifies(blob_container: BlobContainer, targets: SyncTargets) -> None:
    blob_container.seed(LIBRARY)
    assert (await sync(blob_container, targets)).ok
    corrupt = targets.music_dir / "Artist 0/Album 1/02 Track.flac"
    st = corrupt.stat()
    corrupt.write_bytes(b"\0" * st.st_size)
    os.utime(corrupt, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as recorded: only a hash tells
    missing = targets.music_dir / "loose.mp3"
    missing.unlink()

    plain = await sync(blob_container, targets)
    assert plain.downloaded == 1 and missing.read_bytes() == LIBRARY["loose.mp3"]  # a deleted file is noticed
    assert corrupt.read_bytes() != LIBRARY["Artist 0/Album 1/02 Track.flac"]

    forced = await sync(blob_container, targets, force=True)
    assert forced.ok and (forced.downloaded, forced.unchanged) == (1, len(LIBRARY) - 1)
    assert corrupt.read_bytes() == LIBRARY["Artist 0/Album 1/02 Track.flac"]
    assert_consistent(targets)


async def test_playlists_and_prefix(blob_container: BlobContainer, targets: SyncTargets) -> None:
    blob_container.seed(
        {
            "shop/a.mp3": b"a",
            "shop/lists/morning.m3u": b"a.mp3\n",
            "shop/other/morning.m3u": b"clash\n",
            "elsewhere/b.mp3": b"b",
        }
    )
    out = await run_sync(SyncSource(container_url=blob_container.sync_url, prefix="/shop"), targets)
    assert out.ok and out.downloaded == 2
    assert out.skipped == [
        (
            "shop/other/morning.m3u",
            "same local path as blob 'shop/lists/morning.m3u' (case, Unicode form or folder clash)",
        )
    ]
    assert visible_files(targets.music_dir) == {"a.mp3": b"a", "playlists/morning.m3u": b"a.mp3\n"}


def list_names(container: BlobContainer) -> list[str]:
    base, query = container.sync_url.split("?", 1)
    xml = urllib.request.urlopen(f"{base}?restype=container&comp=list&{query}").read().decode()
    import xml.etree.ElementTree as ET

    return [b.findtext("Name") or "" for b in ET.fromstring(xml).iter("Blob")]


async def test_hostile_names(blob_container: BlobContainer, targets: SyncTargets, tmp_path: Path) -> None:
    nfc, nfd = unicodedata.normalize("NFC", "Café.mp3"), unicodedata.normalize("NFD", "Café.mp3")
    hostile = [
        "..%2Fevil.mp3",
        "a%2F..%2F..%2Fx.mp3",
        ".%2Fdot.mp3",
        "%2Fetc%2Fabs.mp3",
        "%2F%2Fdouble.mp3",
        "a%2F%2Fb.mp3",
        "dir%2F",
        "bad%0Aname.mp3",
        "tab%09name.mp3",
        "del%7Fname.mp3",
        "long%2F" + "x" * 300 + ".mp3",
        "back%5C..%5Cslash.mp3",
        ".hidden.mp3",
    ]
    for encoded in hostile:
        blob_container.put_raw(encoded)
    for good in ("x", "x/inner.mp3", "Case.mp3", "case.mp3", nfc, nfd, "ok.mp3"):
        blob_container.put_raw(urllib.parse.quote(good, safe="/"), good.encode())
    listed = list_names(blob_container)
    out = await sync(blob_container, targets)
    assert out.ok, out.error
    skipped = dict(out.skipped)
    winners = {"x", "Case.mp3", "ok.mp3", min(nfc, nfd)}  # the first of each clashing pair, in listing order
    for name in listed:
        if name in winners:
            continue
        assert name in skipped, f"{name!r} should have been skipped"
    assert set(visible_files(targets.music_dir)) == winners
    # nothing anywhere else: the music folder sits two levels below tmp_path/root
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and targets.music_dir not in p.parents]
    assert [p for p in outside if p.parent != targets.manifest_path.parent] == []


async def test_disk_space_too_low(blob_container: BlobContainer, targets: SyncTargets) -> None:
    blob_container.seed(LIBRARY)
    targets.music_dir.mkdir(parents=True)
    st = os.statvfs(targets.music_dir)
    greedy = SyncTargets(
        music_dir=targets.music_dir,
        playlists_dir=targets.playlists_dir,
        manifest_path=targets.manifest_path,
        min_free_bytes=st.f_bavail * st.f_frsize,  # downloading anything would eat into the margin
    )
    out = await sync(blob_container, greedy)
    assert not out.ok and out.error is not None and out.error.startswith("not enough free space")
    assert not out.changed and visible_files(targets.music_dir) == {}
    assert (await sync(blob_container, targets)).downloaded == len(LIBRARY)


async def test_second_request_is_refused(blob_container: BlobContainer, targets: SyncTargets) -> None:
    blob_container.seed({f"t{i:03d}.mp3": content(i) for i in range(300)})
    started = asyncio.Event()

    def on_progress(p: SyncProgress) -> None:
        if p.phase == "downloading":
            started.set()

    first = asyncio.create_task(sync(blob_container, targets, progress=on_progress))
    await asyncio.wait_for(started.wait(), 10)
    with pytest.raises(SyncBusyError, match="already running"):
        await sync(blob_container, targets)
    assert (await first).downloaded == 300
    assert (await sync(blob_container, targets)).ok  # the lock is released


@pytest.mark.parametrize("how", ["event", "task"])
async def test_cancel_leaves_consistent_state(
    blob_container: BlobContainer, targets: SyncTargets, how: str
) -> None:
    blob_container.seed({f"d{i % 7}/t{i:03d}.mp3": content(i, 30_000) for i in range(300)})
    cancel = asyncio.Event()

    def on_progress(p: SyncProgress) -> None:
        if p.files_done >= 30:
            cancel.set()

    task = asyncio.create_task(
        sync(blob_container, targets, progress=on_progress, cancel=cancel if how == "event" else None)
    )
    await asyncio.wait_for(cancel.wait(), 20)
    t0 = time.monotonic()
    if how == "task":
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        out = await task
        assert not out.ok and out.error == "cancelled"
    assert time.monotonic() - t0 < 2
    assert temp_files(targets.music_dir) == []
    assert_consistent(targets)
    done = len(manifest_files(targets))
    assert 30 <= done < 300
    out = await sync(blob_container, targets)
    assert out.ok and (out.downloaded, out.unchanged) == (300 - done, done)


async def test_resumes_partial_download(blob_container: BlobContainer, targets: SyncTargets) -> None:
    big = content(42, 3 * 1024 * 1024)
    blob_container.seed({"big.flac": big})
    etag = next(b for b in _listing(blob_container) if b.name == "big.flac").etag
    targets.music_dir.mkdir(parents=True)
    partial = targets.music_dir / temp_name(RemoteBlob("big.flac", etag, len(big), None))
    partial.write_bytes(big[: 2 * 1024 * 1024])
    stale = targets.music_dir / temp_name(RemoteBlob("big.flac", "0xOLD", len(big), None))
    stale.write_bytes(b"old")
    out = await sync(blob_container, targets)
    assert out.ok and out.downloaded == 1
    assert (targets.music_dir / "big.flac").read_bytes() == big
    assert temp_files(targets.music_dir) == []


async def test_a_complete_uncommitted_download_is_not_fetched_again(
    blob_container: BlobContainer, targets: SyncTargets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed between download and commit leaves whole temp files; the next run checks them
    against Content-MD5 and commits them instead of downloading them again. A torn one (right
    size, wrong bytes: a power cut) is downloaded again."""
    from amora.sync import remote

    whole, torn = content(7, 50_000), content(8, 50_000)
    blob_container.seed({"a/whole.flac": whole, "a/torn.flac": torn})
    listed = {b.name: b for b in _listing(blob_container)}
    assert all(b.md5 for b in listed.values())  # Azurite stores Content-MD5 for a single PUT
    folder = targets.music_dir / "a"
    folder.mkdir(parents=True)
    (folder / temp_name(listed["a/whole.flac"])).write_bytes(whole)
    (folder / temp_name(listed["a/torn.flac"])).write_bytes(bytes(len(torn)))

    fetched: list[str] = []
    real_get = remote.Connection.get

    def get(self: remote.Connection, path_query: str, headers: dict[str, str], what: str) -> object:
        fetched.append(what)
        return real_get(self, path_query, headers, what)

    monkeypatch.setattr(remote.Connection, "get", get)
    out = await sync(blob_container, targets)
    assert out.ok and out.downloaded == 2, out
    assert sorted(w for w in fetched if w != "list") == ["a/torn.flac"]
    assert visible_files(targets.music_dir) == {"a/whole.flac": whole, "a/torn.flac": torn}
    assert temp_files(targets.music_dir) == []
    assert_consistent(targets)


def _listing(container: BlobContainer) -> list[RemoteBlob]:
    import threading

    from amora.sync.remote import Connection, Tuning, endpoint_from_sas_url, list_blobs

    conn = Connection(endpoint_from_sas_url(container.sync_url), Tuning(), threading.Event())
    try:
        return list(list_blobs(conn, ""))
    finally:
        conn.close()


async def test_service_outage_fails_fast_without_secrets(targets: SyncTargets) -> None:
    from tools.stack.proc import free_port

    url = f"http://127.0.0.1:{free_port()}/devstoreaccount1/music?sv=2020-12-06&sp=rl&sig=SECRETSIG"
    t0 = time.monotonic()
    out = await run_sync(SyncSource(container_url=url), targets)
    assert not out.ok and out.error is not None
    assert time.monotonic() - t0 < 5
    assert "unreachable" in out.error and "connection refused" in out.error
    assert "SECRETSIG" not in out.error and "sig=" not in out.error
    assert "SECRETSIG" not in repr(SyncSource(container_url=url))


async def test_wrong_sas_is_reported(blob_container: BlobContainer, targets: SyncTargets) -> None:
    bad = blob_container.sync_url.replace("sig=", "sig=AAAA")
    out = await run_sync(SyncSource(container_url=bad), targets)
    assert not out.ok and out.error is not None and "access denied" in out.error
    assert "sig" not in out.error


async def test_connection_string_source(blob_container: BlobContainer, targets: SyncTargets) -> None:
    blob_container.seed({"a.mp3": b"a"})
    az = blob_container.az
    out = await run_sync(
        SyncSource(connection_string=az.connection_string, container=blob_container.name), targets
    )
    assert out.ok and out.downloaded == 1
    assert stack.ACCOUNT_KEY not in repr(SyncSource(connection_string=az.connection_string, container="x"))


async def test_azurite_killed_mid_sync(
    azurite_factory: Callable[..., stack.Azurite], targets: SyncTargets, tmp_path: Path
) -> None:
    location = tmp_path / "azurite-data"
    location.mkdir()
    az = azurite_factory(location=location)
    container = make_container(az, "music")
    library = {f"d{i % 9}/t{i:03d}.mp3": content(i, 20_000) for i in range(400)}
    container.seed(library)
    port = az.port
    az.stop()  # graceful: persists the metadata, so the restarted emulator has the same blobs and etags
    az = azurite_factory(location=location, port=port)
    killed: list[float] = []

    def on_progress(p: SyncProgress) -> None:
        if p.files_done >= 100 and not killed:
            az.kill()
            killed.append(time.monotonic())

    out = await run_sync(
        SyncSource(container_url=container.sync_url),
        targets,
        progress=on_progress,
        tuning=SyncTuning(retries=2),
    )
    assert killed, "the sync finished before the kill"
    assert not out.ok and out.error is not None and "unreachable" in out.error, out.error
    assert time.monotonic() - killed[0] < 10
    assert temp_files(targets.music_dir) == []
    on_disk = visible_files(targets.music_dir)
    assert all(library[name] == data for name, data in on_disk.items()), "a visible file is partial"
    assert_consistent(targets)
    done = len(manifest_files(targets))
    assert done >= 100 and set(on_disk) == {
        str(Path(p).relative_to(targets.music_dir)) for p in manifest_files(targets)
    }

    azurite_factory(location=location, port=port)
    again = await run_sync(SyncSource(container_url=container.sync_url), targets)
    assert again.ok, again.error
    assert (again.downloaded, again.unchanged) == (400 - done, done)
    assert visible_files(targets.music_dir) == library


def test_clean_tree_helper(tmp_path: Path) -> None:
    # guards the helper the assertions above rely on: hidden temp files are not "visible"
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".amora-x.part").write_bytes(b"p")
    (tmp_path / "a" / "b.mp3").write_bytes(b"b")
    assert visible_files(tmp_path) == {"a/b.mp3": b"b"}
    assert temp_files(tmp_path) == [tmp_path / "a" / ".amora-x.part"]
    shutil.rmtree(tmp_path / "a")
