"""An HTTP CONNECT proxy in front of the broker: the SDK's only supported way to reach a port other than
8883, and the place where connection faults are injected (TLS stays end to end, the proxy sees bytes).

Whatever host the SDK asks for, the tunnel goes to the broker's TLS port. Fault modes:

- `drop()`: close every open tunnel; new ones are accepted (a network flap).
- `cut()`: close every open tunnel and refuse new ones until `restore()`.
- `hang()`: keep tunnels open but stop forwarding in both directions (a dead link); new tunnels hang too.
- `restore()`: back to normal; data held by a hang is delivered.

A refused tunnel is answered "200" and then closed. The SDK treats every proxy-level failure (connection
refused by the proxy, no answer, any non-200 status) as `ProtocolProxyError` and stops retrying for good,
whereas a tunnel that closes during the TLS handshake is a `ConnectionFailedError`, which it retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_MAX_HEADER = 8192
_CHUNK = 65536


class Mode(Enum):
    NORMAL = "normal"
    CUT = "cut"
    HANG = "hang"


@dataclass(eq=False)
class _Tunnel:
    target: str
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ConnectProxy:
    """Runs its own event loop in a daemon thread; all public methods are thread-safe and synchronous."""

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = "127.0.0.1"
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="iothub-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._tunnels: set[_Tunnel] = set()
        self._mode = Mode.NORMAL
        self._flowing: asyncio.Event | None = None
        self.tunnels_opened = 0
        self.tunnels_refused = 0
        self.requested_targets: list[str] = []

    # --- thread plumbing ---------------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float = 10.0) -> _T:
        fut: Future[_T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def start(self) -> None:
        self._thread.start()
        self._call(self._start())

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._close_all()

    # --- fault injection ---------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def open_tunnels(self) -> int:
        return len(self._tunnels)

    def drop(self) -> None:
        self._call(self._close_all())

    def cut(self) -> None:
        self._call(self._set_mode(Mode.CUT))

    def hang(self) -> None:
        self._call(self._set_mode(Mode.HANG))

    def restore(self) -> None:
        self._call(self._set_mode(Mode.NORMAL))

    async def _set_mode(self, mode: Mode) -> None:
        assert self._flowing is not None
        self._mode = mode
        if mode is Mode.HANG:
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode is Mode.CUT:
            await self._close_all()

    async def _close_all(self) -> None:
        tunnels = list(self._tunnels)
        for t in tunnels:
            for task in t.tasks:
                task.cancel()
            for w in t.writers:
                w.transport.abort()
        self._tunnels.difference_update(tunnels)
        for t in tunnels:
            await asyncio.gather(*t.tasks, return_exceptions=True)

    # --- tunnels -----------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _nodelay(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.transport.abort()
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        if len(parts) != 3 or parts[0] != "CONNECT" or len(head) > _MAX_HEADER:
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.transport.abort()
            return
        target = parts[1]
        self.requested_targets.append(target)
        if self._mode is Mode.CUT:
            await self._refuse(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError as exc:
            log.warning("proxy: broker unreachable for %s: %s", target, exc)
            await self._refuse(writer)
            return
        _nodelay(up_writer)
        # The whole answer in one write: PySocks reads it through a buffered file and discards whatever
        # follows the status line in that buffer.
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        tunnel = _Tunnel(target, [writer, up_writer])
        self._tunnels.add(tunnel)
        self.tunnels_opened += 1
        tunnel.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, tunnel)),
            asyncio.create_task(self._pump(up_reader, writer, tunnel)),
        ]

    async def _refuse(self, writer: asyncio.StreamWriter) -> None:
        self.tunnels_refused += 1
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        with contextlib.suppress(Exception):
            await writer.drain()
        writer.transport.abort()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, tunnel: _Tunnel) -> None:
        assert self._flowing is not None
        try:
            while True:
                await self._flowing.wait()
                data = await src.read(_CHUNK)
                if not data:
                    break
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if tunnel in self._tunnels:
                self._tunnels.discard(tunnel)
                for w in tunnel.writers:
                    w.transport.abort()
                for task in tunnel.tasks:
                    if task is not asyncio.current_task():
                        task.cancel()
