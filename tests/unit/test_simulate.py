"""tools/simulate: golden traces, virtual time, recorded traces, the command line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from amora import schemas
from amora.core.events import LinkUp, MqttMessage, Started, TimerFired, event_to_json
from amora.core.settings import BackoffPolicy, CoreSettings
from amora.simulate import (
    DRAIN_LINE,
    Header,
    TraceError,
    describe_difference,
    effect_lines,
    expected_path,
    load_trace,
    main,
    read_trace,
    replay,
    settings_from_json,
    settings_to_json,
    trace_header,
)

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
TRACES = sorted(p for p in GOLDEN.glob("*.jsonl") if not p.name.endswith(".expected.jsonl"))


def lines(*objs: dict[str, Any]) -> list[str]:
    return [json.dumps(o) for o in objs]


def golden_effects() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for trace in TRACES:
        out += [json.loads(line) for line in expected_path(trace).read_text().splitlines()]
    return out


@pytest.mark.parametrize("trace", TRACES, ids=[p.stem for p in TRACES])
def test_golden_trace_replays_to_its_expected_effects(trace: Path) -> None:
    expected = expected_path(trace).read_text().splitlines()
    actual = effect_lines(replay(load_trace(trace)))
    difference = describe_difference(expected, actual)
    assert not difference, (
        f"{difference}\nif the core changed on purpose: tools/simulate {trace} --write-expected"
    )


@pytest.mark.parametrize("trace", TRACES, ids=[p.stem for p in TRACES])
def test_golden_trace_lines_match_the_trace_schema(trace: Path) -> None:
    for number, line in enumerate(trace.read_text().splitlines(), 1):
        assert schemas.issues("trace", json.loads(line)) == [], f"{trace.name}:{number}"


def test_golden_traces_cover_every_command_and_error() -> None:
    effects = golden_effects()
    bodies = [e["body"] for e in effects if e["type"] == "respond"]
    ok = {b["command"] for b in bodies if b["status"] == "ok"}
    assert set(schemas.command_names()) <= ok
    codes = {b["error"]["code"] for b in bodies if b["status"] == "error"}
    reachable = {
        "invalid_json",
        "invalid_command",
        "too_large",
        "stale_command",
        "invalid_params",
        "unknown_command",
        "not_possible",
        "busy",
        "not_configured",
        "mpd_refused",
        "mpd_unavailable",
    }
    assert reachable <= codes, reachable - codes
    kinds = {e["type"] for e in effects}
    assert {"report_properties", "send_telemetry", "start_operation", "start_timer", "connect"} <= kinds


def test_replay_is_deterministic() -> None:
    trace = load_trace(GOLDEN / "link_flaps.jsonl")
    assert effect_lines(replay(trace)) == effect_lines(replay(trace))


def test_virtual_timers_replay_an_hour_of_backoff_in_milliseconds() -> None:
    header = {
        "type": "header",
        "links": {"mqtt": False},
        "settings": {"backoff": {"mqtt": {"initial_delay": 1, "max_delay": 60, "jitter": 0}}},
    }
    trace = list(
        read_trace(
            lines(
                header,
                {"type": "started", "at": 0.0},
                {"type": "link_available", "at": 3600.0, "link": "mqtt", "available": True},
                {"type": "tick", "at": 3700.0},
            )
        )
    )
    started = time.perf_counter()
    out = replay(trace)
    assert time.perf_counter() - started < 2.0
    delays = [e["delay"] for e in out if e["type"] == "start_timer" and e["name"] == "retry:mqtt"]
    assert delays[:8] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    connects = [e["at"] for e in out if e["type"] == "connect" and e["link"] == "mqtt"]
    # the first connect at start, then one per expiry: 1, 3, 7, 15, 31, 63, 123, 183, ...
    assert connects[:6] == [0.0, 1.0, 3.0, 7.0, 15.0, 31.0]
    online = [e for e in out if e["type"] == "publish_connection"]
    assert online and online[0]["at"] > 3600.0  # the first retry after the broker came back
    assert online[0]["at"] - 3600.0 <= 60.0


def test_until_stops_the_replay_and_runs_timers_up_to_it() -> None:
    trace = list(
        read_trace(
            lines(
                {"type": "header", "links": {"mqtt": False}},
                {"type": "started", "at": 0.0, "seed": 3},
                {"type": "tick", "at": 10_000.0},
            )
        )
    )
    out = replay(trace, until=5.0)
    assert out and max(e["at"] for e in out) <= 5.0
    assert any(e["type"] == "connect" and e["at"] > 0 for e in out)


def test_show_state_prints_the_configuration_after_each_input() -> None:
    trace = list(
        read_trace(lines({"type": "started", "at": 1.0}, {"type": "link_up", "at": 2.0, "link": "mqtt"}))
    )
    states = [e for e in replay(trace, show_state=True) if e["type"] == "configuration"]
    assert [s["after"] for s in states] == ["started", "link_up:mqtt"]
    assert states[-1]["configuration"]["mqtt"] == "online"
    assert states[0]["configuration"] == {
        "player": "stopped",
        "mqtt": "connecting",
        "mpd": "connecting",
        "iothub": "offline",
    }


def _recorded_trace(*events: Any, drains: list[int]) -> list[str]:
    settings = CoreSettings(device_id="rec", backoff={"mqtt": BackoffPolicy(jitter=0)})
    out = [json.dumps(trace_header(settings, agent_version="t"))]
    for i, event in enumerate(events):
        out.append(json.dumps(event_to_json(event)))
        if i in drains:
            out.append(json.dumps(DRAIN_LINE))
    return out


def test_recorded_traces_drain_where_the_live_agent_did_and_bring_their_own_timers() -> None:
    cmd = b'{"command":"ping","command_id":"p1","params":{}}'
    cmd2 = b'{"command":"ping","command_id":"p2","params":{}}'
    events = [
        Started(at=1.0, seed=5),
        LinkUp(at=1.1, link="mqtt"),
        MqttMessage(at=2.0, payload=cmd),
        MqttMessage(at=2.0, payload=cmd2),
        TimerFired(at=3.0, name="retry:mqtt"),  # recorded: ignored by the core in this state
    ]
    # a burst: no drain between the two pings, as when the live queue was not empty
    out = replay(read_trace(_recorded_trace(*events, drains=[0, 1, 3, 4])))
    kinds = [e["type"] for e in out]
    assert kinds.count("publish_state") == 1  # link_online publishes; the burst changed nothing
    responds = [e["body"]["command_id"] for e in out if e["type"] == "respond"]
    assert responds == ["p1", "p2"]
    # no virtual timers in a recorded trace: nothing fires by itself
    down = [
        json.dumps(trace_header(CoreSettings(device_id="rec"))),
        json.dumps(event_to_json(Started(at=1.0))),
        json.dumps({"type": "link_down", "at": 1.5, "link": "mqtt", "reason": "x"}),
        json.dumps({"type": "tick", "at": 500.0}),
    ]
    assert [e["type"] for e in replay(read_trace(down))].count("connect") == 2


def test_drain_lines_do_nothing_with_automatic_drains() -> None:
    trace = lines({"type": "started", "at": 1.0}, DRAIN_LINE, DRAIN_LINE)
    assert replay(read_trace(trace)) == replay(read_trace(trace[:1]))


def test_settings_round_trip_and_typos_are_refused() -> None:
    settings = CoreSettings(
        device_id="d",
        dev_mode=True,
        max_command_age=5.0,
        backoff={"mpd": BackoffPolicy(initial_delay=0.25, jitter=0)},
        reboot_command=("true",),
        startup_volume=40,
    )
    doc = json.loads(json.dumps(settings_to_json(settings)))
    assert settings_from_json(doc) == settings
    with pytest.raises(TraceError, match="unknown settings: dev_mod"):
        settings_from_json({"dev_mod": True})
    assert settings_from_json({}).device_id == "amora-sim"


def test_bad_lines_name_their_line_number() -> None:
    with pytest.raises(TraceError, match="line 2: unknown line type 'bogus'"):
        list(read_trace(['{"type":"started","at":1}', '{"type":"bogus"}']))
    with pytest.raises(TraceError, match="line 1: link_up: 'at'"):
        list(read_trace(['{"type":"link_up","link":"mqtt"}']))
    with pytest.raises(TraceError, match="timers must be"):
        list(read_trace(['{"type":"header","timers":"real"}']))
    header = next(read_trace(['{"type":"header"}']))
    assert isinstance(header, Header) and header.timers == "virtual" and header.drains == "auto"


def test_difference_is_readable() -> None:
    expected = [
        '{"at":1,"type":"respond","body":{"status":"ok","result":{"volume":40}}}',
        '{"at":2,"type":"stop"}',
    ]
    actual = [
        '{"at":1,"type":"respond","body":{"status":"ok","result":{"volume":42}}}',
        '{"at":2,"type":"stop"}',
    ]
    text = describe_difference(expected, actual)
    assert "effect #1" in text and "/body/result/volume: expected 40, got 42" in text
    assert describe_difference(expected, expected) == ""
    assert "missing effect #2" in describe_difference(expected, expected[:1])


# ---------------------------------------------------------------------------- command line


def test_cli_expect_write_expected_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = GOLDEN / "reboot.jsonl"
    assert main([str(trace), "--expect", str(expected_path(trace)), "--quiet"]) == 0
    changed = tmp_path / "changed.expected.jsonl"
    golden = expected_path(trace).read_text().splitlines()
    golden[3] = golden[3].replace('"seq":1', '"seq":7')
    changed.write_text("\n".join(golden) + "\n")
    capsys.readouterr()
    assert main([str(trace), "--expect", str(changed), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "first difference in effect #4" in err and "/state/seq: expected 7, got 1" in err
    assert "--write-expected" in err
    assert main([str(trace), "--expect", str(changed), "--write-expected"]) == 0
    assert changed.read_text() == expected_path(trace).read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type":"nope"}\n')
    assert main([str(bad)]) == 2


def test_tools_simulate_script_runs(tmp_path: Path) -> None:
    trace = GOLDEN / "external_mpd.jsonl"
    result = subprocess.run(
        [str(ROOT / "tools" / "simulate"), str(trace), "--state"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert any(line["type"] == "configuration" for line in out)
    effects = [json.dumps(line, separators=(",", ":"), ensure_ascii=False) for line in out]
    assert effect_lines(json.loads(e) for e in effects) == expected_path(trace).read_text().splitlines()


def test_the_recorder_writes_a_header_drain_marks_and_no_secrets(tmp_path: Path) -> None:
    from amora.agent_main import RecordingCore, TraceRecorder

    secret = "pa55-w0rd-xyz"
    settings = CoreSettings(device_id="dev-rec", backoff={"mqtt": BackoffPolicy(jitter=0)})
    path = tmp_path / "t" / "trace.jsonl"
    recorder = TraceRecorder(path, [secret], settings)
    core = RecordingCore(settings, recorder)
    for event in (
        Started(at=1.0, seed=9),
        LinkUp(at=1.5, link="mqtt"),
        MqttMessage(at=2.0, payload=b'{"command":"ping","command_id":"' + secret.encode() + b'"}'),
    ):
        recorder(event)
        core.handle(event)
        core.drain()
    recorder.close()
    text = path.read_text()
    assert secret not in text
    items = load_trace(path)
    assert isinstance(items[0], Header) and items[0].settings == settings
    assert [json.loads(line)["type"] for line in text.splitlines()] == [
        "header",
        "started",
        "drain",
        "link_up",
        "drain",
        "mqtt_message",
        "drain",
    ]


def test_the_fast_serialisers_agree_with_the_core_ones() -> None:
    from amora.core import effects as fx
    from amora.core.events import event_to_json as to_json
    from amora.simulate import effect_json, parse_item

    effects: list[fx.Effect] = [
        fx.Respond(transport="method", request_id="r", status=404, body={"a": 1}),
        fx.StartTimer(name="x", delay=1.5),
        fx.Stop(),
        fx.MpdCall(call_id=3, ops=[["play"]]),
    ]
    for effect in effects:
        assert effect_json(effect, 2.0) == {"at": 2.0, **fx.effect_to_json(effect)}
    for item in load_trace(GOLDEN / "commands.jsonl")[1:]:
        assert parse_item(json.loads(json.dumps(to_json(item)))) == item  # type: ignore[arg-type]
