"""Every transition of the chart that is not a command: links, MPD truth, shutdown, reboot."""

from __future__ import annotations

import json

import pytest

from amora import schemas
from amora.core import effects as fx
from amora.core.chart import ChartError, build_machine, load_chart, parse_chart
from amora.core.events import (
    LinkDown,
    LinkUp,
    MqttMessage,
    OperationDone,
    ShutdownRequested,
    Started,
    SystemSample,
    TimerFired,
)
from amora.core.settings import BackoffPolicy
from tests.unit.harness import OUTPUTS, PLAYLISTS, SONG, STATUS_PLAYING, STATUS_STOPPED, Harness


def test_start_connects_every_configured_link() -> None:
    h = Harness()
    out = h.feed(Started(at=1.0, boot_time=0.0, seed=1))
    assert [e.link for e in h.only(out, fx.Connect)] == ["mqtt", "mpd"]
    assert h.core.configuration() == {
        "player": "stopped",
        "mqtt": "connecting",
        "mpd": "connecting",
        "iothub": "offline",
    }
    h2 = Harness(iothub_configured=True)
    out = h2.feed(Started(at=1.0, boot_time=0.0, seed=1))
    assert [e.link for e in h2.only(out, fx.Connect)] == ["mqtt", "mpd", "iothub"]


def test_mqtt_up_publishes_birth_then_full_state() -> None:
    h = Harness()
    h.feed(Started(at=1.0, boot_time=0.0, seed=1))
    out = h.feed(LinkUp(at=2.0, link="mqtt"))
    assert isinstance(out[0], fx.PublishConnection) and out[0].online
    state = h.only(out, fx.PublishState)[0].state
    assert state["links"]["mqtt"] == "online"
    assert schemas.issues("state", state) == []


@pytest.mark.parametrize("link", ["mqtt", "mpd"])
def test_backoff_grows_is_capped_and_resets(link: str) -> None:
    h = Harness()
    h.start(mqtt=link != "mqtt", mpd=link != "mpd")
    policy = h.core.settings.backoff[link]
    delays = []
    for _ in range(6):
        out = h.feed(LinkDown(at=h.tick(), link=link, reason="refused"))
        timer = h.only(out, fx.StartTimer)[0]
        assert timer.name == f"retry:{link}"
        delays.append(timer.delay)
        assert h.core.link_state(link) == "backoff"
        out = h.feed(TimerFired(at=h.tick(timer.delay), name=timer.name))
        assert h.only(out, fx.Connect)[0].link == link
        assert h.core.link_state(link) == "connecting"
    expected = [min(policy.max_delay, policy.initial_delay * 2**i) for i in range(6)]
    assert delays == expected
    h.feed(LinkUp(at=h.tick(), link=link))
    out = h.feed(LinkDown(at=h.tick(), link=link, reason="again"))
    assert h.only(out, fx.StartTimer)[0].delay == policy.initial_delay


def test_jitter_is_deterministic_for_a_seed_and_bounded() -> None:
    policy = BackoffPolicy(initial_delay=10, max_delay=100, jitter=0.5)
    a = Harness(backoff={"mpd": policy})
    b = Harness(backoff={"mpd": policy})
    for h in (a, b):
        h.start(mpd=False)
        h.feed(LinkDown(at=h.tick(), link="mpd", reason="x"))
    da = a.only(a.effects, fx.StartTimer)[0].delay
    db = b.only(b.effects, fx.StartTimer)[0].delay
    assert da == db and 5 <= da <= 15


def test_link_down_while_offline_is_ignored() -> None:
    h = Harness()
    h.start()
    h.feed(ShutdownRequested(at=h.tick()))
    out = h.feed(LinkDown(at=h.tick(), link="mqtt", reason="closed"))
    assert not h.only(out, fx.StartTimer)


def test_mpd_down_fails_pending_commands_once() -> None:
    h = Harness()
    h.start(status=STATUS_PLAYING)
    call = h.mpd_call(h.command("next"))
    out = h.feed(LinkDown(at=h.tick(), link="mpd", reason="reset"))
    assert h.response(out)["error"]["code"] == "mpd_unavailable"
    assert not h.only(h.result(call.call_id, ok=False, lost=True), fx.Respond)  # late result is dropped


