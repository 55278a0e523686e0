"""amora.config: the guide's example, defaults, errors, secrets, redaction, broker_url, permissions."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from amora import schemas
from amora.config import (
    Backoff,
    Config,
    ConfigError,
    config_permission_warning,
    load_config,
    parse_config,
    parse_connection_string,
    redacted,
    secret_values,
)
from tools import gen_config_docs

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
GUIDE = ROOT.parent / "shared" / "spec" / "iot-integration-guide.md"

KEY = "c2VjcmV0LWtleS1kby1ub3QtbGVhaw=="
CONN = f"HostName=hub.example.net;DeviceId=dev-1;SharedAccessKey={KEY}"


def minimal(**sections: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "device": {"id": "dev-1"},
        "broker": {"broker_url": "localhost"},
        "content": {"storage_path": "/srv/music"},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(doc.get(name), dict):
            doc[name] = {**doc[name], **value}
        else:
            doc[name] = value
    return doc


def parse(doc: dict[str, Any], env: dict[str, str] | None = None, base_dir: Path | None = None) -> Config:
    return parse_config(doc, env=env or {}, base_dir=base_dir or Path("/etc/amora"))


def error_of(doc: Any, env: dict[str, str] | None = None, base_dir: Path | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, env=env or {}, base_dir=base_dir or Path("/etc/amora"))
    return info.value


def fields_of(err: ConfigError) -> set[str]:
    return {issue.field for issue in err.issues}


# --- the guide's example ------------------------------------------------------------------------


def test_guide_example_file_is_the_guides_text_byte_for_byte() -> None:
    if not GUIDE.exists():
        pytest.skip("the guide is not next to the repository")
    section = GUIDE.read_text().split("## Configuring AmoraOS for IoT Integration", 1)[1]
    block = re.search(r"```json\n(.*?)```", section, re.S)
    assert block is not None
    assert (EXAMPLES / "config.guide.json").read_text() == block.group(1)


def test_guide_example_loads() -> None:
    config = load_config(EXAMPLES / "config.guide.json", env={})
    assert config.device.id == "waybox-player-001"
    assert config.device.name == "Living Room Player"
    assert config.device_id == "amora-player-001"  # broker.device_id wins over device.id
    assert (config.mpd.host, config.mpd.port, config.mpd.unix_socket) == ("localhost", 6600, False)
    assert config.content.storage_path == Path("/home/user/music")
    assert config.content.playlists_path == Path("/home/user/music/playlists")
    assert (config.audio.backend, config.audio.device, config.audio.volume) == ("pipewire", "default", 80)
    b = config.broker
    assert (b.host, b.port, b.use_tls, b.username, b.password) == (
        "mqtt.example.com",
        1883,
        False,
        "username",
        "password",
    )
    assert b.topic_base == "amora/devices/amora-player-001"
    assert config.iot is not None
    assert config.iot.hostname == "your-hub.azure-devices.net"
    assert config.iot.device_id == "your-device"
    assert config.iot.telemetry_interval == 60
    assert config.iot.enable_direct_methods and config.iot.enable_device_twin
    assert config.dev_mode is False


def test_local_example_loads_with_paths_relative_to_the_file() -> None:
    config = load_config(EXAMPLES / "config.local.json", env={})
    assert config.content.storage_path == EXAMPLES / "music"
    assert config.system.state_dir == EXAMPLES / "state"
    assert config.iot is None
    assert config.dev_mode is True


# --- defaults ------------------------------------------------------------------------------------


def test_defaults() -> None:
    c = parse(minimal())
    assert c.device_id == "dev-1"
    assert (c.mpd.host, c.mpd.port, c.mpd.password, c.mpd.timeout) == ("localhost", 6600, None, 5.0)
    assert c.mpd.backoff == Backoff(initial_delay=0.5, max_delay=30, multiplier=2, jitter=0.2)
    assert c.content.playlists_path == Path("/srv/music/playlists")
    assert c.content.free_space_path == Path("/srv/music")
    assert c.content.sync is None
    assert (c.audio.backend, c.audio.device, c.audio.volume) == ("pipewire", "default", None)
    b = c.broker
    assert (b.host, b.port, b.use_tls, b.username, b.password) == ("localhost", 1883, False, None, None)
    assert (b.client_id, b.keepalive, b.topic_prefix) == ("amora-dev-1", 30, "amora/devices")
    assert (b.max_payload_bytes, b.max_command_age, b.dedupe_window) == (65536, None, 1000)
    assert (b.tls_insecure, b.ca_file, b.cert_file, b.key_file) == (False, None, None, None)
    assert b.backoff == Backoff(initial_delay=1, max_delay=60, multiplier=2, jitter=0.2)
    assert c.iot is None
    assert c.system.reboot_command == ("systemctl", "reboot")
    assert c.system.reboot_guard_seconds == 600
    assert c.system.state_dir == Path("/var/lib/amora")
    assert c.system.free_space_interval == 60
    assert (c.logging.level, c.logging.format, c.logging.record) == ("info", "text", None)
    assert c.dev_mode is False


def test_iot_defaults() -> None:
    iot = parse(minimal(iot={"connection_string": CONN})).iot
    assert iot is not None
    assert (iot.telemetry_interval, iot.call_timeout) == (60, 10)
    assert iot.backoff == Backoff(initial_delay=2, max_delay=120, multiplier=2, jitter=0.2)
    assert (iot.x509, iot.proxy, iot.ca_file, iot.model_id) == (None, None, None, None)


def test_relative_paths_resolve_against_base_dir(tmp_path: Path) -> None:
    c = parse(
        minimal(
            content={"storage_path": "music"}, logging={"record": "trace.jsonl"}, system={"state_dir": "st"}
        ),
        base_dir=tmp_path,
    )
    assert c.content.storage_path == tmp_path / "music"
    assert c.logging.record == tmp_path / "trace.jsonl"
    assert c.system.state_dir == tmp_path / "st"


def test_broker_device_id_alone_is_enough() -> None:
    doc = minimal(broker={"broker_url": "localhost", "device_id": "b-1"})
    del doc["device"]
    c = parse(doc)
    assert c.device_id == "b-1"
    assert c.device.id is None
    assert c.broker.client_id == "amora-b-1"


def test_missing_device_id() -> None:
    doc = minimal()
    del doc["device"]
    err = error_of(doc)
    assert fields_of(err) == {"/device/id"}
    assert "device.id or broker.device_id" in str(err)


def test_filled_defaults_are_valid_against_the_schema() -> None:
    from amora.config import _with_defaults  # the fill step itself must not produce invalid documents

    doc = _with_defaults(minimal(iot={"connection_string": CONN}), schemas.load("config"))
    assert schemas.issues("config", doc) == []


# --- errors --------------------------------------------------------------------------------------


def test_typo_names_the_path() -> None:
    err = error_of(minimal(broker={"broker_url": "localhost", "prot": 1883}))
    assert fields_of(err) == {"/broker/prot"}
    assert "'prot'" in str(err)


def test_typo_at_top_level_and_deep() -> None:
    err = error_of(minimal(dev_mod=True, mpd={"backoff": {"initial_dely": 1}}))
    assert fields_of(err) == {"/dev_mod", "/mpd/backoff/initial_dely"}


def test_wrong_type() -> None:
    err = error_of(minimal(mpd={"port": "6600"}))
    assert [str(i) for i in err.issues] == ["/mpd/port: expected integer, got str"]


def test_all_problems_reported_one_line_each() -> None:
    err = error_of(minimal(mpd={"port": 0}, audio={"volume": 101}, logging={"level": "loud"}))
    assert fields_of(err) == {"/mpd/port", "/audio/volume", "/logging/level"}
    assert len(str(err).splitlines()) == 3


def test_missing_required_section() -> None:
    doc = minimal()
    del doc["content"]
    assert fields_of(error_of(doc)) == {"/content"}


def test_not_an_object() -> None:
    assert str(error_of([])) == "/: expected object, got list"


def test_load_config_prefixes_the_file_and_reports_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"device": {"id": "x"},}')
    with pytest.raises(ConfigError, match="not valid JSON") as info:
        load_config(path, env={})
    assert str(info.value).startswith(f"{path}: /: not valid JSON")
    path.write_text('{"device": {"id": "x", "id": "y"}}')
    with pytest.raises(ConfigError, match="duplicate key 'id'"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.json")


def test_backoff_bounds() -> None:
    err = error_of(minimal(mpd={"backoff": {"initial_delay": 10, "max_delay": 1}}))
    assert fields_of(err) == {"/mpd/backoff/max_delay"}


def test_backoff_delay() -> None:
    b = Backoff(initial_delay=1, max_delay=60, multiplier=2, jitter=0.2)
    assert [b.delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert b.delay(3, rand=0.0) == pytest.approx(6.4)
    assert b.delay(10_000) == 60


def test_iot_needs_credentials() -> None:
    err = error_of(minimal(iot={"telemetry_interval": 30}))
    assert fields_of(err) == {"/iot/connection_string"}


def test_iot_connection_string_must_name_hub_and_device() -> None:
    err = error_of(minimal(iot={"connection_string": f"DeviceId=d;SharedAccessKey={KEY}"}))
    assert "lacks HostName" in str(err)
    err = error_of(minimal(iot={"connection_string": "HostName=h;DeviceId=d"}))
    assert "lacks SharedAccessKey" in str(err)


def test_iot_x509() -> None:
    x509 = {"hostname": "hub.example.net", "device_id": "dev-x", "cert_file": "c.pem", "key_file": "k.pem"}
    iot = parse(minimal(iot={"x509": x509, "proxy": {"host": "127.0.0.1", "port": 3128}})).iot
    assert iot is not None and iot.x509 is not None
    assert (iot.hostname, iot.device_id, iot.connection_string) == ("hub.example.net", "dev-x", None)
    assert iot.x509.cert_file == Path("/etc/amora/c.pem")
    assert iot.proxy is not None and (iot.proxy.host, iot.proxy.port, iot.proxy.type) == (
        "127.0.0.1",
        3128,
        "HTTP",
    )
    err = error_of(minimal(iot={"x509": x509, "connection_string": CONN}))
    assert fields_of(err) == {"/iot/x509"}


def test_model_id_must_be_a_dtmi() -> None:
    assert parse(minimal(iot={"connection_string": CONN, "model_id": "dtmi:amora:player;1"})).iot is not None
    assert fields_of(error_of(minimal(iot={"connection_string": CONN, "model_id": "amora"}))) == {
        "/iot/model_id"
    }


def test_device_id_must_be_topic_safe() -> None:
    assert fields_of(error_of(minimal(device={"id": "a/+"}))) == {"/device/id"}


def test_parse_config_does_not_mutate_its_input() -> None:
    doc = minimal()
    before = json.dumps(doc, sort_keys=True)
    parse(doc)
    assert json.dumps(doc, sort_keys=True) == before


# --- broker_url ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("broker", "expected"),
    [
        ({"broker_url": "mqtt.example.com"}, ("mqtt.example.com", 1883, False)),
        ({"broker_url": "mqtt.example.com", "use_tls": True}, ("mqtt.example.com", 8883, True)),
        ({"broker_url": "mqtt.example.com", "port": 1884}, ("mqtt.example.com", 1884, False)),
        ({"broker_url": "mqtt.example.com", "port": 1884, "use_tls": True}, ("mqtt.example.com", 1884, True)),
        ({"broker_url": "mqtt://mqtt.example.com"}, ("mqtt.example.com", 1883, False)),
        ({"broker_url": "mqtt://mqtt.example.com:1999"}, ("mqtt.example.com", 1999, False)),
        ({"broker_url": "mqtt://mqtt.example.com:1999", "port": 1999}, ("mqtt.example.com", 1999, False)),
        ({"broker_url": "mqtts://mqtt.example.com"}, ("mqtt.example.com", 8883, True)),
        ({"broker_url": "mqtts://mqtt.example.com", "port": 9883}, ("mqtt.example.com", 9883, True)),
        ({"broker_url": "mqtts://mqtt.example.com", "use_tls": True}, ("mqtt.example.com", 8883, True)),
        ({"broker_url": "mqtts://mqtt.example.com:8884/"}, ("mqtt.example.com", 8884, True)),
        ({"broker_url": "mqtt://[::1]:1884"}, ("::1", 1884, False)),
        ({"broker_url": "::1"}, ("::1", 1883, False)),
        ({"broker_url": "127.0.0.1"}, ("127.0.0.1", 1883, False)),
        ({"broker_url": "mqtt.example.com:1884"}, ("mqtt.example.com", 1884, False)),
        ({"broker_url": "mqtt.example.com:8884", "use_tls": True}, ("mqtt.example.com", 8884, True)),
        ({"broker_url": "[::1]:1884"}, ("::1", 1884, False)),
        ({"broker_url": "ssl://mqtt.example.com"}, ("mqtt.example.com", 8883, True)),
    ],
)
def test_broker_url_forms(broker: dict[str, Any], expected: tuple[str, int, bool]) -> None:
    b = parse(minimal(broker=broker)).broker
    assert (b.host, b.port, b.use_tls) == expected


@pytest.mark.parametrize(
    ("broker", "field"),
    [
        ({"broker_url": "mqtt://h", "use_tls": True}, "/broker/use_tls"),
        ({"broker_url": "mqtts://h", "use_tls": False}, "/broker/use_tls"),
        ({"broker_url": "mqtt://h:1884", "port": 1885}, "/broker/port"),
        ({"broker_url": "http://h"}, "/broker/broker_url"),
        ({"broker_url": "h:1883", "port": 1884}, "/broker/port"),
        ({"broker_url": "h:x"}, "/broker/broker_url"),
        ({"broker_url": "mqtt://h/path"}, "/broker/broker_url"),
        ({"broker_url": "mqtt://h:99999"}, "/broker/broker_url"),
        ({"broker_url": "mqtt://"}, "/broker/broker_url"),
        ({"broker_url": "h", "ca_file": "ca.pem"}, "/broker/ca_file"),
        ({"broker_url": "mqtts://h", "key_file": "k.pem"}, "/broker/key_file"),
        ({"broker_url": "h", "password": "pw"}, "/broker/password"),
    ],
)
def test_broker_url_errors(broker: dict[str, Any], field: str) -> None:
    assert field in fields_of(error_of(minimal(broker=broker)))


def test_credentials_in_broker_url_are_rejected_without_echo() -> None:
    err = error_of(minimal(broker={"broker_url": "mqtt://user:hunter2secret@h"}))
    assert fields_of(err) == {"/broker/broker_url"}
    assert "hunter2secret" not in str(err)


def test_broker_tls_files() -> None:
    b = parse(minimal(broker={"broker_url": "mqtts://h", "ca_file": "ca.pem", "cert_file": "c.pem"})).broker
    assert (b.ca_file, b.cert_file, b.key_file) == (Path("/etc/amora/ca.pem"), Path("/etc/amora/c.pem"), None)
    assert b.url == "mqtts://h:8883"


# --- secrets -------------------------------------------------------------------------------------


def test_secrets_from_env_win_over_file_and_inline(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    doc = minimal(
        broker={"broker_url": "h", "username": "u", "password": "inline", "password_file": "pw"},
        mpd={"password": "mpd-inline"},
        iot={"connection_string": "HostName=a;DeviceId=b;SharedAccessKey=inline"},
    )
    env = {
        "AMORA_BROKER_PASSWORD": "from-env",
        "AMORA_MPD_PASSWORD": "mpd-env",
        "AMORA_IOT_CONNECTION_STRING": CONN,
    }
    c = parse(doc, env=env, base_dir=tmp_path)
    assert c.broker.password == "from-env"
    assert c.mpd.password == "mpd-env"
    assert c.iot is not None and c.iot.connection_string == CONN
    assert parse(doc, env={}, base_dir=tmp_path).broker.password == "from-file"
    assert parse(doc, env={"AMORA_BROKER_PASSWORD": ""}, base_dir=tmp_path).broker.password == "from-file"
    del doc["broker"]["password_file"]
    assert parse(doc, env={}, base_dir=tmp_path).broker.password == "inline"


def test_secret_file_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "cs").write_text(f"  {CONN}\n")
    (tmp_path / "config.json").write_text(
        json.dumps(minimal(iot={"connection_string_file": "secrets/cs"}, content={"storage_path": "m"}))
    )
    c = load_config(tmp_path / "config.json", env={})
    assert c.iot is not None and c.iot.connection_string == CONN
    assert c.source.secret_files == (tmp_path / "secrets" / "cs",)
    assert c.source.inline_secrets == ()


def test_iot_connection_string_from_env_only() -> None:
    c = parse(minimal(iot={}), env={"AMORA_IOT_CONNECTION_STRING": CONN})
    assert c.iot is not None and c.iot.device_id == "dev-1"
    assert parse(minimal(), env={"AMORA_IOT_CONNECTION_STRING": CONN}).iot is None  # no section, no hub


def test_unreadable_or_empty_secret_file(tmp_path: Path) -> None:
    err = error_of(minimal(mpd={"password_file": "missing"}), base_dir=tmp_path)
    assert fields_of(err) == {"/mpd/password_file"}
    assert "No such file" in str(err)
    (tmp_path / "empty").write_text("\n")
    assert "is empty" in str(error_of(minimal(mpd={"password_file": "empty"}), base_dir=tmp_path))


# --- redaction: no secret anywhere ---------------------------------------------------------------


def _assert_hidden(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


def test_redacted_repr_and_str_hide_secrets(tmp_path: Path) -> None:
    (tmp_path / "pp").write_text("pass-phrase-secret")
    doc = minimal(
        mpd={"password": "mpd-secret-pw"},
        broker={"broker_url": "mqtts://h", "username": "u", "password": "broker-secret-pw"},
        iot={"connection_string": CONN},
        content={"sync": {"account_url": "http://127.0.0.1:10000/a", "sas_token": "sv=2024&sig=sync-secret"}},
    )
    c = parse(doc, base_dir=tmp_path)
    secrets = ("mpd-secret-pw", "broker-secret-pw", KEY, "sync-secret")
    out = redacted(c)
    _assert_hidden(json.dumps(out), *secrets)
    _assert_hidden(repr(c), *secrets)
    _assert_hidden(str(c), *secrets)
    assert out["mpd"]["password"] == "***"
    assert out["broker"]["password"] == "***"
    assert out["iot"]["connection_string"] == "HostName=hub.example.net;DeviceId=dev-1;SharedAccessKey=***"
    assert out["content"]["sync"] == {"account_url": "http://127.0.0.1:10000/a", "sas_token": "***"}
    assert parse(minimal()).mpd.password is None and redacted(parse(minimal()))["mpd"]["password"] is None
    assert set(secret_values(c)) >= {
        "mpd-secret-pw",
        "broker-secret-pw",
        CONN,
        KEY,
        "sv=2024&sig=sync-secret",
    }
    values = secret_values(c)
    assert values == sorted(values, key=len, reverse=True)


def test_redacted_is_json_and_complete() -> None:
    out = redacted(load_config(EXAMPLES / "config.guide.json", env={}))
    assert json.loads(json.dumps(out)) == out
    assert set(out) == {"device", "mpd", "content", "audio", "broker", "iot", "system", "logging", "dev_mode"}
    assert out["broker"]["client_id"] == "amora-amora-player-001"


@pytest.mark.parametrize(
    "doc",
    [
        minimal(mpd={"password": ""}),  # minLength error quotes the value
        minimal(iot={"connection_string": "HostName=h;DeviceId=d;SharedAccessKey=zz-secret-zz;Bogus=1"}),
        minimal(iot={"connection_string": "zz-secret-zz"}),
        minimal(iot={"connection_string": "HostName=h;zz-secret-zz"}),
        minimal(iot={"connection_string": ["zz-secret-zz"]}),
        minimal(broker={"broker_url": "h", "password": "zz-secret-zz", "port": "x"}),
        minimal(broker={"broker_url": "mqtt://u:zz-secret-zz@h"}),
        minimal(iot={"x509": {"hostname": "h", "pass_phrase": "zz-secret-zz"}}),
    ],
)
def test_errors_never_contain_secrets(doc: dict[str, Any]) -> None:
    err = error_of(doc, env={"AMORA_MPD_PASSWORD": "zz-env-secret-zz"})
    text = str(err) + repr(err) + repr(err.issues)
    _assert_hidden(text, "zz-secret-zz", "zz-env-secret-zz")


def test_error_with_env_secret_does_not_show_it() -> None:
    err = error_of(minimal(iot={}), env={"AMORA_IOT_CONNECTION_STRING": "HostName=h;zz-secret-zz"})
    _assert_hidden(str(err), "zz-secret-zz")


def test_parse_connection_string() -> None:
    assert parse_connection_string(CONN + ";") == {
        "HostName": "hub.example.net",
        "DeviceId": "dev-1",
        "SharedAccessKey": KEY,
    }


# --- permissions ---------------------------------------------------------------------------------


def test_permission_warning(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(minimal(broker={"broker_url": "h", "username": "u", "password": "pw-inline"})))
    path.chmod(0o644)
    c = load_config(path, env={})
    warning = config_permission_warning(path, c)
    assert warning is not None and "/broker/password" in warning and "0644" in warning
    assert "pw-inline" not in warning
    path.chmod(0o600)
    assert config_permission_warning(path, c) is None


def test_no_permission_warning_without_inline_secrets(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("pw")
    (tmp_path / "pw").chmod(0o600)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(minimal(broker={"broker_url": "h", "username": "u", "password_file": "pw"})))
    path.chmod(0o644)
    c = load_config(path, env={})
    assert config_permission_warning(path, c) is None
    (tmp_path / "pw").chmod(0o644)
    warning = config_permission_warning(path, c)
    assert warning is not None and str(tmp_path / "pw") in warning


def test_strict_permissions_defaults_off_and_is_read() -> None:
    assert parse(minimal()).system.strict_permissions is False
    assert parse(minimal(system={"strict_permissions": True})).system.strict_permissions is True
    assert "/system/strict_permissions" in fields_of(error_of(minimal(system={"strict_permissions": "yes"})))


# --- the schema and its docs ---------------------------------------------------------------------


def _walk(schema: dict[str, Any], pointer: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(pointer, schema)]
    for key, sub in schema.get("properties", {}).items():
        out.extend(_walk(sub, f"{pointer}/{key}"))
    return out


def test_schema_is_valid_and_documents_every_key() -> None:
    schema = schemas.load("config")
    Draft202012Validator.check_schema(schema)
    assert schema["$id"] == "https://amora.example/schemas/config.schema.json"
    for pointer, sub in _walk(schema):
        assert sub.get("description"), f"{pointer} has no description"
        if sub.get("type") == "object" and pointer != "/content/sync":
            assert sub.get("additionalProperties") is False, pointer


def test_docs_are_generated_from_the_current_schema() -> None:
    text = gen_config_docs.DOC.read_text()
    assert gen_config_docs.updated(text) == text, "run: python -m tools.gen_config_docs"


def test_env_default_is_the_process_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AMORA_MPD_PASSWORD", "from-process-env")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(minimal()))
    assert load_config(path).mpd.password == "from-process-env"
    assert os.environ["AMORA_MPD_PASSWORD"] == "from-process-env"


def test_sync_container_url_is_a_secret() -> None:
    url = "https://acct.blob.core.windows.net/music?sv=2024&sp=rl&sig=VERYSECRETSIG"
    c = parse(minimal(content={"storage_path": "/srv/music", "sync": {"container_url": url}}))
    assert redacted(c)["content"]["sync"]["container_url"] == "***"
    assert url in secret_values(c)
    assert "VERYSECRETSIG" not in repr(c)
