"""Regenerate the schema-derived parts of the protocol docs.

    python -m tools.gen_docs          # rewrite the generated blocks and docs/asyncapi.yaml
    python -m tools.gen_docs --check  # exit 1 (and say what) if any of them is out of date

Generated blocks in docs/mqtt.md sit between `<!-- BEGIN GENERATED: NAME -->` and
`<!-- END GENERATED: NAME -->`; everything else on the page is hand-written. Blocks:
  errors    the error codes (schemas/response.schema.json) with the direct-method HTTP statuses
  commands  every command of schemas/commands.schema.json: description, params, when refused,
            an example request and the response the real core gives to it
  state     an example state document (schemas/state.schema.json), as the real core builds it

The example responses are not written by hand: each request is fed to a fresh `AgentCore` whose
MPD answers come from a small in-process stand-in (`_FakeMpd`), so the docs show what the code
actually answers. docs/asyncapi.yaml is an AsyncAPI 3.0 description of the MQTT interface that
embeds the JSON Schemas. It is written as JSON (which is valid YAML) so that no YAML library is
needed to produce or to read it.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from amora import schemas
from amora.core import effects as fx
from amora.core.agent import GUARD_ERRORS, HTTP_STATUS, AgentCore
from amora.core.chart import load_chart
from amora.core.events import Event, LinkUp, MpdResult, MpdSnapshot, MqttMessage, Started
from amora.core.settings import CoreSettings

ROOT = Path(__file__).resolve().parent.parent
MQTT_DOC = ROOT / "docs" / "mqtt.md"
ASYNCAPI = ROOT / "docs" / "asyncapi.yaml"

# Bump when the MQTT interface changes in a way clients notice.
INTERFACE_VERSION = "1.0.0"
DEVICE = "amora-player-001"
PREFIX = "amora/devices"
T0 = 1735689600.0  # 2025-01-01T00:00:00Z: fixed, so the output does not change between runs

# Example params, where a command has any worth showing; each is checked against the schema.
EXAMPLE_PARAMS: dict[str, dict[str, Any]] = {
    "play": {"position": 0},
    "seek": {"position": 20.5},
    "setVolume": {"volume": 50},
    "volumeStep": {"step": -5},
    "setRandom": {"enabled": True},
    "setRepeat": {"enabled": True},
    "setSingle": {"enabled": False},
    "setConsume": {"enabled": False},
    "loadPlaylist": {"playlist": "relaxing"},
    "selectOutput": {"output": "Speaker B"},
    "enableOutput": {"output": "Speaker B"},
    "disableOutput": {"output": 1},
    "syncContent": {"force": False},
    "reboot": {"force": False},
}

# Refusals the statechart cannot show (they come from effect callbacks, not guards).
EXTRA_REFUSALS: dict[str, list[str]] = {
    "syncContent": ["`busy` (409) while a sync is already running"],
}
NOTES: dict[str, str] = {
    "reboot": 'With `dev_mode` on the device is not rebooted: the answer is `{"rebooting": false, '
    '"dev_mode": true}`. Otherwise the response and the `rebooting` state are flushed to the broker '
    "before the reboot command runs.",
    "syncContent": "The response only says the sync was accepted; follow `sync` in the state document "
    "for progress and outcome (docs/content-sync.md).",
    "getState": "The result is the whole state document (the same one published on the state topic).",
}

# What MPD looks like in every example: playing the first track of "relaxing".
_STATUS = {
    "state": "play",
    "volume": "80",
    "repeat": "0",
    "random": "0",
    "single": "0",
    "consume": "0",
    "playlist": "3",
    "playlistlength": "4",
    "song": "0",
    "songid": "1",
    "elapsed": "12.000",
    "duration": "30.000",
}
_SONG = {
    "file": "Calm Waters/01 Relaxing Piano.flac",
    "title": "Relaxing Piano",
    "artist": "Amora Test Ensemble",
    "album": "Calm Waters",
    "id": "1",
}
_OUTPUTS = [
    {"outputid": "0", "outputname": "Speaker A", "plugin": "null", "outputenabled": "1"},
    {"outputid": "1", "outputname": "Speaker B", "plugin": "null", "outputenabled": "0"},
]
_PLAYLISTS = [{"playlist": "focus"}, {"playlist": "morning"}, {"playlist": "relaxing"}]


# --------------------------------------------------------------------------------------------------
# Running the real core on the examples


class _FakeMpd:
    """Just enough of MPD's behaviour for the example responses to be the real ones."""

    def __init__(self) -> None:
        self.status = dict(_STATUS)

    def run(self, ops: list[list[Any]]) -> list[Any]:
        results: list[Any] = []
        for op in ops:
            name, args = op[0], op[1:]
            s = self.status
            if name == "play":
                s["state"] = "play"
                if args:
                    s["song"] = str(args[0])
            elif name == "pause":
                s["state"] = "pause" if (not args or args[0]) else "play"
            elif name == "stop":
                s["state"] = "stop"
            elif name in ("next", "previous"):
                step = 1 if name == "next" else -1
                s["song"] = str(max(0, int(s.get("song", "0")) + step))
                s["elapsed"] = "0.000"
            elif name == "seekcur":
                s["elapsed"] = f"{float(args[0]):.3f}"
            elif name == "setvol":
                s["volume"] = str(args[0])
            elif name in ("random", "repeat", "single", "consume"):
                s[name] = str(args[0])
            elif name == "clear":
                s.update(playlistlength="0", playlist=str(int(s["playlist"]) + 1), state="stop")
            elif name == "load":
                s.update(playlistlength="4", playlist=str(int(s["playlist"]) + 1))
            results.append(dict(s) if name == "status" else None)
        return results


