"""The JSON Schemas in `schemas/`, loaded once and compiled into validators.

The schema files are the contract; code never restates them. Errors come back as `SchemaIssue`s
(JSON pointer of the offending field + a sentence) so every caller reports them the same way.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource


def schema_dir() -> Path:
    installed = Path(__file__).parent / "_data" / "schemas"
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent / "schemas"


def statechart_dir() -> Path:
    installed = Path(__file__).parent / "_data" / "statecharts"
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent / "statecharts"


@dataclass(frozen=True, slots=True)
class SchemaIssue:
    field: str  # JSON pointer, "" for the whole document
    message: str

    def __str__(self) -> str:
        return f"{self.field or '/'}: {self.message}"


@functools.cache
def load(name: str) -> dict[str, Any]:
    """`name` without the `.schema.json` suffix, e.g. "config"."""
    doc: dict[str, Any] = json.loads((schema_dir() / f"{name}.schema.json").read_text())
    return doc


@functools.cache
def _registry() -> Registry:
    resources = []
    for path in sorted(schema_dir().glob("*.schema.json")):
        doc = json.loads(path.read_text())
        if "$id" in doc:
            resources.append((doc["$id"], Resource.from_contents(doc)))
    return Registry().with_resources(resources)


@functools.cache
def validator(name: str, pointer: str = "") -> Draft202012Validator:
    """A validator for schema `name`, or for the sub-schema at `pointer` (e.g. "/$defs/play")."""
    root = load(name)
    schema: Any = root
    if pointer:
        for part in [p for p in pointer.split("/") if p]:
            schema = schema[part]
        # the sub-schema's "#/..." refs point into its document: make them absolute (a "$ref" to
        # the whole pointer would work too, but triples the cost of every validation)
        schema = {**_absolute_refs(schema, root.get("$id", "")), "$schema": root.get("$schema")}
    return Draft202012Validator(
        schema, registry=_registry(), format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def _absolute_refs(node: Any, base: str) -> Any:
    if isinstance(node, dict):
        return {
            k: (
                base + v
                if k == "$ref" and isinstance(v, str) and v.startswith("#")
                else _absolute_refs(v, base)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_absolute_refs(v, base) for v in node]
    return node


def _pointer(error: ValidationError) -> str:
    return "".join(f"/{p}" for p in error.absolute_path)


def _describe(error: ValidationError) -> str:
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"unknown field(s) {', '.join(map(repr, extra))}" if extra else error.message
    if error.validator == "required":
        return error.message
    if error.validator == "type":
        return f"expected {error.validator_value}, got {type(error.instance).__name__}"
    message = error.message
    return message if len(message) <= 200 else message[:197] + "..."


def issues(name: str, instance: Any, pointer: str = "") -> list[SchemaIssue]:
    """All problems of `instance` against the schema, most specific first, at most 20."""
    found = sorted(validator(name, pointer).iter_errors(instance), key=lambda e: (-len(e.path), str(e.path)))
    out: list[SchemaIssue] = []
    for error in found[:20]:
        field = _pointer(error)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            if extra:
                field = f"{field}/{extra[0]}"
        if error.validator == "required" and isinstance(error.validator_value, list):
            missing = [
                k
                for k in error.validator_value
                if isinstance(error.instance, dict) and k not in error.instance
            ]
            if missing:
                field = f"{field}/{missing[0]}"
        out.append(SchemaIssue(field, _describe(error)))
    return out


def command_names() -> list[str]:
    return list(load("commands")["$defs"])


def command_params_issues(command: str, params: Any) -> list[SchemaIssue]:
    return issues("commands", params, f"/$defs/{command}")
