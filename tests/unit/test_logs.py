"""Log formats (text, JSON, journald prefixes) and secret redaction in every one of them."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from amora.logs import REDACTED, Redactor, journal_stream_matches, setup_logging, syslog_priority

KEY = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="
CONN = f"HostName=hub.azure-devices.net;DeviceId=dev-1;SharedAccessKey={KEY}"
PASSWORD = "s3cr3t-Br0ker-pass"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
STORAGE = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={ACCOUNT_KEY};EndpointSuffix=core"
SECRETS = [CONN, PASSWORD, STORAGE]
# Secrets the agent was never told about; the patterns must catch them.
UNKNOWN_KEY = "dW5rbm93bi1rZXktdmFsdWUtMTIzNDU2Nzg5MGFiY2Q="
SAS_SIG = "aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789%2B%2F%3D"
SAS_TOKEN = f"SharedAccessSignature sr=hub.azure-devices.net%2Fdevices%2Fdev-1&sig={SAS_SIG}&se=1700000000"
BLOB_URL = (
    f"https://acct.blob.core.windows.net/music/a.mp3?sv=2021-08-06&ss=b&sp=r&se=2030-01-01&sig={SAS_SIG}"
)
OTHER_PASSWORD = "other-Pa55word-never-configured"
MUST_NOT_APPEAR = [CONN, KEY, PASSWORD, ACCOUNT_KEY, UNKNOWN_KEY, SAS_SIG, OTHER_PASSWORD]


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)
    logging.captureWarnings(False)


Fmt = Literal["text", "json"]


class Output:
    def __init__(self, tmp_path: Path, fmt: Fmt, journal: bool) -> None:
        self.path = tmp_path / "log"
        # A real file, so that JOURNAL_STREAM can name its device and inode like journald's socket.
        self.stream = open(self.path, "w+", encoding="utf-8")  # noqa: SIM115
        st_ = os.fstat(self.stream.fileno())
        environ = {"JOURNAL_STREAM": f"{st_.st_dev}:{st_.st_ino}"} if journal else {}
        self.filter = setup_logging("DEBUG", fmt, SECRETS, stream=self.stream, environ=environ)

    def text(self) -> str:
        self.stream.flush()
        return self.path.read_text(encoding="utf-8")


@pytest.fixture(params=[("text", False), ("text", True), ("json", False), ("json", True)], ids=str)
def out(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Output]:
    o = Output(tmp_path, request.param[0], request.param[1])
    yield o
    o.stream.close()


def assert_clean(text: str) -> None:
    for secret in MUST_NOT_APPEAR:
        assert secret not in text, f"secret leaked: {secret[:6]}... in {text!r}"


def _connect(conn: str) -> None:
    raise ConnectionError(f"cannot connect with {conn}")


def test_no_secret_in_messages_args_extras(out: Output) -> None:
    log = logging.getLogger("amora.test")
    log.info("connecting with %s", CONN)
    log.warning("broker password is %r", PASSWORD)
    log.error("storage: %(conn)s", {"conn": STORAGE})
    log.info("bare key %s and json %s", KEY, json.dumps({"password": PASSWORD}))
    log.info("unknown: SharedAccessKey=%s; password=%s", UNKNOWN_KEY, OTHER_PASSWORD)
    log.info("sas %s url %s", SAS_TOKEN, BLOB_URL)
    log.info("url mqtts://user:%s@broker:8883", OTHER_PASSWORD)
    log.info("config %s", {"broker": {"password": OTHER_PASSWORD}, "iot": {"connection_string": CONN}})
    log.info("extras", extra={"conn": CONN, "nested": {"pw": [PASSWORD]}, "n": 3})
    log.info("stack", stack_info=True, extra={"pw": PASSWORD})
    text = out.text()
    assert_clean(text)
    assert REDACTED in text
    assert "connecting with ***" in text and "unknown: SharedAccessKey=***; password=***" in text


def test_no_secret_in_exception_tracebacks(out: Output) -> None:
    log = logging.getLogger("amora.test")
    try:
        try:
            _connect(CONN)
        except ConnectionError as exc:
            raise RuntimeError(f"giving up (password={OTHER_PASSWORD}, key {KEY})") from exc
    except RuntimeError:
        log.exception("link failed for %s", PASSWORD)
    try:
        raise ValueError({"url": BLOB_URL, "token": SAS_TOKEN})
    except ValueError as exc:
        log.warning("sync failed", exc_info=exc)
    text = out.text()
    assert_clean(text)
    assert "Traceback (most recent call last)" in text
    assert "ConnectionError: cannot connect with" in text
    assert "The above exception was the direct cause" in text


def test_secrets_added_later_are_redacted(out: Output) -> None:
    new_password = "rotated-PW-2024-xyz"
    out.filter.add_secrets(new_password, None, "")
    logging.getLogger("amora.test").info("now using %s", new_password)
    assert new_password not in out.text()


def test_other_handlers_see_the_redacted_record(out: Output) -> None:
    """The record is cleaned in place, so a handler that runs after ours (pytest's, a library's)
    does not get the raw exception or args either."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(logging.Formatter().format(record))

    collect = Collect()
    logging.getLogger().addHandler(collect)
    try:
        try:
            _connect(CONN)
        except ConnectionError:
            logging.getLogger("amora.test").exception("failed with %s", PASSWORD)
    finally:
        logging.getLogger().removeHandler(collect)
    assert seen
    assert_clean("\n".join(seen))


