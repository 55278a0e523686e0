"""The agent's configuration: `config.json` validated against schemas/config.schema.json.

The schema is the contract: it holds every key, its type and its default, and `parse_config` fills
defaults from it rather than restating them here. What the schema cannot say is checked below and
reported the same way (`SchemaIssue`: JSON pointer + sentence), all problems at once.

Secrets (mpd.password, broker.password, iot.connection_string, iot.x509.pass_phrase) can come from
three places; the first that is set wins:
  1. an environment variable (AMORA_MPD_PASSWORD, AMORA_BROKER_PASSWORD, AMORA_IOT_CONNECTION_STRING,
     AMORA_IOT_X509_PASS_PHRASE; an empty variable counts as unset),
  2. the file named by `<key>_file` (contents stripped of surrounding whitespace),
  3. the inline value in config.json.
The environment wins so that a deployment can override a file baked into an image. No secret value
ever appears in an error, a repr or `redacted()`.

broker_url: "host", "mqtt://host[:port]" or "mqtts://host[:port]". The scheme decides TLS (a bare host
takes `use_tls`). Port: the URL's port, else the `port` key, else 8883 with TLS / 1883 without. A
`use_tls` or `port` key that contradicts the URL is an error rather than a silent choice.

Relative paths are resolved against the config file's directory (`base_dir`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amora import schemas
from amora.broker_url import parse_broker_url
from amora.schemas import SchemaIssue

SCHEMA = "config"
REDACTED = "***"

_SECRET = {"secret": True}

# (pointer of the secret, pointer of its *_file key, environment variable)
SECRET_SOURCES: tuple[tuple[str, str, str], ...] = (
    ("/mpd/password", "/mpd/password_file", "AMORA_MPD_PASSWORD"),
    ("/broker/password", "/broker/password_file", "AMORA_BROKER_PASSWORD"),
    ("/iot/connection_string", "/iot/connection_string_file", "AMORA_IOT_CONNECTION_STRING"),
    ("/iot/x509/pass_phrase", "/iot/x509/pass_phrase_file", "AMORA_IOT_X509_PASS_PHRASE"),
)

# Connection-string keys the device SDK understands; the two signing secrets are never shown.
_CS_KEYS = (
    "HostName",
    "DeviceId",
    "ModuleId",
    "GatewayHostName",
    "SharedAccessKey",
    "SharedAccessKeyName",
    "SharedAccessSignature",
    "x509",
)
_CS_SECRET_KEYS = ("SharedAccessKey", "SharedAccessSignature")

# Key names under content.sync (owned by the sync schema) that are treated as secrets when
# redacting, so that a sync credential can never leak through `redacted()` before that schema
# says which of its keys are secret.
_SECRETISH = ("password", "secret", "token", "connection_string", "sas", "key", "credential")
_NOT_SECRETISH_SUFFIXES = ("_file", "_path", "_name", "_id", "_dir")


class ConfigError(Exception):
    """The configuration is unusable. `issues` lists every problem; str() gives one line each."""

    def __init__(self, issues: list[SchemaIssue], source: str | Path | None = None) -> None:
        self.issues = list(issues)
        self.source = str(source) if source is not None else None
        super().__init__(str(self))

    def __str__(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        return "\n".join(f"{prefix}{issue}" for issue in self.issues) or f"{prefix}invalid configuration"


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    initial_delay: float
    max_delay: float
    multiplier: float
    jitter: float

    def delay(self, attempt: int, rand: float = 0.5) -> float:
        """Seconds to wait after failure number `attempt` (0-based); `rand` in [0, 1), 0.5 = no jitter."""
        try:
            base = min(self.max_delay, self.initial_delay * self.multiplier ** max(attempt, 0))
        except OverflowError:
            base = self.max_delay
        spread = base * self.jitter * (2 * rand - 1)
        return max(0.0, min(self.max_delay, base + spread))


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceConfig:
    id: str | None
    name: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class MpdConfig:
    host: str
    port: int
    password: str | None = field(repr=False, metadata=_SECRET)
    timeout: float
    backoff: Backoff

    @property
    def unix_socket(self) -> bool:
        return self.host.startswith("/")


@dataclass(frozen=True, slots=True, kw_only=True)
class ContentConfig:
    storage_path: Path
    playlists_path: Path
    free_space_path: Path
    # raw content.sync (its schema belongs to content sync); kept out of repr as it may hold credentials
    sync: dict[str, Any] | None = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioConfig:
    backend: str
    device: str
    volume: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerConfig:
    device_id: str  # effective device id: broker.device_id, else device.id
    host: str
    port: int
    use_tls: bool
    username: str | None
    password: str | None = field(repr=False, metadata=_SECRET)
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    tls_insecure: bool
    client_id: str
    keepalive: int
    topic_prefix: str
    max_payload_bytes: int
    max_command_age: float | None
    dedupe_window: int
    backoff: Backoff

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.use_tls else 'mqtt'}://{host}:{self.port}"

    @property
    def topic_base(self) -> str:
        """`<topic_prefix>/<device_id>`; append /commands, /responses, /state or /connection."""
        return f"{self.topic_prefix}/{self.device_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class X509Config:
    hostname: str
    device_id: str
    cert_file: Path
    key_file: Path
    pass_phrase: str | None = field(repr=False, metadata=_SECRET)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    host: str
    port: int
    type: str  # "HTTP" | "SOCKS4" | "SOCKS5"


@dataclass(frozen=True, slots=True, kw_only=True)
class IotConfig:
    connection_string: str | None = field(repr=False, metadata=_SECRET)  # None => x509 is set
    x509: X509Config | None
    telemetry_interval: float
    enable_direct_methods: bool
    enable_device_twin: bool
    ca_file: Path | None
    proxy: ProxyConfig | None
    model_id: str | None
    call_timeout: float
    backoff: Backoff

    @property
    def hostname(self) -> str:
        if self.x509 is not None:
            return self.x509.hostname
        assert self.connection_string is not None
        return parse_connection_string(self.connection_string)["HostName"]

    @property
    def device_id(self) -> str:
        if self.x509 is not None:
            return self.x509.device_id
        assert self.connection_string is not None
        return parse_connection_string(self.connection_string)["DeviceId"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemConfig:
    reboot_command: tuple[str, ...]
    reboot_guard_seconds: float
    state_dir: Path
    free_space_interval: float
    strict_permissions: bool  # refuse to start while secrets are readable by others


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig:
    level: str  # "debug" | "info" | "warning" | "error" | "critical"
    format: str  # "text" | "json"
    record: Path | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigSource:
    """Where the configuration came from; used for the permission check, not part of the config."""

    path: Path | None
    inline_secrets: tuple[str, ...]  # pointers of secrets written inline in the file
    secret_files: tuple[Path, ...]  # *_file paths that were read


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    device: DeviceConfig
    mpd: MpdConfig
    content: ContentConfig
    audio: AudioConfig
    broker: BrokerConfig
    iot: IotConfig | None  # None => IoT Hub is not used
    system: SystemConfig
    logging: LoggingConfig
    dev_mode: bool
    source: ConfigSource = field(
        default=ConfigSource(path=None, inline_secrets=(), secret_files=()),
        compare=False,
        metadata={"omit": True},
    )

    @property
    def device_id(self) -> str:
        """broker.device_id, else device.id (parse_config guarantees one exists)."""
        return self.broker.device_id


# --------------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve a config file. Raises ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError([SchemaIssue("", f"cannot read the file: {exc.strerror or exc}")], path) from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        # exc.msg never quotes the document, so no secret can leak through it
        issue = SchemaIssue("", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        raise ConfigError([issue], path) from None
    except _DuplicateKeyError as exc:
        raise ConfigError([SchemaIssue("", f"duplicate key {exc.key!r} in an object")], path) from None
    try:
        return parse_config(
            obj, env=os.environ if env is None else env, base_dir=path.absolute().parent, path=path
        )
    except ConfigError as exc:
        raise ConfigError(exc.issues, path) from None


def parse_config(
    obj: Any,
    *,
    env: Mapping[str, str] = os.environ,
    base_dir: str | os.PathLike[str] | None = None,
    path: Path | None = None,
) -> Config:
    """Validate a decoded config.json, apply defaults and resolve secrets. Raises ConfigError."""
    base = Path(base_dir).absolute() if base_dir is not None else Path.cwd()
    raw = copy.deepcopy(obj)
    known_secrets = _candidate_secrets(raw, env, base)

    found = schemas.issues(SCHEMA, raw)
    if found:
        raise ConfigError(_scrub(found, known_secrets, from_schema=True))
    assert isinstance(raw, dict)

    doc = _with_defaults(raw, schemas.load(SCHEMA))
    builder = _Builder(doc, raw, env, base)
    config = builder.build(path)
    if builder.issues:
        raise ConfigError(_scrub(builder.issues, known_secrets, from_schema=False))
    assert config is not None
    return config


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def _with_defaults(instance: Any, schema: Mapping[str, Any]) -> Any:
    """A copy of `instance` with the schema's `default`s filled into absent object properties."""
    if not isinstance(instance, dict):
        return instance
    out = dict(instance)
    for key, sub in schema.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = _with_defaults(out[key], sub)
    return out


