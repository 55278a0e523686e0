"""The agent's link to MPD (asyncio).

Two connections:
- the command connection (python-mpd2's asyncio client) runs `MpdCall` ops strictly in the order
  `call()` was invoked, each bounded by `settings.timeout`;
- the idle connection speaks the protocol directly: `idle <subsystems>` and, after each wake-up, one
  command list that re-reads what changed and re-enters idle in the same write. python-mpd2's idle
  iterator waits IMMEDIATE_COMMAND_TIMEOUT (0.1 s) before re-entering idle, which would make the
  second event of a burst ~100 ms late; this path has no timer at all.

Failure handling follows /work/shared/notes/mpd.md: every command is awaited as
`wait_for(shield(...))` (cancelling a python-mpd2 command can hang the others forever), and any
timeout or connection error tears both connections down, fails the pending calls with
`connection_lost` and emits one `LinkDown`. Reconnecting is the core's decision (`connect()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import mpd
import mpd.asyncio

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


def _python_mpd2_commands() -> frozenset[str]:
    names: set[str] = set()
    for klass in mpd.asyncio.MPDClient.__mro__:
        for value in vars(klass).values():
            commands = getattr(value, "mpd_commands", None)
            if commands:
                names.update(c.replace(" ", "_") for c in commands)
    return frozenset(names - _FORBIDDEN)


COMMANDS: frozenset[str] = _python_mpd2_commands()

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


class _LinkFailed(Exception):
    """Internal: the link went down while a task was using it (already reported)."""


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


def _op_arg(value: Any) -> Any:
    """JSON-ish op argument -> what python-mpd2 writes correctly."""
    if isinstance(value, bool):  # before int: MPD wants 0/1, str(True) is "True"
        return "1" if value else "0"
    if isinstance(value, int | float | str):
        return value
    if isinstance(value, list | tuple) and len(value) <= 2 and all(isinstance(v, int) for v in value):
        return tuple(value)  # python-mpd2 writes a tuple as a range "START:END"
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


class _IdleConnection:
    """A bare MPD protocol connection used only for idle and the re-reads that follow it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, settings: MpdSettings) -> _IdleConnection:
        if settings.is_unix:
            path = "\0" + settings.host[1:] if settings.host.startswith("@") else settings.host
            reader, writer = await asyncio.open_unix_connection(path)
        else:
            reader, writer = await asyncio.open_connection(settings.host, settings.port)
        _set_nodelay(writer)
        conn = cls(reader, writer)
        try:
            hello = await conn._line()
            if not hello.startswith("OK MPD "):
                raise mpd.ProtocolError(f"unexpected greeting {hello[:40]!r}")
            if settings.password is not None:
                conn.write(f"password {_quote(settings.password)}\n")
                await conn.response()
        except BaseException:
            conn.close()
            raise
        return conn

    def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))

    async def _line(self) -> str:
        raw = await self._reader.readline()
        if not raw.endswith(b"\n"):
            raise mpd.ConnectionError("Connection lost while reading line")
        return raw[:-1].decode("utf-8")

    async def response(self) -> list[str]:
        """Lines up to `OK`; `ACK ...` raises CommandError."""
        lines: list[str] = []
        while True:
            line = await self._line()
            if line == "OK":
                return lines
            if line.startswith("ACK "):
                raise mpd.CommandError(line[4:].strip())
            lines.append(line)

    async def command_list(self, count: int) -> list[list[str]]:
        """The answer to a `command_list_ok_begin` of `count` commands: one line list per command."""
        parts: list[list[str]] = [[]]
        for line in await self.response():
            if line == "list_OK":
                parts.append([])
            else:
                parts[-1].append(line)
        if len(parts) != count + 1 or parts[-1]:
            raise mpd.ProtocolError("malformed command list answer")
        return parts[:-1]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()


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
        self._idle_command = "idle " + " ".join(IDLE_SUBSYSTEMS) + "\n"
        self._generation = 0  # bumped per connect/close, so a stale task cannot report a new link
        self._up = False
        self._client: mpd.asyncio.MPDClient | None = None
        self._idle: _IdleConnection | None = None
        self._calls: asyncio.Queue[MpdCall] = asyncio.Queue()
        self._current: MpdCall | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # worker, idle loop
        self._inflight: set[asyncio.Future[Any]] = set()  # shielded python-mpd2 commands
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
        client: mpd.asyncio.MPDClient | None = None
        idle: _IdleConnection | None = None
        try:
            client = mpd.asyncio.MPDClient()
            if settings.is_unix:
                await asyncio.wait_for(client.connect(settings.host), settings.timeout)
            else:
                await asyncio.wait_for(client.connect(settings.host, settings.port), settings.timeout)
            _set_nodelay(getattr(client, "_MPDClient__wfile", None))
            if settings.password is not None:
                await self._bounded([client.password(settings.password)])
            idle = await asyncio.wait_for(_IdleConnection.open(settings), settings.timeout)
            # Enter idle before reading the snapshot: a change between the two is then reported.
            idle.write(self._idle_command)
            snapshot = await self._full_snapshot(client)
        except (*_LINK_ERRORS, mpd.CommandError) as exc:
            _disconnect(client)
            if idle is not None:
                idle.close()
            if generation == self._generation:
                self._emit(LinkDown(at=self._clock(), link="mpd", reason=_reason(exc, settings.timeout)))
            return
        if generation != self._generation:  # close() ran meanwhile
            _disconnect(client)
            idle.close()
            return
        self._client, self._idle, self._up = client, idle, True
        self._emit(LinkUp(at=self._clock(), link="mpd"))
        self._emit(dataclasses.replace(snapshot, at=self._clock()))  # keep `at` monotonic
        self._spawn(self._run_calls(generation))
        self._spawn(self._run_idle(idle, generation))

    def call(self, effect: MpdCall) -> None:
        """Queue `effect`; its MpdResult (and, for a "snapshot" op, an MpdSnapshot) is emitted later,
        in call order. While the link is down the call fails at once with connection_lost."""
        if not self._up:
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
        self._calls.put_nowait(effect)

    async def update_database(self, path: str | None = None) -> None:
        """Run `update [path]` and return when that job has finished. Raises mpd.CommandError for
        MPD's refusal (e.g. a missing path) and mpd.ConnectionError if the link goes down."""
        client = self._client
        if not self._up or client is None:
            raise mpd.ConnectionError("MPD is not connected")
        generation = self._generation
        loop = asyncio.get_running_loop()
        try:
            job = await self._bounded([client.update(*([path] if path else []))])
            waiter: asyncio.Future[None] = loop.create_future()
            entry = (int(job[0]), waiter)
            self._update_waiters.append(entry)
            try:
                # The job may already be over (its update event then came before we listened).
                status = await self._bounded([client.status()])
                self._check_updates(status[0])
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._update_waiters.remove(entry)
        except _LINK_ERRORS as exc:
            reason = _reason(exc, self._settings.timeout)
            self._lost(generation, reason)  # a no-op if the link already went down
            raise mpd.ConnectionError(reason) from exc

    async def close(self) -> None:
        """Drop both connections. Pending calls fail with connection_lost; no LinkDown is emitted
        (the core asked for this)."""
        self._generation += 1
        self._up = False
        self._teardown("MPD link closed")
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- command connection ----------------------------------------------------------------------
    async def _bounded(self, futures: list[Awaitable[Any]]) -> list[Any]:
        """Await python-mpd2 command futures (already sent, so pipelined) within the timeout,
        without ever cancelling them (see the hang bug in the notes)."""

        async def resolve(fut: Awaitable[Any]) -> Any:
            # `await` (not the future itself) drives python-mpd2's iterable results.
            return await fut

        tasks = [asyncio.ensure_future(resolve(f)) for f in futures]
        for t in tasks:
            self._inflight.add(t)
            t.add_done_callback(self._inflight.discard)
        gathered = asyncio.gather(*tasks)
        try:
            return await asyncio.wait_for(asyncio.shield(gathered), self._settings.timeout)
        except BaseException:
            # Fetch every outcome so none is logged as "never retrieved".
            for t in tasks:
                t.add_done_callback(_consume)
            gathered.add_done_callback(_consume)
            raise

    async def _full_snapshot(self, client: mpd.asyncio.MPDClient) -> MpdSnapshot:
        status, song, outputs, playlists = await self._bounded(
            [client.status(), client.currentsong(), client.outputs(), client.listplaylists()]
        )
        self._check_updates(status)
        return MpdSnapshot(
            at=self._clock(),
            status=status,
            song=song,
            outputs=_plain(outputs),
            playlists=_plain(playlists),
        )

    async def _run_calls(self, generation: int) -> None:
        while True:
            call = await self._calls.get()
            self._current = call
            try:
                result = await self._execute(call)
            except _LINK_ERRORS as exc:
                self._lost(generation, _reason(exc, self._settings.timeout))
                return
            finally:
                self._current = None
            if generation != self._generation:
                return
            self._emit(result)

    async def _execute(self, call: MpdCall) -> MpdResult:
        client = self._client
        if client is None:
            raise mpd.ConnectionError("MPD is not connected")
        results: list[Any] = []

        def failed(error: str) -> MpdResult:
            return MpdResult(at=self._clock(), call_id=call.call_id, ok=False, results=results, error=error)

        for op in call.ops:
            if not op or not isinstance(op[0], str):
                return failed(f"malformed op {op!r}")
            name = op[0]
            if name == "snapshot":
                self._emit(await self._full_snapshot(client))
                results.append(None)
                continue
            if name not in COMMANDS:
                return failed(f"unknown MPD command {name!r}")
            try:
                args = [_op_arg(a) for a in op[1:]]
            except ValueError as exc:
                return failed(f"{name}: {exc}")
            try:
                (value,) = await self._bounded([getattr(client, name)(*args)])
            except mpd.CommandError as exc:
                return failed(str(exc))
            results.append(_plain(value))
        return MpdResult(at=self._clock(), call_id=call.call_id, ok=True, results=results)

    # -- idle connection -------------------------------------------------------------------------
    async def _run_idle(self, idle: _IdleConnection, generation: int) -> None:
        try:
            while True:
                changed = [line.partition(": ")[2] for line in await idle.response()]
                wanted = {f for sub in changed for f in _REREAD.get(sub, ())}
                fields = [f for f in _FIELDS if f in wanted]
                if not fields:
                    idle.write(self._idle_command)
                    continue
                # Re-read, then idle again at once: changes during the re-read are held by MPD for
                # that next idle, so the second event of a burst is never delayed by a timer.
                reread = (
                    "command_list_ok_begin\n"
                    + "".join(_READ_COMMAND[f] + "\n" for f in fields)
                    + "command_list_end\n"
                )
                if self._settings.is_unix:
                    idle.write(reread + self._idle_command)
                    parts = await asyncio.wait_for(idle.command_list(len(fields)), self._settings.timeout)
                else:
                    # Over TCP, MPD (no TCP_NODELAY) would hold an immediate idle answer behind the
                    # unacknowledged re-read answer until our delayed ACK (~40 ms); sending idle only
                    # after the answer arrived carries that ACK.
                    idle.write(reread)
                    parts = await asyncio.wait_for(idle.command_list(len(fields)), self._settings.timeout)
                    idle.write(self._idle_command)
                values = {f: _parse_field(f, lines) for f, lines in zip(fields, parts, strict=True)}
                if generation != self._generation:
                    return
                self._emit(MpdSnapshot(at=self._clock(), **values))
                if "status" in values:
                    self._check_updates(values["status"])
        except (*_LINK_ERRORS, mpd.CommandError) as exc:
            self._lost(generation, _reason(exc, self._settings.timeout))

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
        for t in list(self._tasks):
            if t is not asyncio.current_task():
                t.cancel()
        self._emit(LinkDown(at=self._clock(), link="mpd", reason=reason))

    def _teardown(self, reason: str) -> None:
        _disconnect(self._client)
        if self._idle is not None:
            self._idle.close()
        self._client = self._idle = None
        for fut in list(self._inflight):
            fut.cancel()
        pending = [self._current] if self._current is not None else []
        self._current = None
        while not self._calls.empty():
            pending.append(self._calls.get_nowait())
        for call in pending:
            self._emit(
                MpdResult(
                    at=self._clock(), call_id=call.call_id, ok=False, error=reason, connection_lost=True
                )
            )
        for _, waiter in self._update_waiters:
            if not waiter.done():
                waiter.set_exception(mpd.ConnectionError(reason))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _disconnect(client: mpd.asyncio.MPDClient | None) -> None:
    if client is None:
        return
    # python-mpd2 3.1.1: if the connection fails while disconnect() cancels its reader task, that
    # task can die of an internal NameError; retrieve it so asyncio does not log it as unhandled.
    run_task = getattr(client, "_MPDClient__run_task", None)
    if isinstance(run_task, asyncio.Future):
        run_task.add_done_callback(_consume)
    with contextlib.suppress(Exception):
        client.disconnect()


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