def test_text_format_outside_journal(tmp_path: Path) -> None:
    o = Output(tmp_path, "text", journal=False)
    logging.getLogger("amora.mqtt").warning("broker down")
    line = o.text().strip()
    assert line.endswith("WARNING amora.mqtt: broker down")
    assert not line.startswith("<")
    assert line[:4].isdigit()  # a timestamp first: nobody else adds one


def test_journal_prefixes_every_line(tmp_path: Path) -> None:
    o = Output(tmp_path, "text", journal=True)
    log = logging.getLogger("amora.x")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    try:
        raise OSError("disk")
    except OSError:
        log.exception("boom")
    lines = o.text().splitlines()
    assert lines[:5] == [
        "<7>DEBUG amora.x: d",
        "<6>INFO amora.x: i",
        "<4>WARNING amora.x: w",
        "<3>ERROR amora.x: e",
        "<2>CRITICAL amora.x: c",
    ]
    assert lines[5] == "<3>ERROR amora.x: boom"
    assert all(line.startswith("<3>") for line in lines[5:])
    assert lines[-1] == "<3>OSError: disk"


def test_journal_stream_must_match_stderr(tmp_path: Path) -> None:
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        st_ = os.fstat(b.fileno())
        env = {"JOURNAL_STREAM": f"{st_.st_dev}:{st_.st_ino}"}
        assert journal_stream_matches(b, env)
        assert not journal_stream_matches(a, env)  # our stderr was redirected elsewhere
        assert not journal_stream_matches(a, {})
        assert not journal_stream_matches(a, {"JOURNAL_STREAM": "junk"})
        assert not journal_stream_matches(io.StringIO(), env)


def test_json_lines(tmp_path: Path) -> None:
    o = Output(tmp_path, "json", journal=False)
    log = logging.getLogger("amora.sync")
    log.info("synced %d files", 3, extra={"files": 3, "path": Path("/srv/music"), "op_id": "7"})
    try:
        raise KeyError("x")
    except KeyError:
        log.error("failed", exc_info=True)
    first, second = (json.loads(line) for line in o.text().splitlines())
    assert first["level"] == "INFO" and first["logger"] == "amora.sync"
    assert first["message"] == "synced 3 files"
    assert first["files"] == 3 and first["op_id"] == "7" and first["path"] == "PosixPath('/srv/music')"
    assert first["ts"].endswith("+00:00") and "T" in first["ts"]
    assert second["level"] == "ERROR" and "KeyError: 'x'" in second["exc"]