def _get(doc: Any, pointer: str) -> Any:
    for part in pointer.strip("/").split("/"):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc


class _Builder:
    """Turns a schema-valid, defaults-filled document into a Config, collecting semantic issues."""

    def __init__(self, doc: dict[str, Any], raw: dict[str, Any], env: Mapping[str, str], base: Path) -> None:
        self.doc = doc
        self.raw = raw
        self.env = env
        self.base = base
        self.issues: list[SchemaIssue] = []
        self.inline_secrets: list[str] = []
        self.secret_files: list[Path] = []

    def problem(self, pointer: str, message: str) -> None:
        self.issues.append(SchemaIssue(pointer, message))

    def path(self, value: str | None) -> Path | None:
        return None if value is None else self.base / Path(value).expanduser()

    def secret(self, pointer: str) -> str | None:
        file_pointer, env_name = next((f, e) for p, f, e in SECRET_SOURCES if p == pointer)
        inline = _get(self.raw, pointer)
        if inline is not None:
            self.inline_secrets.append(pointer)
        if self.env.get(env_name):
            return self.env[env_name]
        file_name = _get(self.raw, file_pointer)
        if file_name is not None:
            file_path = self.base / Path(file_name).expanduser()
            try:
                text = file_path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = (
                    exc.strerror if isinstance(exc, OSError) and exc.strerror else "not readable UTF-8 text"
                )
                self.problem(file_pointer, f"cannot read {file_path}: {reason}")
                return None
            self.secret_files.append(file_path)
            if not text:
                self.problem(file_pointer, f"{file_path} is empty")
                return None
            return text
        return inline if isinstance(inline, str) else None

    def backoff(self, pointer: str, section: Mapping[str, Any]) -> Backoff:
        b = section["backoff"]
        if b["max_delay"] < b["initial_delay"]:
            self.problem(f"{pointer}/backoff/max_delay", "must be >= initial_delay")
        return Backoff(
            initial_delay=float(b["initial_delay"]),
            max_delay=float(b["max_delay"]),
            multiplier=float(b["multiplier"]),
            jitter=float(b["jitter"]),
        )

    def build(self, path: Path | None) -> Config | None:
        d = self.doc
        device = DeviceConfig(id=d["device"].get("id"), name=d["device"].get("name"))
        device_id = d["broker"].get("device_id") or device.id
        if device_id is None:
            self.problem("/device/id", "a device id is required: set device.id or broker.device_id")
        mpd = MpdConfig(
            host=d["mpd"]["host"],
            port=int(d["mpd"]["port"]),
            password=self.secret("/mpd/password"),
            timeout=float(d["mpd"]["timeout"]),
            backoff=self.backoff("/mpd", d["mpd"]),
        )
        content = self.content(d["content"])
        audio = AudioConfig(**d["audio"])
        broker = self.broker(d["broker"], device_id or "")
        iot = self.iot(d["iot"]) if "iot" in d else None
        s = d["system"]
        system = SystemConfig(
            reboot_command=tuple(s["reboot_command"]),
            reboot_guard_seconds=float(s["reboot_guard_seconds"]),
            state_dir=self.base / Path(s["state_dir"]).expanduser(),
            free_space_interval=float(s["free_space_interval"]),
            strict_permissions=s["strict_permissions"],
        )
        lg = d["logging"]
        logging = LoggingConfig(level=lg["level"], format=lg["format"], record=self.path(lg["record"]))
        if self.issues:
            return None
        return Config(
            device=device,
            mpd=mpd,
            content=content,
            audio=audio,
            broker=broker,
            iot=iot,
            system=system,
            logging=logging,
            dev_mode=d["dev_mode"],
            source=ConfigSource(
                path=path, inline_secrets=tuple(self.inline_secrets), secret_files=tuple(self.secret_files)
            ),
        )

    def content(self, c: Mapping[str, Any]) -> ContentConfig:
        storage = self.base / Path(c["storage_path"]).expanduser()
        return ContentConfig(
            storage_path=storage,
            playlists_path=self.path(c.get("playlists_path")) or storage / "playlists",
            free_space_path=self.path(c.get("free_space_path")) or storage,
            sync=c.get("sync"),
        )

    def broker(self, b: Mapping[str, Any], device_id: str) -> BrokerConfig:
        raw = self.raw["broker"]
        host, port, use_tls = self.broker_address(raw)
        for key in ("ca_file", "cert_file", "key_file", "tls_insecure"):
            if raw.get(key) and not use_tls:
                self.problem(f"/broker/{key}", "needs TLS (use_tls true or an mqtts:// broker_url)")
        if raw.get("key_file") and not raw.get("cert_file"):
            self.problem("/broker/key_file", "needs cert_file")
        password = self.secret("/broker/password")
        if password is not None and b.get("username") is None:
            self.problem("/broker/password", "a password needs a username")
        return BrokerConfig(
            device_id=device_id,
            host=host,
            port=port,
            use_tls=use_tls,
            username=b.get("username"),
            password=password,
            ca_file=self.path(b.get("ca_file")),
            cert_file=self.path(b.get("cert_file")),
            key_file=self.path(b.get("key_file")),
            tls_insecure=b["tls_insecure"],
            client_id=b.get("client_id") or f"amora-{device_id}",
            keepalive=int(b["keepalive"]),
            topic_prefix=b["topic_prefix"],
            max_payload_bytes=int(b["max_payload_bytes"]),
            max_command_age=None if b["max_command_age"] is None else float(b["max_command_age"]),
            dedupe_window=int(b["dedupe_window"]),
            backoff=self.backoff("/broker", b),
        )

    def broker_address(self, raw: Mapping[str, Any]) -> tuple[str, int, bool]:
        """(host, port, tls) from broker_url + the raw port/use_tls keys (see the module docstring)."""
        try:
            address = parse_broker_url(raw["broker_url"])
        except ValueError as exc:
            self.problem("/broker/broker_url", str(exc))
            return "", 1883, False
        host, url_port = address.host, address.port
        key_port: int | None = None if raw.get("port") is None else int(raw["port"])
        key_tls: bool | None = raw.get("use_tls")
        if address.tls is None:
            use_tls = bool(key_tls)
        else:
            use_tls = address.tls
            if key_tls is not None and key_tls != use_tls:
                scheme = "mqtts" if use_tls else "mqtt"
                self.problem("/broker/use_tls", f"contradicts broker_url's scheme ({scheme}://)")
        if url_port is not None and key_port is not None and url_port != key_port:
            self.problem("/broker/port", f"contradicts the port in broker_url ({url_port})")
        port = url_port or key_port or (8883 if use_tls else 1883)
        return host, port, use_tls

    def iot(self, i: Mapping[str, Any]) -> IotConfig:
        connection_string = self.secret("/iot/connection_string")
        x509 = None
        if "x509" in i:
            x = i["x509"]
            x509 = X509Config(
                hostname=x["hostname"],
                device_id=x["device_id"],
                cert_file=self.base / Path(x["cert_file"]).expanduser(),
                key_file=self.base / Path(x["key_file"]).expanduser(),
                pass_phrase=self.secret("/iot/x509/pass_phrase"),
            )
        if connection_string is not None and x509 is not None:
            self.problem("/iot/x509", "use either a connection string or x509, not both")
        elif connection_string is None and x509 is None:
            self.problem(
                "/iot/connection_string",
                "IoT Hub needs a connection string (connection_string, connection_string_file or "
                "AMORA_IOT_CONNECTION_STRING) or an x509 section; remove the iot section to run without it",
            )
        elif connection_string is not None:
            try:
                fields = parse_connection_string(connection_string)
            except ValueError as exc:
                self.problem("/iot/connection_string", str(exc))
            else:
                if "x509" in fields:
                    self.problem(
                        "/iot/connection_string", "for X.509 authentication use the iot.x509 section"
                    )
                elif "SharedAccessKey" not in fields:
                    self.problem("/iot/connection_string", "lacks SharedAccessKey")
        proxy = i.get("proxy")
        return IotConfig(
            connection_string=connection_string,
            x509=x509,
            telemetry_interval=float(i["telemetry_interval"]),
            enable_direct_methods=i["enable_direct_methods"],
            enable_device_twin=i["enable_device_twin"],
            ca_file=self.path(i.get("ca_file")),
            proxy=None
            if proxy is None
            else ProxyConfig(host=proxy["host"], port=proxy["port"], type=proxy["type"]),
            model_id=i.get("model_id"),
            call_timeout=float(i["call_timeout"]),
            backoff=self.backoff("/iot", i),
        )


