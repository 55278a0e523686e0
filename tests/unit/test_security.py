"""amora.security: start-up warnings (plain remote MQTT, tls_insecure, secrets readable by others)
and the strict permission refusal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from amora.config import Config, load_config, parse_config
from amora.security import is_loopback_host, permission_refusal, startup_warnings

SECRET = "pw-Inline-7f3a"


def config(broker: dict[str, Any], **sections: Any) -> Config:
    doc = {"device": {"id": "dev-1"}, "content": {"storage_path": "/srv/music"}, "broker": broker, **sections}
    return parse_config(doc, env={}, base_dir=Path("/etc/amora"))


def written(tmp_path: Path, mode: int, *, strict: bool = False, inline: bool = True) -> tuple[Path, Config]:
    broker: dict[str, Any] = {"broker_url": "localhost", "username": "dev-1"}
    if inline:
        broker["password"] = SECRET
    else:
        (tmp_path / "pw").write_text(SECRET)
        (tmp_path / "pw").chmod(0o600)
        broker["password_file"] = "pw"
    doc = {
        "device": {"id": "dev-1"},
        "content": {"storage_path": "/srv/music"},
        "broker": broker,
        "system": {"strict_permissions": strict},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    path.chmod(mode)
    return path, load_config(path, env={})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("player.localhost", True),
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("ip6-localhost", True),
        ("mqtt.example.com", False),
        ("192.168.1.10", False),
        ("localhost.example.com", False),
        ("::2", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_a_local_plain_broker_is_fine() -> None:
    assert startup_warnings(config({"broker_url": "localhost"})) == []
    assert startup_warnings(config({"broker_url": "mqtt://[::1]:1884"})) == []


def test_plain_mqtt_to_a_remote_broker_is_warned_about() -> None:
    (warning,) = startup_warnings(config({"broker_url": "mqtt.example.com"}))
    assert "mqtt://mqtt.example.com:1883" in warning and "NOT encrypted" in warning and "mqtts://" in warning
    (warning,) = startup_warnings(config({"broker_url": "10.0.0.5", "username": "u", "password": SECRET}))
    assert "broker password" in warning and SECRET not in warning


def test_tls_to_a_remote_broker_is_fine() -> None:
    assert startup_warnings(config({"broker_url": "mqtts://mqtt.example.com"})) == []


def test_tls_insecure_is_warned_about_loudly() -> None:
    (warning,) = startup_warnings(config({"broker_url": "mqtts://mqtt.example.com", "tls_insecure": True}))
    assert "tls_insecure" in warning and "NOT" in warning and "impersonate" in warning


def test_secrets_readable_by_others_are_warned_about(tmp_path: Path) -> None:
    path, c = written(tmp_path, 0o644)
    (warning,) = startup_warnings(c, path)
    assert "0644" in warning and "/broker/password" in warning and SECRET not in warning
    assert startup_warnings(c) == [warning]  # the path the config was loaded from is the default
    path.chmod(0o600)
    assert startup_warnings(c, path) == []


def test_a_readable_config_without_inline_secrets_is_fine(tmp_path: Path) -> None:
    path, c = written(tmp_path, 0o644, inline=False)
    assert startup_warnings(c, path) == []


def test_strict_permissions_refuses_only_what_it_would_warn_about(tmp_path: Path) -> None:
    path, c = written(tmp_path, 0o640, strict=True)
    refusal = permission_refusal(c, path)
    assert refusal is not None and "strict_permissions" in refusal and "0640" in refusal
    assert SECRET not in refusal
    path.chmod(0o600)
    assert permission_refusal(c, path) is None


def test_without_strict_permissions_nothing_is_refused(tmp_path: Path) -> None:
    path, c = written(tmp_path, 0o644)
    assert permission_refusal(c, path) is None


def test_strict_permissions_refuses_a_world_readable_secret_file(tmp_path: Path) -> None:
    path, c = written(tmp_path, 0o644, strict=True, inline=False)
    assert permission_refusal(c, path) is None
    (tmp_path / "pw").chmod(0o644)
    refusal = permission_refusal(c, path)
    assert refusal is not None and str(tmp_path / "pw") in refusal


def test_in_memory_configs_have_no_file_to_check() -> None:
    c = config(
        {"broker_url": "localhost", "username": "u", "password": SECRET}, system={"strict_permissions": True}
    )
    assert permission_refusal(c) is None and startup_warnings(c) == []
