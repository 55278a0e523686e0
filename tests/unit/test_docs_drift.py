"""The generated parts of the protocol docs must match the schemas and the code they come from."""

from __future__ import annotations

from typing import Any

import jsonschema

from amora import schemas
from amora.core.agent import HTTP_STATUS
from tools import gen_docs


def test_generated_docs_are_up_to_date() -> None:
    stale = [str(p.relative_to(gen_docs.ROOT)) for p in gen_docs.stale()]
    assert not stale, f"out of date: {stale}; run `python -m tools.gen_docs`"


def test_every_command_and_error_code_is_documented() -> None:
    text = gen_docs.MQTT_DOC.read_text(encoding="utf-8")
    for name in schemas.command_names():
        assert f"### `{name}`" in text
    codes = schemas.load("response")["properties"]["error"]["oneOf"][1]["properties"]["code"]["enum"]
    for code in codes:
        assert code in HTTP_STATUS, f"{code} has no direct method status"
        assert f"| `{code}` |" in text


def test_examples_match_the_schemas() -> None:
    for name, (request, response) in gen_docs.examples().items():
        assert not schemas.issues("command", request), name
        assert not schemas.command_params_issues(name, request["params"]), name
        assert not schemas.issues("response", response), (name, response)
        assert response["status"] == "ok", (name, response)
    assert not schemas.issues("state", gen_docs.example_state())


def test_asyncapi_document_is_consistent() -> None:
    doc = gen_docs.load_asyncapi(gen_docs.ASYNCAPI.read_text(encoding="utf-8"))
    assert doc["asyncapi"] == "3.0.0"
    channels = doc["channels"]
    assert {c["address"] for c in channels.values()} == {
        f"amora/devices/{{device_id}}/{kind}" for kind in ("commands", "responses", "state", "connection")
    }
    messages = doc["components"]["messages"]
    assert {f"command.{n}" for n in schemas.command_names()} <= set(messages)

    # every $ref resolves inside the document
    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc):
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
    # the embedded payload schemas accept their own examples and refuse a wrong command name
    for message in messages.values():
        for example in message.get("examples", []):
            jsonschema.validate(example["payload"], message["payload"])
    play = messages["command.play"]["payload"]
    bad = {"command": "pause", "command_id": "x", "params": {}}
    assert not jsonschema.Draft202012Validator(play).is_valid(bad)