def parse_connection_string(value: str) -> dict[str, str]:
    """Fields of an IoT Hub device connection string. Raises ValueError without quoting the value."""
    fields: dict[str, str] = {}
    for number, part in enumerate(value.split(";"), start=1):
        if not part.strip():
            continue
        key, sep, val = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"connection string part {number} is not Key=Value")
        if key not in _CS_KEYS:
            # only a known key name is echoed: an unknown "key" may be a pasted secret fragment
            raise ValueError(f"connection string part {number} has an unknown key")
        if key in fields:
            raise ValueError(f"connection string has {key} twice")
        fields[key] = val.strip()
    for required in ("HostName", "DeviceId"):
        if not fields.get(required):
            raise ValueError(f"connection string lacks {required}")
    return fields


# --------------------------------------------------------------------------------------------------
# Secrets: collection, scrubbing, redaction


def _candidate_secrets(raw: Any, env: Mapping[str, str], base: Path) -> list[str]:
    """Every string that might be a secret, gathered before validation so errors can be scrubbed."""
    out: list[str] = []
    for pointer, file_pointer, env_name in SECRET_SOURCES:
        inline = _get(raw, pointer)
        if isinstance(inline, str):
            out.append(inline)
        if env.get(env_name):
            out.append(env[env_name])
        file_name = _get(raw, file_pointer)
        if isinstance(file_name, str):
            with contextlib.suppress(OSError, UnicodeDecodeError, ValueError):
                out.append((base / Path(file_name).expanduser()).read_text(encoding="utf-8").strip())
    for value in list(out):
        out.extend(_connection_string_secrets(value))
    sync = _get(raw, "/content/sync")
    if isinstance(sync, dict):
        out.extend(_sync_secrets(sync))
    return [s for s in out if s]


