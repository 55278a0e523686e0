"""A minimal HTTP/1.1 client connection for the sync's data path: GET over one keep-alive socket.

Why not http.client: it parses every response's headers with the email package, ~110 us of CPU
per response (measured: 40 % of the sync's CPU on a cold run of 1,000 small blobs, competing for
the 2 cores with the storage service in tests and with MPD on a device). Here a response head is
split with bytes methods (~13 us). Only what the Blob service sends is handled, and all of it:
Content-Length and chunked bodies, `Connection: close`, interim 1xx responses, and responses to
HEAD-less GETs. Errors are http.client's exception types, so callers handle one family.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
from typing import Any

MAX_HEAD = 64 * 1024  # a response head larger than this is not from a Blob service
_MAX_LINE = 8 * 1024


class Response:
    """One response; read it to the end (or close the connection) before the next request."""

    def __init__(self, conn: Connection, status: int, reason: str, headers: dict[str, str]) -> None:
        self._conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self._left: int | None = None  # body bytes still to read (Content-Length bodies)
        self._chunk_left = 0  # of the current chunk (chunked bodies)
        self._done = False
        if not self._chunked and length is not None:
            try:
                self._left = int(length)
            except ValueError:
                raise http.client.HTTPException("bad Content-Length") from None
            if self._left < 0:
                raise http.client.HTTPException("bad Content-Length")
        elif not self._chunked and (status in (204, 304) or 100 <= status < 200):
            self._left = 0
        # else: chunked, or (no length) until the server closes the connection
        self._will_close = headers.get("connection", "").lower() == "close" or (
            self._left is None and not self._chunked
        )
        if self._left == 0:
            self._finish()

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    @property
    def complete(self) -> bool:
        return self._done

    def read(self, amt: int | None = None) -> bytes:
        """Up to `amt` bytes of the body (all of it if None); b"" at the end. A body cut short
        raises http.client.IncompleteRead."""
        if self._done:
            return b""
        if amt is None:
            if not self._chunked and self._left is not None:
                # one buffer for the whole body (a listing page is megabytes: no parts to join)
                data = self._conn.read_exactly(self._left)
                if len(data) < self._left:
                    raise http.client.IncompleteRead(data, self._left - len(data))
                self._left = 0
                self._finish()
                return data
            parts = []
            while chunk := self.read(1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        if self._chunked:
            return self._read_chunked(amt)
        if self._left is None:  # delimited by the connection's end
            data = self._conn.recv_some(amt)
            if not data:
                self._finish()
            return data
        data = self._conn.recv_some(min(amt, self._left))
        if not data:
            raise http.client.IncompleteRead(b"", self._left)
        self._left -= len(data)
        if self._left == 0:
            self._finish()
        return data

    def _read_chunked(self, amt: int) -> bytes:
        if self._chunk_left == 0:
            line = self._conn.readline()
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise http.client.IncompleteRead(b"") from None
            if size == 0:
                while self._conn.readline() not in (b"\r\n", b"\n"):  # trailers
                    pass
                self._finish()
                return b""
            self._chunk_left = size
        data = self._conn.recv_some(min(amt, self._chunk_left))
        if not data:
            raise http.client.IncompleteRead(b"", self._chunk_left)
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and self._conn.readline() not in (b"\r\n", b"\n"):
            raise http.client.IncompleteRead(b"")
        return data

    def _finish(self) -> None:
        self._done = True
        if self._will_close:
            self._conn.close()


class Connection:
    """One HTTP/1.1 connection (plain or TLS), opened on first use, kept alive between requests.
    Not thread-safe except `abort()`, which breaks a blocked read from another thread."""

    def __init__(self, host: str, port: int, *, timeout: float, read_timeout: float, tls: Any = None) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.read_timeout = read_timeout
        self.tls = tls  # an ssl.SSLContext for https
        self.sock: socket.socket | None = None
        self._reader: Any = None
        self._current: Response | None = None
        host_header = f"[{host}]" if ":" in host else host
        default_port = 443 if tls is not None else 80
        self._host_header = host_header if port == default_port else f"{host_header}:{port}"

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(self.read_timeout)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._reader = sock.makefile("rb", buffering=256 * 1024)

    def close(self) -> None:
        sock, self.sock = self.sock, None
        reader, self._reader = self._reader, None
        self._current = None
        if reader is not None:
            reader.close()
        if sock is not None:
            sock.close()

    def abort(self) -> None:
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def get(self, path_query: str, headers: dict[str, str]) -> Response:
        if self._current is not None and not self._current.complete:
            self.close()  # the last body was not read to its end: this stream cannot be reused
        if self.sock is None:
            self.connect()
        head = [f"GET {path_query} HTTP/1.1", f"Host: {self._host_header}", "Accept-Encoding: identity"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        assert self.sock is not None
        self.sock.sendall(request)
        while True:
            response = self._read_head()
            if not 100 <= response.status < 200:
                break  # an interim response (never asked for, but allowed) is skipped
        self._current = response
        return response

    def _read_head(self) -> Response:
        line = self.readline()
        if not line:
            raise http.client.RemoteDisconnected("the server closed the connection without a response")
        parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise http.client.BadStatusLine(line[:80].decode("latin-1"))
        try:
            status = int(parts[1])
        except ValueError:
            raise http.client.BadStatusLine(line[:80].decode("latin-1")) from None
        reason = parts[2] if len(parts) > 2 else ""
        headers: dict[str, str] = {}
        size = len(line)
        while True:
            line = self.readline()
            size += len(line)
            if size > MAX_HEAD:
                raise http.client.HTTPException("response head too large")
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise http.client.IncompleteRead(b"")
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise http.client.HTTPException("malformed header line")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return Response(self, status, reason, headers)

    def readline(self) -> bytes:
        if self._reader is None:
            raise http.client.RemoteDisconnected("connection closed")
        line: bytes = self._reader.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise http.client.LineTooLong("header line")
        return line

    def read_exactly(self, amt: int) -> bytes:
        """`amt` bytes, or fewer if the stream ends first."""
        if self._reader is None:
            raise http.client.RemoteDisconnected("connection closed")
        data: bytes = self._reader.read(amt)
        return data

    def recv_some(self, amt: int) -> bytes:
        """Up to `amt` bytes, as soon as any are available (b"" at the end of the stream)."""
        if self._reader is None:
            raise http.client.RemoteDisconnected("connection closed")
        data: bytes = self._reader.read1(amt)
        return data