def _run_example(command: str, params: dict[str, Any], *, command_id: str) -> dict[str, Any]:
    """The response body the core gives to one MQTT command, MPD answering as _FakeMpd does."""
    core = AgentCore(
        CoreSettings(
            device_id=DEVICE,
            version=INTERFACE_VERSION,
            sync_configured=True,  # the example shows an accepted sync
            reboot_guard_seconds=0,
        )
    )
    mpd = _FakeMpd()
    clock = iter(T0 + i * 0.004 for i in range(1000))
    responses: list[dict[str, Any]] = []

    def feed(event: Event) -> None:
        pending = core.handle(event) + core.drain()
        for effect in pending:
            if isinstance(effect, fx.Respond):
                responses.append(effect.body)
            elif isinstance(effect, fx.MpdCall):
                ops = [op for op in effect.ops if op != ["snapshot"]] or [["status"]]
                feed(MpdResult(at=next(clock), call_id=effect.call_id, results=mpd.run(ops)))

    feed(Started(at=next(clock), boot_time=T0 - 3600, seed=1, version=INTERFACE_VERSION, free_space=10 << 30))
    feed(LinkUp(at=next(clock), link="mqtt"))
    feed(LinkUp(at=next(clock), link="mpd"))
    feed(
        MpdSnapshot(at=next(clock), status=dict(_STATUS), song=_SONG, outputs=_OUTPUTS, playlists=_PLAYLISTS)
    )
    envelope = {"command": command, "command_id": command_id, "params": params, "timestamp": next(clock)}
    feed(MqttMessage(at=next(clock), payload=json.dumps(envelope).encode()))
    if len(responses) != 1:
        raise RuntimeError(f"example {command}: expected one response, got {len(responses)}")
    return responses[0]


def example_params(command: str) -> dict[str, Any]:
    params = copy.deepcopy(EXAMPLE_PARAMS.get(command, {}))
    if not params:
        params = _params_from_schema(schemas.load("commands")["$defs"][command])
    issues = schemas.command_params_issues(command, params)
    if issues:
        raise RuntimeError(f"example params of {command} break its schema: {issues[0]}")
    return params