@pytest.mark.parametrize(
    ("mpd_state", "player"), [("play", "playing"), ("pause", "paused"), ("stop", "stopped")]
)
def test_player_follows_mpd(mpd_state: str, player: str) -> None:
    h = Harness()
    h.start(status=STATUS_PLAYING if mpd_state != "play" else STATUS_STOPPED)
    out = h.snapshot({**STATUS_PLAYING, "state": mpd_state}, song=SONG)
    assert h.core.player_state() == player
    state = h.only(out, fx.PublishState)[0].state
    assert state["player"] == player and state["playback"]["status"] == player
    assert schemas.issues("state", state) == []


def test_state_has_track_position_and_sample_time() -> None:
    h = Harness()
    h.start()
    at = h.now + 0.001
    out = h.snapshot(STATUS_PLAYING, song=SONG)
    playback = h.only(out, fx.PublishState)[0].state["playback"]
    assert playback["track"]["title"] == "One" and playback["track"]["artist"] == "Tone"
    assert playback["position"] == 3.5 and playback["duration"] == 30.0 and playback["sampled_at"] == at


def test_burst_of_snapshots_is_coalesced_into_the_latest_truth() -> None:
    h = Harness()
    h.start()
    seq_before = h.core.seq
    for volume in ("10", "20", "30"):
        assert not h.only(h.feed(h_snapshot(volume), drain=False), fx.PublishState)
    out = h.core.drain()
    states = h.only(out, fx.PublishState)
    assert len(states) == 1
    assert states[0].state["volume"] == 30 and states[0].state["seq"] == seq_before + 1
    assert not h.core.drain()  # nothing new


def h_snapshot(volume: str) -> object:
    from amora.core.events import MpdSnapshot

    return MpdSnapshot(at=1.0, status={**STATUS_STOPPED, "volume": volume})


def test_unchanged_snapshot_publishes_nothing() -> None:
    h = Harness()
    h.start()
    assert not h.only(
        h.snapshot(STATUS_STOPPED, song={}, outputs=OUTPUTS, playlists=PLAYLISTS), fx.PublishState
    )


def test_no_state_while_mqtt_is_offline_then_full_state_on_reconnect() -> None:
    h = Harness()
    h.start()
    h.feed(LinkDown(at=h.tick(), link="mqtt", reason="broker gone"))
    assert not h.only(h.snapshot({**STATUS_STOPPED, "volume": "77"}), fx.PublishState)
    h.feed(TimerFired(at=h.tick(), name="retry:mqtt"))
    out = h.feed(LinkUp(at=h.tick(), link="mqtt"))
    assert h.only(out, fx.PublishConnection)[0].online
    assert h.only(out, fx.PublishState)[0].state["volume"] == 77


def test_responses_made_while_mqtt_is_down_are_sent_after_reconnect() -> None:
    h = Harness()
    h.start(status=STATUS_PLAYING)
    call = h.mpd_call(h.command("stop"))
    h.feed(LinkDown(at=h.tick(), link="mqtt", reason="broker gone"))
    assert not h.only(h.result(call.call_id, None, STATUS_STOPPED), fx.Respond)
    h.feed(TimerFired(at=h.tick(), name="retry:mqtt"))
    out = h.feed(LinkUp(at=h.tick(), link="mqtt"))
    assert h.response(out)["command_id"] == "c1"


def test_shutdown_publishes_offline_closes_links_and_stops() -> None:
    h = Harness()
    h.start()
    out = h.feed(ShutdownRequested(at=h.tick()))
    assert isinstance(out[0], fx.PublishConnection) and out[0].online is False
    assert [e.link for e in h.only(out, fx.Disconnect)] == ["mqtt", "mpd"]
    assert isinstance(out[-1], fx.Stop)
    assert h.core.configuration() == {
        "player": "stopped",
        "mqtt": "offline",
        "mpd": "offline",
        "iothub": "offline",
    }
    assert h.feed(ShutdownRequested(at=h.tick())) == []


def test_reboot_answers_publishes_rebooting_then_runs_the_command() -> None:
    h = Harness(reboot_command=("sudo", "reboot"))
    h.start()
    out = h.command("reboot")
    assert h.response(out)["result"] == {"rebooting": True}
    assert h.only(out, fx.PublishState)[0].state["player"] == "rebooting"
    op = h.only(out, fx.StartOperation)[0]
    assert op.operation == "reboot" and op.args["command"] == ["sudo", "reboot"]
    kinds = [type(e) for e in out]
    assert kinds.index(fx.Respond) < kinds.index(fx.PublishState) < kinds.index(fx.StartOperation)
    body = h.response(h.command("play", command_id="c2"))
    assert body["error"]["code"] == "not_possible"
    assert h.response(h.command("ping", command_id="c3"))["status"] == "ok"


