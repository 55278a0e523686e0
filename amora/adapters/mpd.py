"""The agent's link to MPD (asyncio).

Two connections, both speaking the protocol directly (python-mpd2 only lends its exceptions and its
per-command answer parsers, so results look exactly as python-mpd2 returns them):
- the command connection: each `MpdCall` is written at once, in `call()`, as ONE command list
  (`command_list_ok_begin ... command_list_end`), so a command and its trailing `status` cost one
  round trip; calls are pipelined (MPD answers a connection's requests in order) and each answer
  is parsed and emitted straight from the protocol's `data_received`, with no queue or task hop.
  MPD stops a command list at the first failing command, which keeps "stop at the first error";
- the idle connection: `idle <subsystems>` and, after each wake-up, one command list that re-reads
  what changed and re-enters idle in the same write. python-mpd2's idle iterator waits
  IMMEDIATE_COMMAND_TIMEOUT (0.1 s) before re-entering idle, which would make the second event of
  a burst ~100 ms late; this path has no timer at all. It is the same protocol class as the command
  connection: the wake-up, the re-read and the MpdSnapshot all happen in `data_received`, with no
  task between MPD's notice and the event (an external change reaches the core that much sooner).

Failure handling follows /work/shared/notes/mpd.md: every request has a `settings.timeout`
deadline, and any timeout or connection error tears both connections down, fails the pending
calls with `connection_lost` and emits one `LinkDown`. Reconnecting is the core's decision
(`connect()`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import mpd

from amora.core.effects import MpdCall
from amora.core.events import Event, LinkDown, LinkUp, MpdResult, MpdSnapshot

IDLE_SUBSYSTEMS: tuple[str, ...] = (
    "player",
    "mixer",
    "options",
    "output",
    "playlist",
    "stored_playlist",
    "update",
    "database",
)

# Which snapshot fields each idle subsystem invalidates.
_REREAD: dict[str, tuple[str, ...]] = {
    "player": ("status", "song"),
    "playlist": ("status", "song"),
    "mixer": ("status",),
    "options": ("status",),
    "update": ("status",),
    "database": ("status",),
    "output": ("status", "outputs"),
    "stored_playlist": ("playlists",),
}
_FIELDS: tuple[str, ...] = ("status", "song", "outputs", "playlists")
_READ_COMMAND = {
    "status": "status",
    "song": "currentsong",
    "outputs": "outputs",
    "playlists": "listplaylists",
}
# Keys that start a new object in list answers, as python-mpd2 splits them.
_DELIMITERS: dict[str, tuple[str, ...]] = {"outputs": ("outputid",), "playlists": ("playlist",)}

# Commands that would break the link's own bookkeeping (or the server) are not callable as ops.
_FORBIDDEN = frozenset({"idle", "noidle", "close", "kill", "password"})

Parser = Callable[[Any, list[str]], Any]


def _python_mpd2_commands() -> dict[str, tuple[str, Parser]]:
    """python-mpd2 method name -> (command as sent, python-mpd2's parser of its answer). Commands
    with binary answers (albumart, readpicture) are left out: the command connection reads text."""
    table: dict[str, tuple[str, Parser]] = {}
    for klass in reversed(mpd.MPDClient.__mro__):
        for value in vars(klass).values():
            commands = getattr(value, "mpd_commands", None)
            if not commands or getattr(value, "mpd_commands_binary", False):
                continue
            for command in commands:
                name = command.replace(" ", "_")
                if name not in _FORBIDDEN:
                    table[name] = (command, value)
    return table


_COMMAND_TABLE = _python_mpd2_commands()
COMMANDS: frozenset[str] = frozenset(_COMMAND_TABLE)
# python-mpd2's parsers are methods that only use other parsing methods: an unconnected sync client
# is all the `self` they need.
_PARSER = mpd.MPDClient()
_SNAPSHOT_COMMANDS = ("status", "currentsong", "outputs", "listplaylists")

log = logging.getLogger("amora.adapters.mpd")

_LINK_ERRORS = (mpd.ConnectionError, mpd.ProtocolError, OSError, asyncio.TimeoutError)


@dataclass(frozen=True, slots=True, kw_only=True)
class MpdSettings:
    host: str = "localhost"  # a path starting with "/" or "@" (abstract) means a unix socket
    port: int = 6600
    password: str | None = None
    timeout: float = 5.0

    @property
    def is_unix(self) -> bool:
        return self.host.startswith(("/", "@"))


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"MPD did not answer within {timeout:g}s"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _set_nodelay(writer: asyncio.StreamWriter | None) -> None:
    sock = writer.get_extra_info("socket") if writer is not None else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _quote(arg: str) -> str:
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _op_arg(value: Any) -> str:
    """JSON-ish op argument -> its protocol form, as python-mpd2 would write it."""
    if isinstance(value, bool):  # before int: MPD wants 0/1, str(True) is "True"
        return '"1"' if value else '"0"'
    if isinstance(value, int | float | str):
        text = str(value)
        if "\n" in text or "\r" in text:
            raise ValueError("line breaks are not allowed in arguments")
        return _quote(text)
    if isinstance(value, list | tuple) and len(value) <= 2 and all(isinstance(v, int) for v in value):
        # a range START:END (python-mpd2 writes a tuple this way)
        return '"' + ":".join(str(int(v)) for v in value) + (":" if len(value) < 2 else "") + '"'
    raise ValueError(f"unsupported argument {value!r}")


def _plain(value: Any) -> Any:
    """python-mpd2 answers (which may be generators or tuples) -> plain lists/dicts/strings."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, str | bytes | int | float | bool) or value is None:
        return value
    if isinstance(value, Iterable):
        return [_plain(v) for v in value]
    return value


def parse_objects(lines: Iterable[str], delimiters: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """`key: value` lines -> objects exactly as python-mpd2 builds them (lowercase keys, repeated
    keys become lists, a delimiter key starts a new object)."""
    objs: list[dict[str, Any]] = []
    obj: dict[str, Any] = {}
    for line in lines:
        key, sep, value = line.partition(": ")
        if not sep:
            raise mpd.ProtocolError(f"Could not parse pair: {line!r}")
        key = key.lower()
        if obj:
            if key in delimiters:
                objs.append(obj)
                obj = {}
            elif key in obj:
                if isinstance(obj[key], list):
                    obj[key].append(value)
                else:
                    obj[key] = [obj[key], value]
                continue
        obj[key] = value
    if obj:
        objs.append(obj)
    return objs


def _parse_field(name: str, lines: list[str]) -> Any:
    objs = parse_objects(lines, _DELIMITERS.get(name, ()))
    if name in _DELIMITERS:
        return objs
    return objs[0] if objs else {}


Done = Callable[[list[list[str]] | None, str], None]


class _Request:
    """One request on the command connection. `done(parts, error)`: `parts` holds the answer lines
    of each command that completed (None when the connection was lost), `error` MPD's ACK text
    (or the reason the connection was lost), "" on success."""

    __slots__ = ("done", "listed", "parts", "timer")

    def __init__(self, done: Done, listed: bool, timer: asyncio.TimerHandle | None) -> None:
        self.done = done
        self.listed = listed
        self.parts: list[list[str]] = [[]]
        self.timer = timer


class _CommandConnection(asyncio.Protocol):
    """The command connection: requests are written at once and answered in order, each answer
    handed to its request's callback straight from `data_received`."""

    def __init__(self, on_lost: Callable[[str], None]) -> None:
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._pending: collections.deque[_Request | Callable[[], None]] = collections.deque()
        self._closing = False
        self.greeting: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, settings: MpdSettings, on_lost: Callable[[str], None]) -> _CommandConnection:
        loop = asyncio.get_running_loop()
        if settings.is_unix:
            path = "\0" + settings.host[1:] if settings.host.startswith("@") else settings.host
            _, conn = await loop.create_unix_connection(lambda: cls(on_lost), path)
        else:
            _, conn = await loop.create_connection(lambda: cls(on_lost), settings.host, settings.port)
        try:
            await conn.greeting
        except BaseException:
            conn.close()
            raise
        return conn

    # -- requests --------------------------------------------------------------------------------
    def request(self, commands: list[str], done: Done, timer: asyncio.TimerHandle | None = None) -> None:
        """Send `commands` as one command list (a single command goes bare) and queue `done`."""
        assert self._transport is not None
        self._transport.write(self._queue(commands, done, timer).encode("utf-8"))

    def request_then(
        self, commands: list[str], done: Done, timer: asyncio.TimerHandle | None, then: str, then_done: Done
    ) -> None:
        """`request(commands, ...)` followed by the bare command `then`, in one write."""
        assert self._transport is not None
        text = self._queue(commands, done, timer) + self._queue([then], then_done, None)
        self._transport.write(text.encode("utf-8"))

    def _queue(self, commands: list[str], done: Done, timer: asyncio.TimerHandle | None) -> str:
        listed = len(commands) != 1
        self._pending.append(_Request(done, listed, timer))
        if listed:
            return "command_list_ok_begin\n" + "\n".join(commands) + "\ncommand_list_end\n"
        return commands[0] + "\n"

    def after_pending(self, fn: Callable[[], None]) -> None:
        """Run `fn` once every request sent so far is answered (at once if none is pending), so
        results that need no round trip still come out in call order."""
        if self._pending:
            self._pending.append(fn)
        else:
            fn()

    def fail_all(self, reason: str) -> None:
        pending, self._pending = self._pending, collections.deque()
        for item in pending:
            if isinstance(item, _Request):
                if item.timer is not None:
                    item.timer.cancel()
                item.done(None, reason)
            else:
                item()

    def close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        end = buffer.rfind(b"\n")
        if end < 0:
            self._buffer = buffer
            return
        self._buffer = buffer[end + 1 :]
        try:
            # one decode for the whole chunk: a UTF-8 sequence never spans a line break
            lines = buffer[:end].decode("utf-8").split("\n")
            # answer lines go straight to the request at the head; only the lines that end a
            # command (or an answer) take the full path
            head = self._head()
            for line in lines:
                if head is not None and line != "OK" and line != "list_OK" and not line.startswith("ACK "):
                    head.parts[-1].append(line)
                    continue
                self._line(line)
                head = self._head()
        except (mpd.ProtocolError, UnicodeDecodeError) as exc:
            self._lost(f"{type(exc).__name__}: {exc}")

    def _head(self) -> _Request | None:
        """The request the next answer line belongs to, once greeted."""
        if not self._pending or not self.greeting.done():
            return None
        head = self._pending[0]
        return head if isinstance(head, _Request) else None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.greeting.done():
            self.greeting.set_exception(mpd.ConnectionError("MPD closed the connection"))
        self._lost(f"connection to MPD lost: {exc}" if exc else "MPD closed the connection")

    def _lost(self, reason: str) -> None:
        if self._closing:
            return
        self.close()
        self._on_lost(reason)

    def _line(self, line: str) -> None:
        if not self.greeting.done():
            if line.startswith("OK MPD "):
                self.greeting.set_result(line)
            else:
                self.greeting.set_exception(mpd.ProtocolError(f"unexpected greeting {line[:40]!r}"))
            return
        if not self._pending or not isinstance(self._pending[0], _Request):
            raise mpd.ProtocolError(f"unexpected line from MPD: {line[:40]!r}")
        request = self._pending[0]
        if line == "list_OK" and request.listed:
            request.parts.append([])
            return
        if line == "OK":
            error = ""
        elif line.startswith("ACK "):
            error = line[4:].strip()
        else:
            request.parts[-1].append(line)
            return
        self._pending.popleft()
        if request.timer is not None:
            request.timer.cancel()
        parts = request.parts
        # A listed answer ends each command with list_OK: the last part is the (empty) tail, or
        # the failing command's. A bare command's only part is its answer, unless it failed.
        if request.listed or error:
            parts = parts[:-1]
        try:
            request.done(parts, error)
        except Exception:
            log.exception("MPD answer handler failed")
        while self._pending and not isinstance(self._pending[0], _Request):
            self._pending.popleft()()


class _Op:
    __slots__ = ("name", "parser")

    def __init__(self, name: str, parser: Parser | None) -> None:
        self.name = name  # "snapshot" for the special op (its four commands, no parser)
        self.parser = parser


class _BadOp(Exception):
    pass


def _compile(ops: list[list[Any]]) -> tuple[list[str], list[_Op]]:
    """MpdCall ops -> protocol lines and how to read their answers; checks every op before
    anything is sent, so a malformed call changes nothing."""
    lines: list[str] = []
    layout: list[_Op] = []
    for op in ops:
        if not op or not isinstance(op[0], str):
            raise _BadOp(f"malformed op {op!r}")
        name = op[0]
        if name == "snapshot":
            lines.extend(_SNAPSHOT_COMMANDS)
            layout.append(_Op("snapshot", None))
            continue
        entry = _COMMAND_TABLE.get(name)
        if entry is None:
            raise _BadOp(f"unknown MPD command {name!r}")
        command, parser = entry
        try:
            args = [_op_arg(a) for a in op[1:]]
        except ValueError as exc:
            raise _BadOp(f"{name}: {exc}") from None
        lines.append(" ".join([command, *args]))
        layout.append(_Op(name, parser))
    return lines, layout


def _parse_answer(parser: Parser, lines: list[str]) -> Any:
    return _plain(parser(_PARSER, lines))


class MpdLink:
    def __init__(
        self,
        settings: MpdSettings,
        emit: Callable[[Event], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._emit = emit
        self._clock = clock
        self._idle_command = "idle " + " ".join(IDLE_SUBSYSTEMS)
        self._generation = 0  # bumped per connect/close, so a stale answer cannot report a new link
        self._up = False
        self._conn: _CommandConnection | None = None
        self._idle: _CommandConnection | None = None
        self._held_wake: Callable[[], None] | None = None  # an idle answer that came during connect()
        # For the one snapshot each idle wake-up produces: the runtime may handle it at once
        # (Runtime.emit_now, set when attached); everything else goes through `emit`.
        self.emit_now: Callable[[Event], None] | None = None
        self._update_waiters: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def connected(self) -> bool:
        return self._up

    # -- public API ----------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open both connections; emit LinkUp and a full MpdSnapshot, or one LinkDown on failure.
        A no-op while the link is up."""
        if self._up:
            return
        self._generation += 1
        generation = self._generation
        settings = self._settings
        conn: _CommandConnection | None = None
        idle: _CommandConnection | None = None
        failure: list[str] = []  # a connection lost while connecting

        def lost(reason: str) -> None:
            if generation == self._generation and not self._up:
                failure.append(reason)
                for c in (conn, idle):
                    if c is not None:
                        c.fail_all(reason)  # whatever connect() awaits fails now
            else:
                self._lost(generation, reason)

        try:
            async with asyncio.timeout(settings.timeout):
                conn = await _CommandConnection.open(settings, lost)
                if settings.password is not None:
                    await _ask(conn, [f"password {_quote(settings.password)}"])
                idle = await _CommandConnection.open(settings, lost)
                if settings.password is not None:
                    await _ask(idle, [f"password {_quote(settings.password)}"])
                # Enter idle before reading the snapshot: a change between the two is then reported.
                self._enter_idle(idle, generation)
                parts = await _ask(conn, list(_SNAPSHOT_COMMANDS))
                snapshot = self._snapshot(parts)
                if failure:
                    raise mpd.ConnectionError(failure[0])
        except (*_LINK_ERRORS, mpd.CommandError) as exc:
            self._held_wake = None
            if conn is not None:
                conn.close()
            if idle is not None:
                idle.close()
            if generation == self._generation:
                reason = failure[0] if failure else _reason(exc, settings.timeout)
                self._emit(LinkDown(at=self._clock(), link="mpd", reason=reason))
            return
        if generation != self._generation:  # close() ran meanwhile
            self._held_wake = None
            conn.close()
            idle.close()
            return
        self._conn, self._idle, self._up = conn, idle, True
        self._emit(LinkUp(at=self._clock(), link="mpd"))
        self._emit(dataclasses.replace(snapshot, at=self._clock()))  # keep `at` monotonic
        held, self._held_wake = self._held_wake, None
        if held is not None:
            held()  # a change while connecting: reported after LinkUp and the first snapshot

    def call(self, effect: MpdCall) -> None:
        """Send `effect` now; its MpdResult (and, for a "snapshot" op, an MpdSnapshot first) is
        emitted when MPD answers, in call order. While the link is down it fails at once with
        connection_lost."""
        conn = self._conn
        if not self._up or conn is None:
            self._emit(
                MpdResult(
                    at=self._clock(),
                    call_id=effect.call_id,
                    ok=False,
                    error="MPD is not connected",
                    connection_lost=True,
                )
            )
            return
        try:
            lines, layout = _compile(effect.ops)
        except _BadOp as exc:
            error = str(exc)
            conn.after_pending(
                lambda: self._emit(MpdResult(at=self._clock(), call_id=effect.call_id, ok=False, error=error))
            )
            return
        if not lines:
            conn.after_pending(lambda: self._emit(MpdResult(at=self._clock(), call_id=effect.call_id)))
            return
        generation = self._generation

        def done(parts: list[list[str]] | None, error: str) -> None:
            self._finish_call(effect.call_id, layout, parts, error, generation)

        conn.request(lines, done, self._deadline(generation))

    async def update_database(self, path: str | None = None) -> None:
        """Run `update [path]` and return when that job has finished. Raises mpd.CommandError for
        MPD's refusal (e.g. a missing path) and mpd.ConnectionError if the link goes down."""
        conn = self._conn
        if not self._up or conn is None:
            raise mpd.ConnectionError("MPD is not connected")
        loop = asyncio.get_running_loop()
        command = "update" + (f" {_quote(path)}" if path else "")
        parts = await _ask(conn, [command], self._deadline(self._generation))
        job = int(_parse_answer(_COMMAND_TABLE["update"][1], parts[0]))
        waiter: asyncio.Future[None] = loop.create_future()
        entry = (job, waiter)
        self._update_waiters.append(entry)
        try:
            # The job may already be over (its update event then came before we listened).
            conn = self._conn
            if conn is None:
                raise mpd.ConnectionError("MPD is not connected")
            (status,) = await _ask(conn, ["status"], self._deadline(self._generation))
            self._check_updates(_parse_answer(_COMMAND_TABLE["status"][1], status))
            await waiter
        finally:
            with contextlib.suppress(ValueError):
                self._update_waiters.remove(entry)

    async def close(self) -> None:
        """Drop both connections. Pending calls fail with connection_lost; no LinkDown is emitted
        (the core asked for this)."""
        self._generation += 1
        self._up = False
        self._teardown("MPD link closed")

    # -- command connection ----------------------------------------------------------------------
    def _deadline(self, generation: int) -> asyncio.TimerHandle:
        timeout = self._settings.timeout
        return asyncio.get_running_loop().call_later(
            timeout, self._lost, generation, f"MPD did not answer within {timeout:g}s"
        )

    def _finish_call(
        self, call_id: int, layout: list[_Op], parts: list[list[str]] | None, error: str, generation: int
    ) -> None:
        if parts is None:
            self._emit(
                MpdResult(at=self._clock(), call_id=call_id, ok=False, error=error, connection_lost=True)
            )
            return
        results: list[Any] = []
        at = 0
        try:
            for op in layout:
                if op.name == "snapshot":
                    if at + len(_SNAPSHOT_COMMANDS) > len(parts):
                        break
                    self._emit(self._snapshot(parts[at : at + len(_SNAPSHOT_COMMANDS)]))
                    at += len(_SNAPSHOT_COMMANDS)
                    results.append(None)
                    continue
                if at >= len(parts):
                    break
                assert op.parser is not None
                results.append(_parse_answer(op.parser, parts[at]))
                at += 1
        except mpd.ProtocolError as exc:
            reason = _reason(exc, self._settings.timeout)
            self._emit(
                MpdResult(at=self._clock(), call_id=call_id, ok=False, error=reason, connection_lost=True)
            )
            self._lost(generation, reason)
            return
        if error:
            self._emit(MpdResult(at=self._clock(), call_id=call_id, ok=False, results=results, error=error))
        else:
            self._emit(MpdResult(at=self._clock(), call_id=call_id, ok=True, results=results))

    def _snapshot(self, parts: list[list[str]]) -> MpdSnapshot:
        status, song, outputs, playlists = (
            _parse_answer(_COMMAND_TABLE[name][1], lines)
            for name, lines in zip(_SNAPSHOT_COMMANDS, parts, strict=True)
        )
        self._check_updates(status)
        return MpdSnapshot(at=self._clock(), status=status, song=song, outputs=outputs, playlists=playlists)

    # -- idle connection -------------------------------------------------------------------------
    def _enter_idle(self, idle: _CommandConnection, generation: int) -> None:
        idle.request([self._idle_command], lambda parts, error: self._woke(idle, generation, parts, error))

    def _woke(
        self, idle: _CommandConnection, generation: int, parts: list[list[str]] | None, error: str
    ) -> None:
        """MPD's answer to idle: re-read what changed (and idle again), or report the failure."""
        if parts is None or generation != self._generation:
            return  # the connection is gone; its loss was reported once already
        if not self._up:
            self._held_wake = lambda: self._woke(idle, generation, parts, error)
            return
        if error:
            self._lost(generation, f"CommandError: {error}")
            return
        changed = [line.partition(": ")[2] for line in parts[0]]
        wanted = {f for sub in changed for f in _REREAD.get(sub, ())}
        fields = [f for f in _FIELDS if f in wanted]
        if not fields:
            self._enter_idle(idle, generation)
            return
        commands = [_READ_COMMAND[f] for f in fields]

        def reread(parts: list[list[str]] | None, error: str) -> None:
            self._reread(idle, generation, fields, parts, error)

        timer = self._deadline(generation)
        if self._settings.is_unix:
            # Re-read, then idle again at once: changes during the re-read are held by MPD for that
            # next idle, so the second event of a burst is never delayed by a timer.
            idle.request_then(
                commands,
                reread,
                timer,
                self._idle_command,
                lambda parts, error: self._woke(idle, generation, parts, error),
            )
        else:
            # Over TCP, MPD (no TCP_NODELAY) would hold an immediate idle answer behind the
            # unacknowledged re-read answer until our delayed ACK (~40 ms); sending idle only after
            # the answer arrived carries that ACK.
            idle.request(commands, reread, timer)

    def _reread(
        self,
        idle: _CommandConnection,
        generation: int,
        fields: list[str],
        parts: list[list[str]] | None,
        error: str,
    ) -> None:
        if parts is None or generation != self._generation:
            return
        if error or len(parts) != len(fields):
            self._lost(generation, f"CommandError: {error}" if error else "malformed command list answer")
            return
        if not self._settings.is_unix:
            self._enter_idle(idle, generation)
        try:
            values = {f: _parse_field(f, lines) for f, lines in zip(fields, parts, strict=True)}
        except mpd.ProtocolError as exc:
            self._lost(generation, _reason(exc, self._settings.timeout))
            return
        (self.emit_now or self._emit)(MpdSnapshot(at=self._clock(), **values))
        if "status" in values:
            self._check_updates(values["status"])

    def _check_updates(self, status: dict[str, Any]) -> None:
        running = status.get("updating_db")
        for job, waiter in list(self._update_waiters):
            if (running is None or int(running) > job) and not waiter.done():
                waiter.set_result(None)

    # -- failure -------------------------------------------------------------------------------
    def _lost(self, generation: int, reason: str) -> None:
        """Tear the link down once per connection and tell the core."""
        if generation != self._generation or not self._up:
            return
        self._up = False
        self._generation += 1
        self._teardown(reason)
        self._emit(LinkDown(at=self._clock(), link="mpd", reason=reason))

    def _teardown(self, reason: str) -> None:
        conn, idle = self._conn, self._idle
        self._conn = self._idle = None
        if idle is not None:
            idle.close()
            idle.fail_all(reason)
        if conn is not None:
            conn.close()
            conn.fail_all(reason)
        for _, waiter in self._update_waiters:
            if not waiter.done():
                waiter.set_exception(mpd.ConnectionError(reason))


async def _ask(
    conn: _CommandConnection, commands: list[str], timer: asyncio.TimerHandle | None = None
) -> list[list[str]]:
    """A request as a future: the answer lines per command; CommandError for an ACK,
    ConnectionError if the connection goes first."""
    fut: asyncio.Future[list[list[str]]] = asyncio.get_running_loop().create_future()

    def done(parts: list[list[str]] | None, error: str) -> None:
        if fut.done():
            return
        if parts is None:
            fut.set_exception(mpd.ConnectionError(error))
        elif error:
            fut.set_exception(mpd.CommandError(error))
        else:
            fut.set_result(parts)

    conn.request(commands, done, timer)
    return await fut
