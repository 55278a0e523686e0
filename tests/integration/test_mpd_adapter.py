"""MpdLink against a real private MPD (tests/fixtures/mpd_server.py)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from amora.adapters.mpd import MpdLink, MpdSettings, parse_objects
from amora.core.effects import MpdCall
from amora.core.events import Event, LinkDown, LinkUp, MpdResult, MpdSnapshot
from tools.stack.mpd import SAMPLE_PLAYLISTS, MpdServer

pytestmark = pytest.mark.services


class Recorder:
    """The link's `emit`: keeps every event (with its arrival time) and lets a test await one."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.arrived: list[float] = []
        self._changed = asyncio.Event()
        self.cursor = 0

    def __call__(self, event: Event) -> None:
        self.arrived.append(time.perf_counter())
        self.events.append(event)
        self._changed.set()

    async def next(self, pred: Callable[[Event], bool], timeout: float = 5.0) -> Event:
        """The first event after the cursor matching `pred`; moves the cursor past it."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for i in range(self.cursor, len(self.events)):
                if pred(self.events[i]):
                    self.cursor = i + 1
                    return self.events[i]
            self._changed.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"no matching event; got {self.events[self.cursor :]!r}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def of(self, kind: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def result_for(call_id: int) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, MpdResult) and e.call_id == call_id


def snapshot_where(check: Callable[[MpdSnapshot], bool]) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, MpdSnapshot) and check(e)


def status_is(key: str, value: str) -> Callable[[Event], bool]:
    return snapshot_where(lambda s: s.status is not None and s.status.get(key) == value)


def unix(server: MpdServer, **kw: Any) -> MpdSettings:
    return MpdSettings(host=server.host, **kw)


def tcp(server: MpdServer, **kw: Any) -> MpdSettings:
    assert server.port is not None
    return MpdSettings(host="127.0.0.1", port=server.port, **kw)


async def linked(settings: MpdSettings, rec: Recorder, **kw: Any) -> MpdLink:
    link = MpdLink(settings, rec, **kw)
    await link.connect()
    await rec.next(lambda e: isinstance(e, MpdSnapshot))
    return link


async def run(link: MpdLink, rec: Recorder, call_id: int, *ops: list[Any]) -> MpdResult:
    start = rec.cursor
    link.call(MpdCall(call_id=call_id, ops=list(ops)))
    result = await rec.next(result_for(call_id))
    # Snapshots caused by the call may come before or after its result: look for them from here.
    rec.cursor = start
    assert isinstance(result, MpdResult)
    return result


@pytest.mark.parametrize("transport", [unix, tcp], ids=["unix", "tcp"])
async def test_connect_emits_link_up_then_full_snapshot(mpd_server: MpdServer, transport: Any) -> None:
    rec = Recorder()
    ticks = itertools.count(1000)
    link = MpdLink(transport(mpd_server), rec, clock=lambda: float(next(ticks)))
    await link.connect()
    try:
        up, snap = rec.events[:2]
        assert isinstance(up, LinkUp) and up.link == "mpd"
        assert isinstance(snap, MpdSnapshot)
        assert 1000.0 <= up.at < snap.at < 1010.0  # stamped by the injected clock, in order
        assert snap.status is not None and snap.status["state"] == "stop"
        assert snap.song == {}
        assert snap.outputs is not None
        assert [o["outputname"] for o in snap.outputs] == ["Speaker A", "Speaker B"]
        assert snap.playlists is not None
        assert sorted(p["playlist"] for p in snap.playlists) == sorted(SAMPLE_PLAYLISTS)
        # the link works both ways on this transport
        result = await run(link, rec, 1, ["load", "focus"], ["play"], ["currentsong"])
        assert result.ok, result
        assert result.results[2]["title"] == "Deep Work"
        await rec.next(status_is("state", "play"))
    finally:
        await link.close()


async def test_calls_run_in_invocation_order(mpd_server: MpdServer) -> None:
    rec = Recorder()
    link = await linked(unix(mpd_server), rec)
    try:
        link.call(MpdCall(call_id=1, ops=[["clear"], ["load", "relaxing"], ["playlistinfo"]]))
        link.call(MpdCall(call_id=2, ops=[["setvol", 40], ["random", True], ["status"]]))
        link.call(MpdCall(call_id=3, ops=[["random", False], ["play", 2], ["status"]]))
        link.call(MpdCall(call_id=4, ops=[["playlistinfo", [1, 3]]]))
        for call_id in (1, 2, 3, 4):
            await rec.next(result_for(call_id))
        results = {e.call_id: e for e in rec.of(MpdResult)}
        assert [e.call_id for e in rec.of(MpdResult)] == [1, 2, 3, 4]
        assert all(r.ok for r in results.values())
        assert results[1].results[:2] == [None, None]
        assert [s["file"] for s in results[1].results[2]] == list(SAMPLE_PLAYLISTS["relaxing"])
        status2 = results[2].results[2]
        assert (status2["volume"], status2["random"]) == ("40", "1")
        status3 = results[3].results[2]
        assert (status3["random"], status3["state"], status3["song"]) == ("0", "play", "2")
        assert [s["pos"] for s in results[4].results[0]] == ["1", "2"]  # a [start, end] range
    finally:
        await link.close()


async def test_command_error_stops_the_call_and_keeps_the_link(mpd_server: MpdServer) -> None:
    rec = Recorder()
    link = await linked(unix(mpd_server), rec)
    try:
        result = await run(link, rec, 7, ["setvol", 30], ["next"], ["setvol", 10])
        assert not result.ok and not result.connection_lost
        assert "Not playing" in result.error and "{next}" in result.error
        assert result.results == [None]  # what ran before the failing op
        with mpd_server.client() as c:
            assert c.status()["volume"] == "30"  # the op after the error never ran
        bad = await run(link, rec, 8, ["load", "../etc/passwd"])
        assert not bad.ok and "No such playlist" in bad.error
        unknown = await run(link, rec, 9, ["kill"])
        assert not unknown.ok and not unknown.connection_lost and "unknown MPD command" in unknown.error
        ok = await run(link, rec, 10, ["ping"])
        assert ok.ok and ok.results == [None]
        assert link.connected and not rec.of(LinkDown)
    finally:
        await link.close()


async def test_snapshot_op_emits_full_snapshot_before_result(mpd_server: MpdServer) -> None:
    rec = Recorder()
    link = await linked(unix(mpd_server), rec)
    try:
        link.call(MpdCall(call_id=5, ops=[["setvol", 55], ["snapshot"]]))
        result = await rec.next(result_for(5))
        i = rec.events.index(result)
        full = [
            e
            for e in rec.events[2:i]
            if isinstance(e, MpdSnapshot) and None not in (e.status, e.song, e.outputs, e.playlists)
        ]
        assert full and full[-1].status is not None and full[-1].status["volume"] == "55"
        assert isinstance(result, MpdResult) and result.ok and result.results == [None, None]
    finally:
        await link.close()


async def test_external_changes_produce_partial_snapshots(mpd_server: MpdServer) -> None:
    rec = Recorder()
    link = await linked(unix(mpd_server), rec)
    try:
        mpd_server.mpc("load", "relaxing")
        mpd_server.mpc("play")
        await rec.next(status_is("state", "play"))
        mpd_server.mpc("pause")
        snap = await rec.next(status_is("state", "pause"))
        assert isinstance(snap, MpdSnapshot)
        assert snap.song is not None and snap.song["title"] == "Relaxing Piano"
        assert snap.outputs is None and snap.playlists is None

        mpd_server.mpc("volume", "30")
        snap = await rec.next(status_is("volume", "30"))
        assert isinstance(snap, MpdSnapshot) and (snap.song, snap.outputs, snap.playlists) == (
            None,
            None,
            None,
        )

        mpd_server.mpc("disable", "2")
        snap = await rec.next(snapshot_where(lambda s: s.outputs is not None))
        assert isinstance(snap, MpdSnapshot) and snap.outputs is not None and snap.status is not None
        assert [o["outputenabled"] for o in snap.outputs] == ["1", "0"]

        mpd_server.mpc("save", "saved-queue")
        snap = await rec.next(snapshot_where(lambda s: s.playlists is not None))
        assert isinstance(snap, MpdSnapshot) and snap.playlists is not None and snap.status is None
        assert "saved-queue" in [p["playlist"] for p in snap.playlists]
    finally:
        await link.close()


async def test_idle_snapshots_match_python_mpd2(mpd_server: MpdServer) -> None:
    """The idle path parses the protocol itself; it must build exactly what python-mpd2 returns."""
    rec = Recorder()
    link = await linked(unix(mpd_server), rec)
    try:
        mpd_server.mpc("load", "morning")
        mpd_server.mpc("play", "2")
        mpd_server.mpc("pause")
        mpd_server.mpc("disable", "1")
        mpd_server.mpc("save", "another")
        await rec.next(snapshot_where(lambda s: s.playlists is not None and len(s.playlists) == 4))
        latest: dict[str, Any] = {}
        for e in rec.of(MpdSnapshot)[1:]:
            for f in ("status", "song", "outputs", "playlists"):
                if getattr(e, f) is not None:
                    latest[f] = getattr(e, f)
        with mpd_server.client() as c:
            expected = {
                "status": c.status(),
                "song": c.currentsong(),
                "outputs": list(c.outputs()),
                "playlists": list(c.listplaylists()),
            }
        for f in ("song", "outputs"):
            assert latest[f] == expected[f]
        assert [p["playlist"] for p in latest["playlists"]] == [p["playlist"] for p in expected["playlists"]]
        assert latest["status"].keys() == expected["status"].keys()
        assert latest["status"]["state"] == "pause"
    finally:
        await link.close()


def test_parse_objects_repeats_and_delimiters() -> None:
    lines = ["file: a", "Artist: x", "Artist: y", "Artist: z", "file: b", "Title: t"]
    assert parse_objects(lines, ("file",)) == [
        {"file": "a", "artist": ["x", "y", "z"]},
        {"file": "b", "title": "t"},
    ]
    assert parse_objects(["volume: 5", "state: play"]) == [{"volume": "5", "state": "play"}]


@pytest.mark.parametrize("transport", [unix, tcp], ids=["unix", "tcp"])
async def test_external_change_latency(mpd_server: MpdServer, transport: Any) -> None:
    """Command sent by another client -> snapshot emitted here: no 100 ms timer on the idle path,
    and over TCP no 40 ms Nagle/delayed-ACK stall, also for the second event of a burst."""
    rec = Recorder()
    link = await linked(transport(mpd_server), rec)
    loop = asyncio.get_running_loop()
    try:
        with mpd_server.client() as c:
            c.load("relaxing")
            c.play()
            await rec.next(status_is("state", "play"))
            singles: list[float] = []
            seconds: list[float] = []
            for i in range(20):
                vol_a, vol_b = str(10 + 2 * i), str(11 + 2 * i)

                def burst(a: str = vol_a, b: str = vol_b) -> float:
                    t0 = time.perf_counter()
                    c.setvol(a)
                    c.setvol(b)
                    return t0

                t0 = await loop.run_in_executor(None, burst)
                await rec.next(status_is("volume", vol_b))
                arrived = rec.arrived[rec.cursor - 1]
                seconds.append(arrived - t0)
                t0 = time.perf_counter()
                await loop.run_in_executor(None, c.pause if i % 2 == 0 else c.play)
                await rec.next(status_is("state", "pause" if i % 2 == 0 else "play"))
                singles.append(rec.arrived[rec.cursor - 1] - t0)
        # Measured ~0.3-1 ms; the bounds leave room for a loaded CI machine but not for a 100 ms
        # idle timer or a 40 ms delayed ACK.
        assert statistics.median(singles) < 0.02, singles
        assert statistics.median(seconds) < 0.025, seconds
    finally:
        await link.close()


async def test_killed_server_gives_one_link_down_and_fails_pending_calls(mpd_server: MpdServer) -> None:
    rec = Recorder()
    link = await linked(unix(mpd_server), rec)
    mpd_server.pause()  # freeze first, so the calls are really pending when the process dies
    link.call(MpdCall(call_id=1, ops=[["status"]]))
    link.call(MpdCall(call_id=2, ops=[["play"]]))
    link.call(MpdCall(call_id=3, ops=[["pause"]]))
    await asyncio.sleep(0)  # let the first one reach the socket
    mpd_server.kill9()
    down = await rec.next(lambda e: isinstance(e, LinkDown), timeout=2.0)
    assert isinstance(down, LinkDown) and down.link == "mpd" and down.reason
    results = rec.of(MpdResult)
    assert [r.call_id for r in results] == [1, 2, 3]
    assert all(not r.ok and r.connection_lost and r.error for r in results)
    assert not link.connected
    link.call(MpdCall(call_id=4, ops=[["status"]]))  # while down: fails at once
    late = await rec.next(result_for(4))
    assert isinstance(late, MpdResult) and late.connection_lost
    await asyncio.sleep(0.05)
    assert len(rec.of(LinkDown)) == 1
    await link.close()


async def test_frozen_server_times_out_into_link_down_then_reconnects(mpd_server: MpdServer) -> None:
    rec = Recorder()
    link = await linked(unix(mpd_server, timeout=0.3), rec)
    try:
        mpd_server.pause()
        started = time.monotonic()
        link.call(MpdCall(call_id=1, ops=[["status"]]))
        link.call(MpdCall(call_id=2, ops=[["play"]]))
        result = await rec.next(result_for(1), timeout=3.0)
        assert isinstance(result, MpdResult) and result.connection_lost and "0.3" in result.error
        assert 0.25 < time.monotonic() - started < 2.0
        second = await rec.next(result_for(2))
        assert isinstance(second, MpdResult) and second.connection_lost
        await rec.next(lambda e: isinstance(e, LinkDown))
        assert len(rec.of(LinkDown)) == 1

        mpd_server.resume()
        await link.connect()
        await rec.next(lambda e: isinstance(e, LinkUp))
        ok = await run(link, rec, 3, ["status"])
        assert ok.ok
    finally:
        mpd_server.resume()
        await link.close()


async def test_connect_while_frozen_times_out(mpd_server: MpdServer) -> None:
    rec = Recorder()
    link = MpdLink(unix(mpd_server, timeout=0.3), rec)
    mpd_server.pause()
    try:
        await asyncio.wait_for(link.connect(), 3.0)
        assert [type(e) for e in rec.events] == [LinkDown]
    finally:
        mpd_server.resume()
        await link.close()


@pytest.mark.parametrize("transport", [unix, tcp], ids=["unix", "tcp"])
async def test_reconnect_after_restart(mpd_server: MpdServer, transport: Any) -> None:
    rec = Recorder()
    link = await linked(transport(mpd_server), rec)
    try:
        assert (await run(link, rec, 1, ["setvol", 42], ["load", "focus"])).ok
        mpd_server.restart()
        await rec.next(lambda e: isinstance(e, LinkDown))
        await link.connect()
        await rec.next(lambda e: isinstance(e, LinkUp))
        snap = await rec.next(lambda e: isinstance(e, MpdSnapshot))
        assert isinstance(snap, MpdSnapshot) and snap.status is not None
        assert snap.status["volume"] == "42" and snap.status["playlistlength"] == "3"
        assert (await run(link, rec, 2, ["play"])).ok
        await rec.next(status_is("state", "play"))  # the new idle connection works too
    finally:
        await link.close()


async def test_connect_failure_emits_one_link_down(tmp_path: Path) -> None:
    rec = Recorder()
    link = MpdLink(MpdSettings(host=str(tmp_path / "no-such-socket"), timeout=1.0), rec)
    await link.connect()
    assert [type(e) for e in rec.events] == [LinkDown]
    assert rec.events[0].reason  # type: ignore[attr-defined]
    from tools.stack.proc import free_port

    link2 = MpdLink(MpdSettings(host="127.0.0.1", port=free_port(), timeout=1.0), rec)
    await link2.connect()
    assert [type(e) for e in rec.events] == [LinkDown, LinkDown]


async def test_password(mpd_library: Path, tmp_path: Path) -> None:
    secret = "s3cret-Pa55"
    with MpdServer(tmp_path / "mpd", library=mpd_library, tcp=True, password=secret) as server:
        rec = Recorder()
        link = await linked(tcp(server, password=secret), rec)
        assert (await run(link, rec, 1, ["load", "focus"])).ok
        server.mpc("play")
        await rec.next(status_is("state", "play"))  # the idle connection is authenticated too
        await link.close()

        bad = Recorder()
        for settings in (unix(server, password="wrong"), unix(server)):
            await MpdLink(settings, bad).connect()
        downs = bad.of(LinkDown)
        assert [type(e) for e in bad.events] == [LinkDown, LinkDown]
        assert "incorrect password" in downs[0].reason
        assert all(secret not in d.reason and "wrong" not in d.reason for d in downs)


async def test_update_database_waits_for_the_job(mpd_server: MpdServer) -> None:
    rec = Recorder()
    link = await linked(unix(mpd_server), rec)
    try:
        src = mpd_server.music_dir / "Calm Waters" / "01 Relaxing Piano.flac"
        (mpd_server.music_dir / "New").mkdir()
        shutil.copy(src, mpd_server.music_dir / "New" / "fresh.flac")
        await link.update_database("New")
        result = await run(link, rec, 1, ["listall", "New"])
        assert result.ok and {"file": "New/fresh.flac"} in result.results[0]
        await link.update_database()  # nothing changed: still returns
        await link.update_database("does-not-exist")  # MPD accepts it as a job that finds nothing
    finally:
        await link.close()


async def test_close_fails_pending_and_leaves_no_tasks(mpd_server: MpdServer) -> None:
    rec = Recorder()
    before = asyncio.all_tasks()
    link = await linked(unix(mpd_server), rec)
    mpd_server.pause()
    link.call(MpdCall(call_id=1, ops=[["status"]]))
    await asyncio.sleep(0.01)
    await link.close()
    mpd_server.resume()
    assert [(r.call_id, r.connection_lost) for r in rec.of(MpdResult)] == [(1, True)]
    assert not rec.of(LinkDown)
    await asyncio.sleep(0)
    leftover = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert not leftover, leftover


async def test_a_malformed_call_changes_nothing(mpd_server: MpdServer) -> None:
    """Every op is checked before the call's single command list is sent."""
    rec = Recorder()
    link = await linked(unix(mpd_server), rec)
    try:
        assert (await run(link, rec, 1, ["setvol", 25])).ok
        bad_ops: list[list[Any]] = [["fly"], ["load", "x\nsetvol 99"], ["setvol", {"v": 1}], []]
        for call_id, bad in enumerate(bad_ops, start=2):
            result = await run(link, rec, call_id, ["setvol", 70], bad)
            assert not result.ok and not result.connection_lost and result.results == []
        with mpd_server.client() as c:
            assert c.status()["volume"] == "25"
        # results that need no round trip still come out in call order
        link.call(MpdCall(call_id=10, ops=[["setvol", 30], ["status"]]))
        link.call(MpdCall(call_id=11, ops=[["nope"]]))
        link.call(MpdCall(call_id=12, ops=[]))
        await rec.next(result_for(12))
        assert [r.call_id for r in rec.of(MpdResult)][-3:] == [10, 11, 12]
        assert link.connected
    finally:
        await link.close()