def _connection_string_secrets(value: str) -> list[str]:
    found = []
    for part in value.split(";"):
        key, sep, val = part.partition("=")
        if sep and key.strip() in _CS_SECRET_KEYS and val.strip():
            found.append(val.strip())
    return found


def _scrub(found: list[SchemaIssue], secrets: list[str], *, from_schema: bool) -> list[SchemaIssue]:
    secret_pointers = tuple(p for p, _, _ in SECRET_SOURCES)
    out = []
    for issue in found:
        message = issue.message
        # validator messages other than type errors may quote (possibly truncated) values
        if from_schema and issue.field in secret_pointers and not message.startswith("expected "):
            message = "invalid value (a secret, not shown)"
        for secret in sorted(secrets, key=len, reverse=True):
            message = message.replace(secret, REDACTED)
        out.append(SchemaIssue(issue.field, message))
    return out


def _is_secretish(key: str) -> bool:
    lowered = key.lower()
    if lowered in _sync_schema_secrets():
        return True  # what schemas/sync.schema.json declares secret (a container URL carries its SAS)
    return any(word in lowered for word in _SECRETISH) and not lowered.endswith(_NOT_SECRETISH_SUFFIXES)


@functools.cache
def _sync_schema_secrets() -> frozenset[str]:
    return frozenset(str(k).lower() for k in schemas.load("sync").get("x-secrets", ()))