def test_json_lines_under_journal_keep_one_object_per_line(tmp_path: Path) -> None:
    o = Output(tmp_path, "json", journal=True)
    try:
        raise ValueError("multi\nline")
    except ValueError:
        logging.getLogger("amora").exception("x")
    (line,) = o.text().splitlines()
    assert line.startswith("<3>{")
    assert json.loads(line[3:])["exc"].endswith("ValueError: multi\nline")


def test_setup_twice_keeps_one_handler(tmp_path: Path) -> None:
    before = len(logging.getLogger().handlers)
    Output(tmp_path, "text", journal=False)
    Output(tmp_path, "json", journal=False)
    assert len(logging.getLogger().handlers) == before + 1


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError):
        setup_logging("INFO", "xml", [])  # type: ignore[arg-type]


def test_bad_format_string_does_not_leak_args(out: Output) -> None:
    logging.getLogger("amora").info("%d", PASSWORD)
    assert_clean(out.text())


@pytest.mark.parametrize(
    ("levelno", "prio"),
    [
        (logging.DEBUG, 7),
        (logging.INFO, 6),
        (logging.WARNING, 4),
        (logging.ERROR, 3),
        (logging.CRITICAL, 2),
        (5, 7),
    ],
)
def test_syslog_priority(levelno: int, prio: int) -> None:
    assert syslog_priority(levelno) == prio


def test_prose_is_left_alone() -> None:
    r = Redactor()
    for text in ["wrong password: check the config", "token expired, renewing", "design=ok", "sig"]:
        assert r(text) == text


_SECRET_ALPHABET = st.characters(min_codepoint=33, max_codepoint=0x2FF, blacklist_characters="*")


def _emit(path: Path, value: str, template: str, fmt: Fmt, journal: bool, in_exception: bool) -> str:
    """Log `value` through `template` into a fresh file; return what a reader sees (JSON decoded)."""
    with open(path, "w+", encoding="utf-8") as stream:
        st_ = os.fstat(stream.fileno())
        environ = {"JOURNAL_STREAM": f"{st_.st_dev}:{st_.st_ino}"} if journal else {}
        setup_logging("INFO", fmt, [value], stream=stream, environ=environ)
        args: Any = (value,) * template.count("%")
        if in_exception:
            try:
                raise RuntimeError(template % args)
            except RuntimeError:
                logging.getLogger("amora.h").exception("failed")
        else:
            logging.getLogger("amora.h").info(template, *args)
        stream.flush()
        text = path.read_text(encoding="utf-8")
    if fmt == "json":
        # JSON escapes quotes, backslashes and control characters: judge the decoded values.
        decoded = [json.loads(line[line.index("{") :]) for line in text.splitlines()]
        text += "\n".join(str(v) for obj in decoded for v in obj.values())
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    secret=st.text(_SECRET_ALPHABET, min_size=6, max_size=40),
    template=st.sampled_from(
        ["%s", "x=%r", "url https://h/p?%s", "{'a': %r}", "[%s]", "conn;%s;end", "\n%s\n", "%s%s"]
    ),
    fmt=st.sampled_from(["text", "json"]),
    journal=st.booleans(),
    in_exception=st.booleans(),
)
def test_any_known_secret_never_survives(
    tmp_path: Path, secret: str, template: str, fmt: Fmt, journal: bool, in_exception: bool
) -> None:
    # A "secret" that is part of the log line's own skeleton (a level name, a file path, a
    # timestamp) cannot be told apart from it; real secrets are random and contain letters.
    assume(any(c.isalpha() for c in secret))
    reference = _emit(tmp_path / "ref", "\x01placeholder\x01", template, fmt, journal, in_exception)
    assume(secret not in reference)
    assert secret not in _emit(tmp_path / "out", secret, template, fmt, journal, in_exception)
