"""Content sync as the core sees it: the syncing state, progress, outcome, triggers."""

from __future__ import annotations

from amora import schemas
from amora.core import effects as fx
from amora.core.events import DesiredPatch, LinkUp, OperationDone, SyncProgress, TimerFired
from tests.unit.harness import STATUS_PLAYING, STATUS_STOPPED, Harness


def synced(**overrides: object) -> Harness:
    h = Harness(sync_configured=True, **overrides)
    h.start(status=STATUS_PLAYING)
    return h


def test_sync_is_accepted_at_once_and_music_keeps_playing() -> None:
    h = synced()
    out = h.command("syncContent", {"force": True})
    body = h.response(out)
    assert body["status"] == "ok" and body["result"]["accepted"] is True
    op = h.only(out, fx.StartOperation)[0]
    assert op.operation == "sync" and op.args == {"force": True}
    assert h.core.player_state() == "syncing"
    state = h.only(out, fx.PublishState)[0].state
    assert state["player"] == "syncing" and state["playback"]["status"] == "playing"
    # playback commands still work while syncing
    assert h.mpd_call(h.command("pause", command_id="c2")).ops[0] == ["pause", 1]


def test_a_second_request_during_a_sync_is_answered_busy() -> None:
    h = synced()
    h.command("syncContent")
    body = h.response(h.command("syncContent", command_id="c2"))
    assert body["error"]["code"] == "busy" and body["error"]["http_status"] == 409


def test_progress_and_outcome_are_published() -> None:
    h = synced()
    op = h.only(h.command("syncContent"), fx.StartOperation)[0]
    progress = {
        "phase": "downloading",
        "files_done": 3,
        "files_total": 10,
        "bytes_done": 300,
        "bytes_total": 1000,
        "current": "a/b.flac",
    }
    out = h.feed(SyncProgress(at=h.tick(), progress=progress))
    sync = h.only(out, fx.PublishState)[0].state["sync"]
    assert sync["files_done"] == 3 and sync["op_id"] == op.op_id
    h.snapshot({**STATUS_PLAYING, "state": "pause"})  # the listener paused meanwhile
    assert h.core.player_state() == "syncing"
    result = {
        "downloaded": 7,
        "removed": 1,
        "unchanged": 2,
        "skipped": 0,
        "bytes": 1000,
        "duration": 1.5,
        "changed": True,
    }
    out = h.feed(OperationDone(at=h.tick(), op_id=op.op_id, ok=True, result=result))
    out = h.result(h.mpd_call(out).call_id, None)  # MPD re-read after new content
    assert h.core.player_state() == "paused"
    state = h.only(out, fx.PublishState)[0].state
    assert state["sync"]["ok"] is True and state["sync"]["downloaded"] == 7
    assert state["sync"]["last_success"] == h.now
    assert schemas.issues("state", state) == []


def test_failed_sync_is_reported_and_the_player_returns_to_the_truth() -> None:
    h = synced()
    op = h.only(h.command("syncContent"), fx.StartOperation)[0]
    out = h.feed(OperationDone(at=h.tick(), op_id=op.op_id, ok=False, error="storage unreachable"))
    state = h.only(out, fx.PublishState)[0].state
    assert state["player"] == "playing"
    assert state["sync"]["ok"] is False and state["sync"]["error"] == "storage unreachable"


def test_new_content_loads_the_default_playlist_when_idle() -> None:
    h = Harness(sync_configured=True, iothub_configured=True)
    h.start(status=STATUS_STOPPED)
    h.feed(LinkUp(at=h.tick(), link="iothub"))
    h.feed(DesiredPatch(at=h.tick(), patch={"content": {"default_playlist": "focus"}, "$version": 2}))
    op = h.only(h.command("syncContent"), fx.StartOperation)[0]
    out = h.feed(OperationDone(at=h.tick(), op_id=op.op_id, ok=True, result={"changed": True}))
    out = h.result(h.mpd_call(out).call_id, None)
    assert h.mpd_call(out).ops == [["clear"], ["load", "focus"]]