def test_failed_reboot_returns_to_the_truth_and_says_so() -> None:
    h = Harness()
    h.start()
    op = h.only(h.command("reboot"), fx.StartOperation)[0]
    out = h.feed(OperationDone(at=h.tick(), op_id=op.op_id, ok=False, error="exit status 1"))
    assert h.core.player_state() == "stopped"
    assert "exit status 1" in h.only(out, fx.PublishState)[0].state["last_error"]


def test_dev_mode_reboot_only_reports() -> None:
    h = Harness(dev_mode=True)
    h.start()
    out = h.command("reboot")
    assert h.response(out)["result"] == {"rebooting": False, "dev_mode": True}
    assert not h.only(out, fx.StartOperation)
    assert h.core.player_state() == "stopped"


def test_reboot_guard_after_a_requested_reboot() -> None:
    h = Harness(reboot_guard_seconds=600)
    h.feed(Started(at=100.0, boot_time=0.0, seed=1, rebooted_on_request=True))
    h.feed(LinkUp(at=101.0, link="mqtt"))
    h.now = 200.0
    body = h.response(h.command("reboot"))
    assert body["error"]["code"] == "not_possible" and "force" in body["error"]["message"]
    assert h.only(h.command("reboot", {"force": True}, command_id="c2"), fx.StartOperation)


def test_free_space_is_reported_in_mib_and_small_changes_are_not_news() -> None:
    h = Harness()
    h.start()
    out = h.feed(SystemSample(at=h.tick(), free_space=10 * 2**30))
    assert h.only(out, fx.PublishState)[0].state["system"]["free_space"] == 10240
    assert not h.only(h.feed(SystemSample(at=h.tick(), free_space=10 * 2**30 + 1000)), fx.PublishState)


def test_startup_volume_is_applied_once() -> None:
    h = Harness(startup_volume=80)
    h.feed(Started(at=1.0, boot_time=0.0, seed=1))
    out = h.feed(LinkUp(at=2.0, link="mpd"))
    assert h.mpd_call(out).ops == [["setvol", 80]]
    h.feed(LinkDown(at=3.0, link="mpd", reason="x"))
    h.feed(TimerFired(at=4.0, name="retry:mpd"))
    assert not h.only(h.feed(LinkUp(at=5.0, link="mpd")), fx.MpdCall)


def test_chart_lint_rejects_unknown_states_and_callbacks() -> None:
    doc = json.loads(json.dumps(load_chart().source))
    doc["regions"]["player"]["transitions"][0]["dest"] = "dancing"
    with pytest.raises(ChartError, match="dancing"):
        parse_chart(doc)
    doc = json.loads(json.dumps(load_chart().source))
    doc["regions"]["player"]["transitions"][0]["after"] = ["no_such_callback"]

    class Model:
        pass

    with pytest.raises(ChartError, match="no_such_callback"):
        build_machine(parse_chart(doc), Model())
    doc["regions"]["player"]["transitions"][0]["sourcee"] = "x"
    with pytest.raises(ChartError, match="schema"):
        parse_chart(doc)


def test_retained_commands_never_run() -> None:
    h = Harness()
    h.start()
    out = h.feed(MqttMessage(at=h.tick(), payload=b'{"command":"play","command_id":"r"}', retained=True))
    assert not h.only(out, fx.MpdCall) and not h.only(out, fx.Respond)


def test_a_reboot_that_never_happens_is_reported() -> None:
    h = Harness(reboot_overdue_seconds=60)
    h.start()
    op = h.only(h.command("reboot"), fx.StartOperation)[0]
    out = h.feed(OperationDone(at=h.tick(), op_id=op.op_id, ok=True))
    timer = h.only(out, fx.StartTimer)[0]
    assert (timer.name, timer.delay) == ("reboot_overdue", 60)
    assert h.core.player_state() == "rebooting"
    out = h.feed(TimerFired(at=h.tick(60), name="reboot_overdue"))
    assert h.core.player_state() == "stopped"
    assert "did not reboot" in h.only(out, fx.PublishState)[0].state["last_error"]