def _params_from_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Required params only, with a plausible value (for commands added without an example)."""
    out: dict[str, Any] = {}
    for key in schema.get("required", []):
        prop = schema["properties"][key]
        prop = prop.get("oneOf", [prop])[0] if "type" not in prop else prop
        if "default" in prop:
            out[key] = prop["default"]
        elif prop.get("type") in ("integer", "number"):
            out[key] = prop.get("minimum", 0)
        elif prop.get("type") == "boolean":
            out[key] = True
        else:
            out[key] = "example"
    return out


def examples() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """command -> (request envelope, response body)."""
    out = {}
    for i, name in enumerate(schemas.command_names(), start=1):
        command_id = f"cmd-{i:03d}"
        params = example_params(name)
        response = _run_example(name, params, command_id=command_id)
        request = {"command": name, "command_id": command_id, "params": params, "timestamp": T0}
        out[name] = (request, response)
    return out


def example_state() -> dict[str, Any]:
    _, response = examples()["getState"]
    state: dict[str, Any] = response["result"]
    return state


# --------------------------------------------------------------------------------------------------
# Markdown


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _type(schema: dict[str, Any]) -> str:
    if "oneOf" in schema:
        return " or ".join(_type(s) for s in schema["oneOf"])
    kind = schema.get("type", "any")
    text = " or ".join(kind) if isinstance(kind, list) else str(kind)
    limits = []
    if "minimum" in schema:
        limits.append(f">= {schema['minimum']}")
    if "maximum" in schema:
        limits.append(f"<= {schema['maximum']}")
    if "minLength" in schema or "maxLength" in schema:
        limits.append(f"{schema.get('minLength', 0)}-{schema.get('maxLength', '…')} chars")
    if "pattern" in schema:
        limits.append("no `/` or control characters" if "/" in schema["pattern"] else "pattern")
    if "not" in schema and "enum" in schema["not"]:
        limits.append("not " + ", ".join(f"`{v}`" for v in schema["not"]["enum"]))
    return text + (f" ({', '.join(limits)})" if limits else "")


def _json_block(doc: Any) -> list[str]:
    return ["```json", json.dumps(doc, indent=2, ensure_ascii=False), "```"]


def _refusals(command: str) -> list[str]:
    """When the core refuses a command, read from the statechart and the guard table."""
    chart = load_chart()
    transitions = [t for t in chart.transitions if t.trigger == command and t.region == "player"]
    states = chart.regions["player"]
    allowed = [s for s in states if any(s in t.sources for t in transitions)]
    out = []
    missing = [s for s in states if s not in allowed]
    if missing:
        out.append(f"`not_possible` (409) while the player is {', '.join(missing)}")
    seen: set[str] = set()
    for t in transitions:
        for guard in t.conditions:
            if guard not in GUARD_ERRORS or guard == "dev_mode" or guard in seen:
                continue
            seen.add(guard)
            code, message = GUARD_ERRORS[guard]
            where = [
                s
                for s in allowed
                if any(g == guard for u in transitions if s in u.sources for g in u.conditions)
            ]
            scope = "" if where == allowed else f" (while {', '.join(where)})"
            out.append(f"`{code}` ({HTTP_STATUS[code]}){scope}: {message}")
    return out + EXTRA_REFUSALS.get(command, [])


def commands_block() -> str:
    defs = schemas.load("commands")["$defs"]
    ex = examples()
    lines = ["| Command | What it does |", "|---|---|"]
    for name in schemas.command_names():
        lines.append(f"| [`{name}`](#{name.lower()}) | {_cell(defs[name].get('description', ''))} |")
    for name in schemas.command_names():
        schema = defs[name]
        request, response = ex[name]
        lines += ["", f"### `{name}`", "", schema.get("description", "")]
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        lines.append("")
        if props:
            lines += ["| Param | Type | Required | Default | Meaning |", "|---|---|---|---|---|"]
            for key, prop in props.items():
                default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
                lines.append(
                    f"| `{key}` | {_cell(_type(prop))} | {'yes' if key in required else 'no'} "
                    f"| {default} | {_cell(prop.get('description', ''))} |"
                )
        else:
            lines.append("No params (`params` may be omitted or `{}`).")
        refusals = _refusals(name)
        if refusals:
            lines += ["", "Refused with " + "; ".join(refusals) + "."]
        if name in NOTES:
            lines += ["", NOTES[name]]
        compact = json.dumps(request, separators=(",", ":"), ensure_ascii=False)
        lines += ["", "Request:", "", "```json", compact, "```", "", "Response:", "", *_json_block(response)]
        payload = json.dumps(request["params"], separators=(",", ":"))
        lines += [
            "",
            "As a direct method: "
            f"`az iot hub invoke-device-method --hub-name HUB --device-id DEVICE --method-name {name}"
            + (f" --method-payload '{payload}'`" if request["params"] else "`"),
        ]
    return "\n".join(lines)


def errors_block() -> str:
    error = next(
        s for s in schemas.load("response")["properties"]["error"]["oneOf"] if s.get("type") != "null"
    )
    code_schema = error["properties"]["code"]
    meanings = dict(re.findall(r"(\w+): (.*?)(?=; \w+: |$)", code_schema.get("description", ""), flags=re.S))
    lines = ["| `error.code` | Direct method status | Meaning |", "|---|---|---|"]
    for code in code_schema["enum"]:
        status = HTTP_STATUS.get(code)
        if status is None:
            raise RuntimeError(f"error code {code!r} has no HTTP status in amora.core.agent.HTTP_STATUS")
        lines.append(f"| `{code}` | {status} | {_cell(meanings.get(code, ''))} |")
    return "\n".join(lines)


def state_block() -> str:
    return "\n".join(_json_block(example_state()))


BLOCKS: dict[str, Callable[[], str]] = {
    "errors": errors_block,
    "commands": commands_block,
    "state": state_block,
}


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- BEGIN GENERATED: {name} -->", f"<!-- END GENERATED: {name} -->"


def render_blocks(text: str, blocks: dict[str, Callable[[], str]]) -> str:
    """`text` with every block named in `blocks` regenerated; a block without markers is an error."""
    for name, make in blocks.items():
        begin, end = _markers(name)
        start, stop = text.find(begin), text.find(end)
        if start < 0 or stop < start:
            raise RuntimeError(f"markers for the generated block {name!r} are missing")
        body = "\n".join(
            ["<!-- generated by tools/gen_docs.py from schemas/: do not edit by hand -->", make()]
        )
        text = text[: start + len(begin)] + "\n" + body + "\n" + text[stop:]
    return text


# --------------------------------------------------------------------------------------------------
# AsyncAPI


def _bare(schema: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(schema)
    for key in ("$schema", "$id"):
        out.pop(key, None)
    return out


def _command_message(
    name: str, params: dict[str, Any], example: tuple[dict[str, Any], Any]
) -> dict[str, Any]:
    envelope = _bare(schemas.load("command"))
    envelope["title"] = f"{name} command"
    envelope["properties"]["command"] = {"const": name}
    envelope["properties"]["params"] = _bare(params)
    envelope.pop("description", None)
    request, _ = example
    return {
        "name": name,
        "title": name,
        "summary": params.get("description", ""),
        "contentType": "application/json",
        "correlationId": {"$ref": "#/components/correlationIds/commandId"},
        "payload": envelope,
        "examples": [{"name": name, "payload": request}],
    }


def asyncapi() -> dict[str, Any]:
    defs = schemas.load("commands")["$defs"]
    ex = examples()
    names = schemas.command_names()
    messages: dict[str, Any] = {f"command.{n}": _command_message(n, defs[n], ex[n]) for n in names}
    response_schema = _bare(schemas.load("response"))
    messages["response"] = {
        "name": "response",
        "title": "Command response",
        "summary": response_schema.get("description", ""),
        "contentType": "application/json",
        "correlationId": {"$ref": "#/components/correlationIds/commandId"},
        "payload": response_schema,
        "examples": [{"name": n, "payload": ex[n][1]} for n in ("setVolume", "ping")],
    }
    state_schema = _bare(schemas.load("state"))
    messages["state"] = {
        "name": "state",
        "title": "Device state",
        "summary": state_schema.get("description", ""),
        "contentType": "application/json",
        "payload": state_schema,
        "examples": [{"name": "playing", "payload": ex["getState"][1]["result"]}],
    }
    messages["connection"] = {
        "name": "connection",
        "title": "Availability",
        "summary": 'Plain text "online" (published by the agent on every connect) or "offline" (published '
        "on a clean shutdown, and by the broker as the Last Will when the agent vanishes). Retained.",
        "contentType": "text/plain",
        "payload": {"type": "string", "enum": ["online", "offline"]},
    }
    device_param = {
        "description": "the device id: broker.device_id in the agent's config.json, else device.id",
        "examples": [DEVICE],
    }

    def channel(kind: str, message_names: list[str], description: str) -> dict[str, Any]:
        return {
            "address": f"{PREFIX}/{{device_id}}/{kind}",
            "description": description,
            "parameters": {"device_id": device_param},
            "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in message_names},
        }

    command_ids = [f"command.{n}" for n in names]
    channels = {
        "commands": channel(
            "commands",
            command_ids,
            "Commands to the device. QoS 1, never retained: a retained command is not run, and the "
            "agent clears it.",
        ),
        "responses": channel(
            "responses", ["response"], "One response per command that carried a readable command_id. QoS 1."
        ),
        "state": channel(
            "state",
            ["state"],
            "The device's state, retained, on every change (bursts coalesced) and in full after every "
            "(re)connect. QoS 1.",
        ),
        "connection": channel("connection", ["connection"], "Availability, retained. QoS 1."),
    }

    def binding(retain: bool) -> dict[str, Any]:
        return {"mqtt": {"qos": 1, "retain": retain, "bindingVersion": "0.2.0"}}

    operations = {
        "sendCommand": {
            "action": "send",
            "title": "Send a command",
            "summary": "A controller sends a command; the device answers on the responses channel.",
            "channel": {"$ref": "#/channels/commands"},
            "messages": [{"$ref": f"#/channels/commands/messages/{m}"} for m in command_ids],
            "bindings": binding(False),
            "reply": {
                "channel": {"$ref": "#/channels/responses"},
                "messages": [{"$ref": "#/channels/responses/messages/response"}],
            },
        },
        "receiveResponse": {
            "action": "receive",
            "title": "Receive command responses",
            "channel": {"$ref": "#/channels/responses"},
            "messages": [{"$ref": "#/channels/responses/messages/response"}],
            "bindings": binding(False),
        },
        "receiveState": {
            "action": "receive",
            "title": "Receive the device state",
            "channel": {"$ref": "#/channels/state"},
            "messages": [{"$ref": "#/channels/state/messages/state"}],
            "bindings": binding(True),
        },
        "receiveConnection": {
            "action": "receive",
            "title": "Receive availability",
            "channel": {"$ref": "#/channels/connection"},
            "messages": [{"$ref": "#/channels/connection/messages/connection"}],
            "bindings": binding(True),
        },
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "AmoraOS device agent: MQTT interface",
            "version": INTERFACE_VERSION,
            "description": "Control an AmoraOS music player (MPD) through an MQTT broker. The operations "
            "are described from a controller's point of view. The same command vocabulary serves Azure "
            "IoT Hub direct methods (docs/iothub.md). Payload schemas are JSON Schema (draft 2020-12 "
            "files under schemas/, embedded here). Generated by tools/gen_docs.py: do not edit by hand.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "localhost:1883",
                "protocol": "mqtt",
                "description": "a broker on this machine (tools/run-local prints the real port)",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "correlationIds": {
                "commandId": {
                    "description": "the request's command_id, echoed in its response",
                    "location": "$message.payload#/command_id",
                }
            },
        },
    }


def asyncapi_text() -> str:
    header = (
        "# AsyncAPI 3.0 description of the AmoraOS agent's MQTT interface.\n"
        "# Generated by tools/gen_docs.py from schemas/: do not edit by hand.\n"
        "# Written as JSON, which is valid YAML.\n"
    )
    return header + json.dumps(asyncapi(), indent=2, ensure_ascii=False) + "\n"


def load_asyncapi(text: str) -> Any:
    """Read docs/asyncapi.yaml back (it is JSON after its comment lines)."""
    return json.loads("\n".join(line for line in text.splitlines() if not line.startswith("#")))


# --------------------------------------------------------------------------------------------------


def outputs() -> Iterator[tuple[Path, str]]:
    """(file, the content it should have)."""
    yield MQTT_DOC, render_blocks(MQTT_DOC.read_text(encoding="utf-8"), BLOCKS)
    yield ASYNCAPI, asyncapi_text()


def stale() -> list[Path]:
    return [path for path, text in outputs() if not path.exists() or path.read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if anything is out of date")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale()
        for path in out_of_date:
            print(f"{path.relative_to(ROOT)} is out of date: run python -m tools.gen_docs", file=sys.stderr)
        return 1 if out_of_date else 0
    for path, text in outputs():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
