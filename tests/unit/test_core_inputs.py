"""Malformed, oversized, stale and repeated inputs: clear errors, nothing changes, nothing crashes."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amora import schemas
from amora.core import effects as fx
from amora.core.events import MqttMessage
from tests.unit.harness import STATUS_PLAYING, Harness


def started() -> Harness:
    h = Harness(max_payload_bytes=2048)
    h.start(status=STATUS_PLAYING)
    return h


def test_duplicate_command_id_answers_again_without_running_twice() -> None:
    h = started()
    call = h.mpd_call(h.command("next", command_id="dup"))
    first = h.response(h.result(call.call_id, None, STATUS_PLAYING))
    out = h.command("next", command_id="dup")
    assert not h.only(out, fx.MpdCall)
    assert h.response(out) == first


def test_duplicate_while_in_flight_is_answered_when_the_first_finishes() -> None:
    h = started()
    call = h.mpd_call(h.command("next", command_id="dup"))
    out = h.command("next", command_id="dup")
    assert out == [] or not h.only(out, fx.Respond)
    out = h.result(call.call_id, None, STATUS_PLAYING)
    responses = h.only(out, fx.Respond)
    assert len(responses) == 2 and responses[0].body == responses[1].body


def test_dedupe_window_is_bounded() -> None:
    h = Harness(dedupe_window=3)
    h.start()
    for i in range(5):
        h.command("ping", command_id=f"p{i}")
    assert len(h.core._responses) == 3


def test_invalid_json_with_readable_command_id() -> None:
    h = started()
    body = h.response(h.feed(MqttMessage(at=h.tick(), payload=b'{"command_id": "x1", "command": ')))
    assert body["command_id"] == "x1" and body["error"]["code"] == "invalid_json"


def test_invalid_json_without_command_id_is_logged_only() -> None:
    h = started()
    out = h.feed(MqttMessage(at=h.tick(), payload=b"\xff\xfe garbage"))
    assert not h.only(out, fx.Respond)
    assert h.only(out, fx.Log)


def test_oversized_payload() -> None:
    h = started()
    payload = b'{"command_id": "big", "command": "play", "params": {"x": "' + b"a" * 5000 + b'"}}'
    body = h.response(h.feed(MqttMessage(at=h.tick(), payload=payload)))
    assert body["error"]["code"] == "too_large" and body["command_id"] == "big"


def test_envelope_errors_name_the_field() -> None:
    h = started()
    body = h.response(h.feed(MqttMessage(at=h.tick(), payload=b'{"command_id": "e1"}')))
    assert body["error"]["code"] == "invalid_command" and body["error"]["field"] == "/command"
    body = h.response(
        h.feed(MqttMessage(at=h.tick(), payload=b'{"command_id": "e2", "command": "play", "params": [1]}'))
    )
    assert body["error"]["field"] == "/params"
    body = h.response(
        h.feed(MqttMessage(at=h.tick(), payload=b'{"command_id": "e3", "command": "play", "extra": 1}'))
    )
    assert body["error"]["field"] == "/extra"


def test_the_guides_example_runs_even_with_an_old_timestamp() -> None:
    h = started()
    payload = b'{"command":"play","command_id":"test-1","params":{},"timestamp":1620000000}'
    out = h.feed(MqttMessage(at=h.tick(), payload=payload))
    assert h.mpd_call(out).ops == [["play"], ["status"]]


def test_stale_commands_are_refused_when_configured() -> None:
    h = Harness(max_command_age=30)
    h.now = 1_700_000_000.0
    h.start()
    payload = b'{"command":"play","command_id":"old","params":{},"timestamp":1620000000}'
    body = h.response(h.feed(MqttMessage(at=h.tick(), payload=payload)))
    assert body["error"]["code"] == "stale_command" and body["error"]["field"] == "/timestamp"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
commands = st.sampled_from([*schemas.command_names(), "", "nope", "PLAY"])
envelopes = st.fixed_dictionaries(
    {"command_id": st.text(min_size=1, max_size=40), "command": commands | json_values},
    optional={
        "params": json_values
        | st.dictionaries(
            st.sampled_from(["volume", "position", "playlist", "output", "enabled", "step", "force"]),
            json_values,
            max_size=3,
        ),
        "timestamp": json_values,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes)
def test_any_envelope_is_answered_exactly_once_and_never_crashes(envelope: dict[str, Any]) -> None:
    h = started()
    out = h.feed(MqttMessage(at=h.tick(), payload=json.dumps(envelope).encode()))
    assert not h.only(out, fx.Log) or all(e.level != "error" for e in h.only(out, fx.Log))
    calls = h.only(out, fx.MpdCall)
    if calls:  # accepted: the answer comes with MPD's result
        out = h.result(calls[0].call_id, *([None] * (len(calls[0].ops) - 1)), STATUS_PLAYING)
    responses = h.only(out, fx.Respond)
    assert len(responses) == 1
    body = responses[0].body
    assert body["command_id"] == envelope["command_id"]
    assert schemas.issues("response", body) == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_crash(payload: bytes) -> None:
    h = started()
    out = h.feed(MqttMessage(at=h.tick(), payload=payload))
    assert all(e.level != "error" for e in h.only(out, fx.Log))
    assert h.core.configuration()["player"] == "playing"


def test_deeply_nested_json_does_not_crash() -> None:
    h = started()
    payload = b'{"command_id":"deep","command":"play","params":' + b"[" * 100000 + b"]" * 100000 + b"}"
    h2 = Harness(max_payload_bytes=10**6)
    h2.start()
    out = h2.feed(MqttMessage(at=h2.tick(), payload=payload))
    assert h2.response(out)["command_id"] == "deep"
    assert h.core.configuration()["player"] == "playing"
