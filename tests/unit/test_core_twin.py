"""Device twin, desired properties, direct methods and telemetry in the core."""

from __future__ import annotations

from typing import Any

from amora import schemas
from amora.core import effects as fx
from amora.core.events import DesiredPatch, LinkDown, LinkUp, TimerFired
from amora.core.twin import merge_diff
from tests.unit.harness import STATUS_PLAYING, Harness


def hub(**overrides: Any) -> Harness:
    h = Harness(iothub_configured=True, telemetry_interval=60, min_report_interval=1.0, **overrides)
    h.start(status=STATUS_PLAYING)
    h.feed(LinkUp(at=h.tick(), link="iothub"))
    return h


def reports(effects: list[fx.Effect]) -> list[dict[str, Any]]:
    return [e.patch for e in effects if isinstance(e, fx.ReportProperties)]


def test_merge_diff() -> None:
    assert merge_diff({"a": 1, "b": {"c": 2, "d": 3}}, {"a": 1, "b": {"c": 4}}) == {"b": {"c": 4, "d": None}}
    assert merge_diff(None, {"a": 1}) == {"a": 1}
    assert merge_diff({"a": {"x": 1}}, {"a": {"x": 1}}) == {}


def test_full_report_on_connect_matches_the_guides_shape() -> None:
    h = Harness(iothub_configured=True)
    h.start(status=STATUS_PLAYING)
    out = h.feed(LinkUp(at=h.tick(), link="iothub"))
    full = reports(out)[0]
    assert schemas.issues("reported", full) == []
    assert full["audio"] == {"volume": 50, "device": "Speaker A", "backend": "pipewire", "muted": False}
    assert full["playback"]["status"] == "playing" and full["playback"]["duration"] == 30
    assert set(full["system"]) >= {"version", "uptime", "free_space"}
    assert h.only(out, fx.StartTimer)[0].name == "telemetry"


def test_patches_carry_only_what_changed_and_position_alone_is_not_news() -> None:
    h = hub()
    h.tick(2)
    assert reports(h.snapshot({**STATUS_PLAYING, "elapsed": "9.0"})) == []
    h.tick(2)
    patch = reports(h.snapshot({**STATUS_PLAYING, "elapsed": "11.0", "volume": "20"}))[0]
    assert patch["audio"] == {"volume": 20}
    assert patch["playback"] == {"position": 11}
    assert "system" not in patch or set(patch["system"]) <= {"uptime"}


def test_bursts_are_coalesced_to_one_patch_per_interval() -> None:
    h = hub()
    out = h.snapshot({**STATUS_PLAYING, "volume": "20"})  # within 1 s of the full report
    assert reports(out) == []
    timer = h.only(out, fx.StartTimer)[0]
    assert timer.name == "report"
    h.snapshot({**STATUS_PLAYING, "volume": "25"})
    out = h.feed(TimerFired(at=h.tick(1), name="report"))
    assert [p["audio"] for p in reports(out)] == [{"volume": 25}]


def test_changes_while_offline_are_reported_in_full_after_reconnect() -> None:
    h = hub()
    h.feed(LinkDown(at=h.tick(), link="iothub", reason="cut"))
    assert reports(h.snapshot({**STATUS_PLAYING, "volume": "33"})) == []
    h.feed(TimerFired(at=h.tick(), name="retry:iothub"))
    full = reports(h.feed(LinkUp(at=h.tick(), link="iothub")))[0]
    assert full["audio"]["volume"] == 33


