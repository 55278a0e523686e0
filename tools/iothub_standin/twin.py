"""The device twin as the hub keeps it: desired and reported documents, each with its own `$version`,
changed by JSON merge patches (RFC 7396: null deletes, objects merge recursively)."""

from __future__ import annotations

import copy
import json
import os
import threading
from pathlib import Path
from typing import Any

JSONObject = dict[str, Any]

# Limits the real service enforces; a device that breaks them gets 400 there, so it does here too.
MAX_DEPTH = 10
MAX_REPORTED_BYTES = 32 * 1024
MAX_DESIRED_BYTES = 32 * 1024
_FORBIDDEN_KEY_CHARS = frozenset(".$ ")


class TwinError(ValueError):
    """A patch the real service would refuse with 400."""


def merge_patch(target: JSONObject, patch: JSONObject) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            sub = target.get(key)
            if not isinstance(sub, dict):
                sub = target[key] = {}
            merge_patch(sub, value)
        else:
            target[key] = copy.deepcopy(value)


def validate_patch(patch: Any, *, allow_version: bool = False) -> None:
    if not isinstance(patch, dict):
        raise TwinError("a twin patch must be a JSON object")
    _validate_keys(patch, 1, allow_version=allow_version)


def _validate_keys(obj: JSONObject, depth: int, *, allow_version: bool) -> None:
    if depth > MAX_DEPTH:
        raise TwinError(f"twin document nested deeper than {MAX_DEPTH} levels")
    for key, value in obj.items():
        if depth == 1 and allow_version and key == "$version":
            continue
        if not key or len(key.encode()) > 1024:
            raise TwinError("twin property names must be 1..1024 bytes")
        if any(c in _FORBIDDEN_KEY_CHARS or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in key):
            raise TwinError(f"twin property name {key!r} contains '.', '$', a space or a control character")
        if isinstance(value, dict):
            _validate_keys(value, depth + 1, allow_version=False)


class Twin:
    """Thread-safe; persisted to `path` (if given) after every change so a restart keeps it."""

    def __init__(self, path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._path = path
        self._desired: JSONObject = {}
        self._reported: JSONObject = {}
        self._desired_version = 1
        self._reported_version = 1
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        data = json.loads(path.read_text())
        self._desired = data["desired"]
        self._reported = data["reported"]
        self._desired_version = int(data["desired_version"])
        self._reported_version = int(data["reported_version"])

    def _save(self) -> None:
        if self._path is None:
            return
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "desired": self._desired,
                    "reported": self._reported,
                    "desired_version": self._desired_version,
                    "reported_version": self._reported_version,
                },
                indent=1,
            )
        )
        os.replace(tmp, self._path)

    def document(self) -> JSONObject:
        """What the device gets for a twin GET."""
        with self._lock:
            return {
                "desired": {**copy.deepcopy(self._desired), "$version": self._desired_version},
                "reported": {**copy.deepcopy(self._reported), "$version": self._reported_version},
            }

    @property
    def desired_version(self) -> int:
        with self._lock:
            return self._desired_version

    @property
    def reported_version(self) -> int:
        with self._lock:
            return self._reported_version

    def patch_reported(self, patch: Any) -> int:
        validate_patch(patch)
        with self._lock:
            candidate = copy.deepcopy(self._reported)
            merge_patch(candidate, patch)
            if len(json.dumps(candidate).encode()) > MAX_REPORTED_BYTES:
                raise TwinError(f"reported properties exceed {MAX_REPORTED_BYTES} bytes")
            self._reported = candidate
            self._reported_version += 1
            self._save()
            return self._reported_version

    def patch_desired(self, patch: Any) -> tuple[int, JSONObject]:
        """Apply a desired patch; return the new version and the patch as sent to the device."""
        validate_patch(patch)
        with self._lock:
            candidate = copy.deepcopy(self._desired)
            merge_patch(candidate, patch)
            if len(json.dumps(candidate).encode()) > MAX_DESIRED_BYTES:
                raise TwinError(f"desired properties exceed {MAX_DESIRED_BYTES} bytes")
            self._desired = candidate
            self._desired_version += 1
            self._save()
            return self._desired_version, {**copy.deepcopy(patch), "$version": self._desired_version}

    def reset(self) -> None:
        with self._lock:
            self._desired, self._reported = {}, {}
            self._desired_version = self._reported_version = 1
            self._save()