def _sync_secrets(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, sub in value.items():
            if _is_secretish(key) and isinstance(sub, str):
                yield sub
                yield from _connection_string_secrets(sub)
            else:
                yield from _sync_secrets(sub)
    elif isinstance(value, list):
        for sub in value:
            yield from _sync_secrets(sub)


def _redact_sync(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (None if v is None else REDACTED)
            if _is_secretish(k) and not isinstance(v, bool)
            else _redact_sync(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact_sync(v) for v in value]
    return value


def redact_connection_string(value: str) -> str:
    """ "HostName=h;DeviceId=d;SharedAccessKey=***": the fields kept, the signing secrets masked."""
    parts = []
    for part in value.split(";"):
        if not part.strip():
            continue
        key, sep, _ = part.partition("=")
        key = key.strip()
        if not sep or key not in _CS_KEYS:
            return REDACTED  # malformed: showing any of it risks showing the key
        parts.append(f"{key}={REDACTED}" if key in _CS_SECRET_KEYS else part.strip())
    return ";".join(parts)


def redacted(config: Config) -> dict[str, Any]:
    """The effective configuration as a JSON-able dict; secrets are "***" when set, else null."""
    out = _to_jsonable(config)
    assert isinstance(out, dict)
    return out


def _to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            if f.metadata.get("omit"):
                continue
            item = getattr(value, f.name)
            if f.metadata.get("secret"):
                if item is None:
                    out[f.name] = None
                elif isinstance(value, IotConfig) and f.name == "connection_string":
                    out[f.name] = redact_connection_string(item)
                else:
                    out[f.name] = REDACTED
            elif isinstance(value, ContentConfig) and f.name == "sync":
                out[f.name] = _redact_sync(copy.deepcopy(item))
            else:
                out[f.name] = _to_jsonable(item)
        return out
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_to_jsonable(v) for v in value]
    return value


def secret_values(config: Config) -> list[str]:
    """Every secret string in the config (and the key inside the connection string), longest first,
    so that a redaction filter replacing them in order never leaves part of a longer one behind."""
    found: list[str] = []
    for secret in (
        config.mpd.password,
        config.broker.password,
        config.iot.connection_string if config.iot else None,
        config.iot.x509.pass_phrase if config.iot and config.iot.x509 else None,
    ):
        if secret:
            found.append(secret)
            found.extend(_connection_string_secrets(secret))
    if config.content.sync:
        found.extend(_sync_secrets(config.content.sync))
    return sorted({s for s in found if s}, key=lambda s: (-len(s), s))


# --------------------------------------------------------------------------------------------------
# File permissions


def config_permission_warning(path: str | os.PathLike[str], config: Config) -> str | None:
    """A warning when secrets are readable by others: the config file holding inline secrets is
    group/other-readable, or a secret file is world-readable. None when all is well."""
    problems = []
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0
    inline = config.source.inline_secrets
    if inline and mode & (stat.S_IRGRP | stat.S_IROTH):
        problems.append(
            f"{path} (mode {mode:04o}) is readable by group/others and holds secrets inline "
            f"({', '.join(inline)}): chmod 600 it, or move them to *_file or environment variables"
        )
    for secret_file in config.source.secret_files:
        try:
            file_mode = stat.S_IMODE(secret_file.stat().st_mode)
        except OSError:
            continue
        if file_mode & stat.S_IROTH:
            problems.append(f"{secret_file} (mode {file_mode:04o}) holds a secret and is readable by others")
    return "; ".join(problems) or None