def test_desired_volume_goes_through_set_volume_and_is_acknowledged() -> None:
    h = hub()
    out = h.feed(DesiredPatch(at=h.tick(2), patch={"audio": {"volume": 75}, "$version": 4}))
    call = h.mpd_call(out)
    assert call.ops == [["setvol", 75], ["status"]]
    out = h.result(call.call_id, None, {**STATUS_PLAYING, "volume": "75"})
    out += h.feed(TimerFired(at=h.tick(1), name="report"))
    merged: dict[str, Any] = {}
    for patch in reports(h.effects):
        merged = _merge(merged, patch)
    assert merged["acks"]["audio"]["volume"] == {"value": 75, "ac": 200, "av": 4, "ad": "applied"}
    assert merged["desired_version"] == 4
    assert schemas.issues("reported", merged) == []


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        elif v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def test_invalid_desired_values_are_rejected_and_the_rest_applied() -> None:
    h = hub()
    out = h.feed(
        DesiredPatch(
            at=h.tick(2),
            patch={
                "audio": {"volume": 150, "device": "Speaker B"},
                "content": {"default_playlist": "focus", "colour": "red"},
                "$version": 5,
            },
        )
    )
    call = h.mpd_call(out)
    assert call.ops == [["enableoutput", 1], ["disableoutput", 0], ["status"]]
    acks = h.core.acks
    assert acks[("audio", "volume")]["ac"] == 400 and "maximum" in acks[("audio", "volume")]["ad"]
    assert acks[("content", "default_playlist")]["ac"] == 200
    assert acks[("content", "colour")]["ac"] == 400
    assert h.core.default_playlist == "focus"


def test_unknown_output_is_rejected() -> None:
    h = hub()
    out = h.feed(DesiredPatch(at=h.tick(2), patch={"audio": {"device": "hw:CARD=Nope"}, "$version": 2}))
    assert not h.only(out, fx.MpdCall)
    assert h.core.acks[("audio", "device")]["ac"] == 400


def test_stale_versions_are_ignored_and_a_replayed_full_document_is_idempotent() -> None:
    h = hub()
    call = h.mpd_call(h.feed(DesiredPatch(at=h.tick(), patch={"audio": {"volume": 10}, "$version": 7})))
    h.result(call.call_id, None, STATUS_PLAYING)
    assert not h.only(
        h.feed(DesiredPatch(at=h.tick(), patch={"audio": {"volume": 90}, "$version": 6})), fx.MpdCall
    )
    assert not h.only(
        h.feed(DesiredPatch(at=h.tick(), patch={"audio": {"volume": 10}, "$version": 7}, full=True)),
        fx.MpdCall,
    )
    out = h.feed(DesiredPatch(at=h.tick(), patch={"audio": {"volume": 12}, "$version": 8}, full=True))
    assert h.mpd_call(out).ops[0] == ["setvol", 12]


def test_desired_volume_waits_for_mpd_and_is_applied_when_it_returns() -> None:
    h = hub()
    h.feed(LinkDown(at=h.tick(), link="mpd", reason="gone"))
    out = h.feed(DesiredPatch(at=h.tick(), patch={"audio": {"volume": 64}, "$version": 3}))
    assert not h.only(out, fx.MpdCall)
    assert h.core.acks[("audio", "volume")]["ac"] == 202
    h.feed(TimerFired(at=h.tick(), name="retry:mpd"))
    out = h.feed(LinkUp(at=h.tick(), link="mpd"))
    assert h.mpd_call(out).ops[0] == ["setvol", 64]


def test_telemetry_runs_on_its_interval_only_while_online() -> None:
    h = hub()
    out = h.feed(TimerFired(at=h.tick(60), name="telemetry"))
    body = h.only(out, fx.SendTelemetry)[0].body
    assert schemas.issues("telemetry", body) == []
    assert h.only(out, fx.StartTimer)[0].delay == 60
    h.feed(LinkDown(at=h.tick(), link="iothub", reason="cut"))
    out = h.feed(TimerFired(at=h.tick(60), name="telemetry"))
    assert not h.only(out, fx.SendTelemetry) and not h.only(out, fx.StartTimer)


def test_twin_disabled_sends_nothing() -> None:
    h = hub(enable_device_twin=False)
    assert not reports(h.effects)
    out = h.feed(DesiredPatch(at=h.tick(), patch={"audio": {"volume": 5}, "$version": 2}))
    assert out == []


def test_shutdown_sends_the_last_changes_before_going() -> None:
    from amora.core.events import ShutdownRequested

    h = hub()
    h.snapshot({**STATUS_PLAYING, "volume": "21"})  # throttled: within 1 s of the last report
    out = h.feed(ShutdownRequested(at=h.tick()))
    assert [p["audio"] for p in reports(out)] == [{"volume": 21}]
    kinds = [type(e) for e in out]
    assert kinds.index(fx.PublishConnection) < kinds.index(fx.Disconnect)
