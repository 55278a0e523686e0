"""amora.sync.http11 against a scripted HTTP server on a loopback socket: the response forms the
Blob service sends (Content-Length, chunked, Connection: close, 1xx), keep-alive reuse, bodies cut
short, and the stale kept-alive connection the sync reconnects at once."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from amora.sync import http11
from amora.sync.remote import Connection, Endpoint, RemoteError, Tuning

# One script per accepted connection: it gets the socket and answers the requests it reads.
Script = Callable[[socket.socket], None]


class Server:
    def __init__(self, scripts: list[Script]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.connections = 0
        self._scripts = scripts
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        for script in self._scripts:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed by the test
            self.connections += 1
            # the client may hang up first (it does, after a malformed answer)
            with conn, contextlib.suppress(OSError):
                script(conn)

    def read_request(self, conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
        self.requests.append(data)
        return data

    def close(self) -> None:
        self.sock.close()
        self._thread.join(10)


@pytest.fixture
def serve() -> Iterator[Callable[[list[Script]], Server]]:
    servers: list[Server] = []

    def start(scripts: list[Script]) -> Server:
        servers.append(Server(scripts))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def connection(server: Server) -> http11.Connection:
    return http11.Connection("127.0.0.1", server.port, timeout=5, read_timeout=5)


def test_content_length_and_chunked_bodies_on_one_kept_alive_connection(serve: Callable[..., Server]) -> None:
    def script(conn: socket.socket) -> None:
        server.read_request(conn)
        conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: "0x1"\r\n\r\nhello')
        server.read_request(conn)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-ms-error-code: none\r\n\r\n"
            b"3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nTrailer: x\r\n\r\n"
        )
        server.read_request(conn)
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")

    server = serve([script])
    c = connection(server)
    r = c.get("/a?sig=x", {"If-Match": '"0x1"'})
    assert (r.status, r.getheader("ETag"), r.read(), r.read()) == (200, '"0x1"', b"hello", b"")
    r = c.get("/b", {})
    assert (r.read(2), r.read(100), r.read(100), r.read()) == (b"ab", b"c", b"defg", b"")
    assert r.getheader("X-MS-Error-Code") == "none"
    r = c.get("/c", {})
    assert (r.status, r.read()) == (204, b"")
    assert server.connections == 1
    first = server.requests[0].decode()
    assert first.startswith("GET /a?sig=x HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n" in first and 'If-Match: "0x1"\r\n' in first
    c.close()


def test_a_body_cut_short_raises_incomplete_read(serve: Callable[..., Server]) -> None:
    def script(conn: socket.socket) -> None:
        server.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")

    server = serve([script])
    r = connection(server).get("/", {})
    assert r.read(100) == b"abc"
    with pytest.raises(http.client.IncompleteRead):
        r.read(100)


def test_connection_close_and_an_unread_body_mean_a_new_connection(serve: Callable[..., Server]) -> None:
    def closing(conn: socket.socket) -> None:
        server.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    def unread(conn: socket.socket) -> None:
        server.read_request(conn)
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 6\r\n\r\nmissin")
        server.read_request(conn)  # never asked: the client must not reuse this stream

    def last(conn: socket.socket) -> None:
        server.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz")

    server = serve([closing, unread, last])
    c = connection(server)
    assert c.get("/1", {}).read() == b"ok"
    assert c.get("/2", {}).read(3) == b"mis"  # the rest is left unread
    assert c.get("/3", {}).read() == b"z"
    assert server.connections == 3


@pytest.mark.parametrize(
    "answer",
    [
        b"",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000,
    ],
)
def test_malformed_answers_are_http_errors(serve: Callable[..., Server], answer: bytes) -> None:
    def script(conn: socket.socket) -> None:
        server.read_request(conn)
        conn.sendall(answer)
        conn.shutdown(socket.SHUT_WR)

    server = serve([script])
    with pytest.raises(http.client.HTTPException):
        connection(server).get("/", {}).read()


def test_a_stale_kept_alive_connection_is_reconnected_at_once(serve: Callable[..., Server]) -> None:
    """The server closed the idle connection (a keep-alive timeout): the next GET reconnects
    without spending an attempt, so it succeeds even with no retries at all."""

    def then_close(conn: socket.socket) -> None:
        server.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
        # closes without a word, as a keep-alive timeout does

    def fresh(conn: socket.socket) -> None:
        server.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")

    server = serve([then_close, fresh])
    ep = Endpoint("http", "127.0.0.1", server.port, "/acct/c", "sig=x")
    conn = Connection(ep, Tuning(retries=0), threading.Event())
    assert conn.get("/acct/c/1?sig=x", {}, "1").read() == b"a"
    # the first connection never answers again: the request below must go out on a new one
    assert conn.get("/acct/c/2?sig=x", {}, "2").read() == b"b"
    assert server.connections == 2
    conn.close()


def test_a_dead_service_is_a_remote_error_without_the_sas(serve: Callable[..., Server]) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    ep = Endpoint("http", "127.0.0.1", port, "/acct/c", "sig=SECRET")
    conn = Connection(ep, Tuning(retries=1, backoff=0.01), threading.Event())
    with pytest.raises(RemoteError) as err:
        conn.get("/acct/c/x?sig=SECRET", {}, "x")
    assert "connection refused" in str(err.value) and "SECRET" not in str(err.value)
