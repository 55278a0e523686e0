"""Logging setup: readable lines (journald priority prefixes under systemd) or JSON lines, and a
filter that removes secrets from every record before any formatter sees it.

Under systemd, stderr is a stream to journald and JOURNAL_STREAM names its device and inode. A line
that starts with `<N>` (N the syslog priority, sd-daemon(3)) is stored with that priority, so
`journalctl -p warning` works. The journal stamps its own time, so the text format drops ours there.
Each line of a multi-line record (a traceback) gets the prefix, since journald splits on newlines.

Redaction happens in a handler filter, on the final message (after %-args are merged), on the
exception and stack text (formatted once, then cleaned, then stored as `exc_text` so no formatter
formats the raw exception again) and on extra fields. Known secret values are replaced wherever
they appear, also URL-, JSON- or repr-escaped; patterns catch secrets the agent was never told
about (keys in connection strings, SAS signatures, passwords in URLs and key=value text).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Iterable
from typing import Any, Literal, TextIO
from urllib.parse import quote, quote_plus

REDACTED = "***"

# Names whose values are secrets in connection strings, URLs, key=value text, reprs and JSON. The long
# names may carry a prefix (mqtt_password, sas_token, AZURE_STORAGE_ACCOUNT_KEY); the short ones not.
_SECRET_KEY = (
    r"(?:[\w.-]*?(?:password|passwd|secret|token|access_?key|account_?key|api_?key"
    r"|SharedAccessKey|SharedAccessSignature)|pwd|sig)"
)
_VALUE = r"(?:\"[^\"]*\"|'[^']*'|[^\s\"'&;,}<>]+)"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # SAS token as a credential: "SharedAccessSignature sr=...&sig=...&se=..."
    (re.compile(r"SharedAccessSignature\s+[^\s\"';,]+"), f"SharedAccessSignature {REDACTED}"),
    # SAS query string (blob URLs): everything from sv= to the end of the query.
    (re.compile(r"(?<![\w-])sv=\d{4}-\d{2}-\d{2}[^\s\"'<>#]*"), f"sv={REDACTED}"),
    # key=value anywhere; key: value only with a quoted key (JSON, dict reprs), so that prose such as
    # "wrong password: check the config" keeps its words.
    (
        re.compile(
            r"(?i)(?<![\w.-])(?P<head>(?P<q>[\"'])?" + _SECRET_KEY + r"(?(q)(?P=q)\s*[:=]|\s*=)\s*)" + _VALUE
        ),
        r"\g<head>" + REDACTED,
    ),
    # user:password@host in URLs (mqtt://, amqps://, https://).
    (re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^\s/:@]+:)[^\s/@]+@"), r"\g<head>" + REDACTED + "@"),
    (re.compile(r"(?i)(?P<head>\bBearer\s+)[\w.~+/=-]+"), r"\g<head>" + REDACTED),
)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}

# sd-daemon(3) / syslog(3) priorities.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    for threshold, prio in _PRIORITIES:
        if levelno >= threshold:
            return prio
    return 7


class Redactor:
    """Replaces known secret values and secret-looking patterns in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._literal: re.Pattern[str] | None = None
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        for secret in secrets:
            if secret and secret.strip():
                self._secrets.update(_variants(secret))
        ordered = sorted(self._secrets, key=len, reverse=True)  # longest first: no partial leftovers
        self._literal = re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None

    def __call__(self, text: str) -> str:
        if self._literal is not None:
            text = self._literal.sub(REDACTED, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


def _variants(secret: str) -> set[str]:
    """The secret as it may be written: raw, escaped, and the key parts of a connection string."""
    out = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1], repr(secret)[1:-1]}
    for part in secret.split(";"):
        key, sep, value = part.partition("=")
        if sep and value and key.strip() in ("SharedAccessKey", "AccountKey", "SharedAccessSignature"):
            out |= _variants(value) if value != secret else set()
    return {v for v in out if v}


class RedactingFilter(logging.Filter):
    """Handler filter: rewrites each record so it carries no secret (message, args, exception, stack,
    extra fields). Add secrets learnt later (a new config) with `add_secrets`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.redactor = Redactor(secrets)

    def add_secrets(self, *secrets: str | None) -> None:
        self.redactor.add(*secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_amora_redacted", False):
            return True
        redact = self.redactor
        try:
            message = record.getMessage()
        except Exception as exc:  # a bad format string must not hide the record, nor leak args
            message = f"{record.msg!s} (unformattable log arguments: {type(exc).__name__})"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            text = record.exc_text or "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = redact(text)
            # Formatters re-render exc_info when exc_text is empty; drop it so none sees the raw text.
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                record.__dict__[key] = _redact_value(value, redact)
        record._amora_redacted = True
        return True


def _redact_value(value: Any, redact: Redactor) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, dict):
        return {redact(str(k)): _redact_value(v, redact) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v, redact) for v in value]
    return redact(repr(value))


def journal_stream_matches(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """True if `stream` is the journald stream systemd connected us to (JOURNAL_STREAM=dev:inode)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return st.st_dev == int(dev) and st.st_ino == int(ino)
    except (OSError, ValueError, AttributeError):
        return False


class TextFormatter(logging.Formatter):
    def __init__(self, *, journal: bool) -> None:
        fmt = "%(levelname)s %(name)s: %(message)s"
        super().__init__(fmt if journal else "%(asctime)s " + fmt)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        return _prefix(super().format(record), record, self.journal)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, message, exc, extra fields."""

    def __init__(self, *, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            obj["exc"] = record.exc_text
        if record.stack_info:
            obj["stack"] = record.stack_info
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and key not in obj:
                obj[key] = value
        line = json.dumps(obj, default=repr, ensure_ascii=False)
        return _prefix(line, record, self.journal)


def _prefix(text: str, record: logging.LogRecord, journal: bool) -> str:
    if not journal:
        return text
    prio = f"<{syslog_priority(record.levelno)}>"
    return "\n".join(prio + line for line in text.split("\n"))


_HANDLER_MARK = "_amora_handler"


def setup_logging(
    level: int | str = "INFO",
    fmt: Literal["text", "json"] = "text",
    secrets: Iterable[str] = (),
    *,
    stream: TextIO | None = None,
    environ: dict[str, str] | None = None,
) -> RedactingFilter:
    """Configure the root logger: one handler on `stream` (stderr) with redaction. Calling it again
    replaces the handler it installed before. Returns the filter, to add secrets later."""
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r} (expected 'text' or 'json')")
    out = stream if stream is not None else sys.stderr
    journal = journal_stream_matches(out, environ)
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter(journal=journal) if fmt == "json" else TextFormatter(journal=journal))
    redacting = RedactingFilter(secrets)
    handler.addFilter(redacting)
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)
    return redacting