def test_periodic_sync_when_enabled() -> None:
    h = Harness(sync_configured=True, sync_enabled=True, sync_interval=600)
    h.start()
    timer = next(t for t in h.only(h.effects, fx.StartTimer) if t.name == "sync")
    assert timer.delay == 0.0  # at start, once MPD is there
    out = h.feed(TimerFired(at=h.tick(), name="sync"))
    op = h.only(out, fx.StartOperation)[0]
    assert not h.only(out, fx.Respond)  # nobody asked: nothing to answer
    out = h.feed(OperationDone(at=h.tick(), op_id=op.op_id, ok=True, result={"changed": False}))
    assert [t.delay for t in h.only(out, fx.StartTimer) if t.name == "sync"] == [600]


def test_sync_not_enabled_means_no_timer() -> None:
    h = Harness(sync_configured=True, sync_enabled=False)
    h.start()
    assert not [t for t in h.only(h.effects, fx.StartTimer) if t.name == "sync"]


def test_reboot_during_sync_does_not_confuse_the_operations() -> None:
    h = synced()
    sync_op = h.only(h.command("syncContent"), fx.StartOperation)[0]
    reboot_op = h.only(h.command("reboot", command_id="c2"), fx.StartOperation)[0]
    assert h.core.player_state() == "rebooting"
    h.feed(OperationDone(at=h.tick(), op_id=sync_op.op_id, ok=False, error="cancelled"))
    assert h.core.player_state() == "rebooting"
    out = h.feed(OperationDone(at=h.tick(), op_id=reboot_op.op_id, ok=True))
    assert [t.name for t in h.only(out, fx.StartTimer)] == ["reboot_overdue"]


def test_desired_sync_settings_configure_sync_and_are_acknowledged_without_secrets() -> None:
    from amora.core.events import LinkUp

    h = Harness(iothub_configured=True)
    h.start()
    h.feed(LinkUp(at=h.tick(), link="iothub"))
    assert h.response(h.command("syncContent"))["error"]["code"] == "not_configured"
    url = "https://acct.blob.core.windows.net/music?sv=2024&sp=rl&sig=SECRET"
    h.feed(
        DesiredPatch(
            at=h.tick(), patch={"content": {"sync": {"container_url": url, "prefix": "a"}}, "$version": 3}
        )
    )
    ack = h.core.acks[("content", "sync")]
    assert ack["ac"] == 200 and ack["value"]["container_url"] == "***" and ack["value"]["prefix"] == "a"
    out = h.command("syncContent", command_id="c2")
    op = h.only(out, fx.StartOperation)[0]
    assert op.args["desired"] == {"container_url": url, "prefix": "a"}
    # a patch merges; null removes a key
    h.feed(DesiredPatch(at=h.tick(), patch={"content": {"sync": {"prefix": None}}, "$version": 4}))
    assert h.core.desired_sync == {"container_url": url}
    bad = h.feed(DesiredPatch(at=h.tick(), patch={"content": {"sync": {"concurrency": 999}}, "$version": 5}))
    assert h.core.acks[("content", "sync")]["ac"] == 400
    assert "SECRET" not in str(bad)


def test_changed_content_is_done_only_after_mpd_was_read_again() -> None:
    h = synced()
    op = h.only(h.command("syncContent"), fx.StartOperation)[0]
    out = h.feed(OperationDone(at=h.tick(), op_id=op.op_id, ok=True, result={"changed": True}))
    call = h.mpd_call(out)
    assert call.ops == [["snapshot"]]
    assert h.core.player_state() == "syncing" and h.core.sync_status["phase"] == "refreshing"
    out = h.result(call.call_id, None)
    assert h.core.player_state() == "playing"
    assert h.only(out, fx.PublishState)[0].state["sync"]["phase"] == "done"
