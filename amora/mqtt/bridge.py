"""paho-mqtt 1.6.1 driven by the asyncio loop, with no paho network thread.

paho's socket is registered on the running loop (reads and, when paho has a backlog, writes call
`loop_read`/`loop_write`); a task calls `loop_misc` every second for keepalive. Acknowledgements
come back as futures: CONNACK for `connect()`, SUBACK for `subscribe()`, PUBACK for a QoS 1
`publish()`. Incoming messages go straight to the `on_message` callback on the loop thread: no
queue, no thread hop. A publish is written to the socket before `publish()` returns whenever
paho allows it, so a response leaves in the same loop iteration that produced it.

Only `connect()` touches another thread: paho's blocking TCP connect and TLS handshake run in the
default executor so a slow or unreachable broker never stalls the loop.

Both MQTT 3.1.1 (the default) and MQTT 5 (`MqttSettings(protocol="5")`) are spoken. With MQTT 5 a
persistent session is `clean_start=False` plus a Session Expiry Interval of
`settings.session_expiry`, and `subscribe()` accepts the v5 subscription options `no_local` and
`retain_as_published` (the latter is how a subscriber learns that a live message was published
retained: MQTT 3.1.1 brokers clear the flag on delivery to existing subscriptions).

The bridge never reconnects by itself. After an unexpected disconnect it calls
`on_connection_lost(reason)` once; call `connect()` again to get a fresh session (a new paho client
each time, so nothing from the old connection is silently resent).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCodes
from paho.mqtt.subscribeoptions import SubscribeOptions

from amora.mqtt.settings import MqttSettings

log = logging.getLogger("amora.mqtt")

MessageHandler = Callable[[paho.MQTTMessage], None]


class MqttError(Exception):
    """Base of the bridge's errors. Messages never contain credentials."""


class ConnectFailed(MqttError):
    """The broker could not be reached, or refused us. `reason` is a short machine-readable tag:
    unreachable, dns, timeout, tls_verification_failed, tls_error, bad_credentials, not_authorised,
    refused, closed."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class NotConnected(MqttError):
    pass


class SubscribeFailed(MqttError):
    pass


_CONNACK_REASONS = {
    paho.CONNACK_REFUSED_PROTOCOL_VERSION: ("refused", "refused by broker: unacceptable protocol version"),
    paho.CONNACK_REFUSED_IDENTIFIER_REJECTED: ("refused", "refused by broker: client id rejected"),
    paho.CONNACK_REFUSED_SERVER_UNAVAILABLE: ("refused", "refused by broker: server unavailable"),
    paho.CONNACK_REFUSED_BAD_USERNAME_PASSWORD: (
        "bad_credentials",
        "refused by broker: bad user name or password",
    ),
    paho.CONNACK_REFUSED_NOT_AUTHORIZED: (
        "not_authorised",
        "refused by broker: not authorised (wrong user name/password, or this client is not allowed)",
    ),
}

# MQTT 5 CONNACK reason codes (3.1.1 codes above are 1-5; v5 failures are >= 0x80).
_CONNACK_REASONS_V5 = {
    0x84: _CONNACK_REASONS[paho.CONNACK_REFUSED_PROTOCOL_VERSION],
    0x85: _CONNACK_REASONS[paho.CONNACK_REFUSED_IDENTIFIER_REJECTED],
    0x86: _CONNACK_REASONS[paho.CONNACK_REFUSED_BAD_USERNAME_PASSWORD],
    0x87: _CONNACK_REASONS[paho.CONNACK_REFUSED_NOT_AUTHORIZED],
    0x88: _CONNACK_REASONS[paho.CONNACK_REFUSED_SERVER_UNAVAILABLE],
    0x89: ("refused", "refused by broker: server busy"),
    0x8A: ("not_authorised", "refused by broker: this client is banned"),
    0x8C: ("bad_credentials", "refused by broker: bad authentication method"),
    0x97: ("refused", "refused by broker: quota exceeded"),
}

_DISCONNECT_REASONS = {
    paho.MQTT_ERR_CONN_LOST: "connection to the broker lost",
    paho.MQTT_ERR_KEEPALIVE: "broker stopped answering (keepalive timeout)",
    paho.MQTT_ERR_PROTOCOL: "protocol error on the broker connection",
    paho.MQTT_ERR_CONN_REFUSED: "connection refused by the broker",
}


def _code(value: object) -> int:
    """paho passes MQTT 5 reason codes as `ReasonCodes` objects (unhashable) and 3.1.1 codes as ints."""
    if isinstance(value, ReasonCodes):
        return int(value.value)
    return int(value)  # type: ignore[call-overload]


def tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """A client TLS context: verify the broker against `ca_file` (or the system CAs) and its host
    name, unless `tls_insecure` says otherwise."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca_file)
    if settings.cert_file:
        ctx.load_cert_chain(settings.cert_file, settings.key_file)
    if settings.tls_insecure:
        log.warning(
            "MQTT TLS VERIFICATION DISABLED (tls_insecure) for %s: the broker's certificate and host "
            "name are NOT checked; anyone on the path can impersonate it",
            settings.address,
        )
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _describe_connect_error(exc: BaseException, settings: MqttSettings) -> ConnectFailed:
    where = settings.address
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or "certificate rejected"
        return ConnectFailed(
            f"TLS verification failed for {where}: {detail}", reason="tls_verification_failed"
        )
    if isinstance(exc, ssl.CertificateError):
        return ConnectFailed(f"TLS verification failed for {where}: {exc}", reason="tls_verification_failed")
    if isinstance(exc, ssl.SSLError):
        return ConnectFailed(f"TLS handshake with {where} failed: {exc.reason or exc}", reason="tls_error")
    if isinstance(exc, socket.gaierror):
        return ConnectFailed(f"broker host {settings.host!r} not found: {exc.strerror}", reason="dns")
    if isinstance(exc, TimeoutError | socket.timeout):
        return ConnectFailed(f"broker {where} unreachable: timed out", reason="timeout")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectFailed(f"broker {where} unreachable: connection refused", reason="unreachable")
    if isinstance(exc, ConnectionError | EOFError):
        return ConnectFailed(f"broker {where} closed the connection during connect", reason="closed")
    if isinstance(exc, OSError):
        return ConnectFailed(f"broker {where} unreachable: {exc.strerror or exc}", reason="unreachable")
    return ConnectFailed(f"cannot connect to {where}: {type(exc).__name__}", reason="unreachable")


class MqttBridge:
    """One MQTT connection on the running asyncio loop.

    `on_message(msg)` gets every message (paho `MQTTMessage`: `.topic`, `.payload`, `.retain`,
    `.qos`) on the loop thread; it must not block. `on_connection_lost(reason)` is called once per
    connection that ends without `disconnect()`.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        on_message: MessageHandler | None = None,
        on_connection_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_message = on_message
        self.on_connection_lost = on_connection_lost
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._connected = False
        self._closing = False
        self._connack: asyncio.Future[int] | None = None
        self._session_present = False
        self._closed: asyncio.Future[None] | None = None
        self._acks: dict[int, asyncio.Future[bool]] = {}
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._misc_task: asyncio.Task[None] | None = None
        self._fds: dict[int, int] = {}  # id(client) -> fd registered for reading
        self._writer_fd: int | None = None  # fd with a loop writer (only while paho is backlogged)
        self._flush_scheduled = False

    def __repr__(self) -> str:
        state = "connected" if self._connected else "disconnected"
        return f"<MqttBridge {self.settings.address} {state}>"

    # -- state ---------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def socket(self) -> socket.socket | None:
        """The live socket (an `ssl.SSLSocket` with TLS), e.g. to inspect its options."""
        if self._client is None or not self._connected:
            return None
        sock: Any = self._client.socket()
        return sock if isinstance(sock, socket.socket) else None

    @property
    def mqtt5(self) -> bool:
        return self.settings.protocol == "5"

    @property
    def session_present(self) -> bool:
        """The broker resumed a stored session on the last connect (persistent sessions only)."""
        return self._session_present

    @property
    def pending_acks(self) -> int:
        return len(self._acks)

    # -- connect / disconnect ------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and wait for CONNACK. Raises ConnectFailed with a clear, secret-free message."""
        if self._connected:
            return
        self._discard_client()
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._closing = False
        client = self._make_client()
        self._client = client
        self._connack = loop.create_future()
        self._closed = loop.create_future()
        s = self.settings
        if self.mqtt5:
            props = Properties(PacketTypes.CONNECT)
            # A clean session ends with the connection; a persistent one outlives it by session_expiry.
            props.SessionExpiryInterval = 0 if s.clean_session else s.session_expiry
            connect = functools.partial(
                client.connect, s.host, s.port, s.keepalive, clean_start=s.clean_session, properties=props
            )
        else:
            connect = functools.partial(client.connect, s.host, s.port, s.keepalive)
        connecting = loop.run_in_executor(None, connect)
        try:
            async with asyncio.timeout(s.connect_timeout):
                try:
                    await asyncio.shield(connecting)
                except Exception as exc:
                    raise _describe_connect_error(exc, s) from None
                rc = await self._connack
        except TimeoutError:
            self._abandon(client, connecting)
            raise ConnectFailed(
                f"broker {s.address} did not answer within {s.connect_timeout:g}s", reason="timeout"
            ) from None
        except BaseException:
            self._abandon(client, connecting)
            raise
        if rc != paho.CONNACK_ACCEPTED:
            self._abandon(client, connecting)
            reasons = _CONNACK_REASONS_V5 if self.mqtt5 else _CONNACK_REASONS
            tag, message = reasons.get(rc, ("refused", f"refused by broker (code {rc})"))
            raise ConnectFailed(f"{message} at {s.address}", reason=tag)
        self._connected = True
        self._misc_task = loop.create_task(self._misc_loop(client), name="mqtt-misc")
        log.debug("connected to %s", s.address)

    async def disconnect(self, timeout: float = 2.0) -> None:
        """Send DISCONNECT (so the broker drops the Last Will) and close the socket."""
        client = self._client
        if client is None:
            return
        self._closing = True
        if self._connected:
            client.disconnect()
            self._write_now(client)
            closed = self._closed
            if closed is not None and not closed.done():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await asyncio.shield(closed)
        self._discard_client()

    def _make_client(self) -> paho.Client:
        s = self.settings
        if self.mqtt5:
            # paho rejects clean_session for v5: the session is chosen per connect (clean_start).
            client = paho.Client(client_id=s.client_id, protocol=paho.MQTTv5)
        else:
            client = paho.Client(client_id=s.client_id, clean_session=s.clean_session, protocol=paho.MQTTv311)
        # paho has no public setter for the TCP connect timeout in 1.6.1.
        client._connect_timeout = s.connect_timeout
        client.max_inflight_messages_set(0)  # no client-side window: queueing here only adds latency
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.will is not None:
            client.will_set(s.will.topic, s.will.payload, qos=s.will.qos, retain=s.will.retain)
        if s.tls:
            client.tls_set_context(tls_context(s))
            if s.tls_insecure:
                client.tls_insecure_set(True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        return client

    def _abandon(self, client: paho.Client, connecting: asyncio.Future[Any]) -> None:
        """Forget a client whose connect failed; its executor call may still be running."""
        if self._client is client:
            self._client = None

        def close(_: object = None) -> None:
            if not connecting.cancelled():
                connecting.exception()  # retrieved: the failure was already reported
            if self._loop is not None and not self._loop.is_closed():
                self._close_socket(client)

        if connecting.done():
            close()
        else:
            # Done callbacks run on the loop thread, after the executor's connect() returned.
            connecting.add_done_callback(close)

    def _discard_client(self) -> None:
        client = self._client
        self._client = None
        self._connected = False
        if self._misc_task is not None:
            self._misc_task.cancel()
            self._misc_task = None
        if client is not None:
            self._close_socket(client)
        self._fail_pending()

    def _close_socket(self, client: paho.Client) -> None:
        # _sock_close runs paho's socket-close callbacks (so the loop forgets the fd) then closes.
        with contextlib.suppress(Exception):
            client._sock_close()
        fd = self._fds.pop(id(client), None)
        if fd is not None and self._writer_fd == fd:
            self._writer_fd = None
        if fd is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)

    def _fail_pending(self) -> None:
        acks, self._acks = self._acks, {}
        for fut in acks.values():
            if not fut.done():
                fut.set_result(False)
        subacks, self._subacks = self._subacks, {}
        for sub in subacks.values():
            if not sub.done():
                sub.set_exception(NotConnected("connection closed before SUBACK"))
                sub.exception()  # mark retrieved: nobody may be waiting any more

    # -- subscribe / publish -------------------------------------------------------------------

    async def subscribe(
        self,
        topics: str | Sequence[tuple[str, int]],
        qos: int = 1,
        timeout: float = 10.0,
        *,
        no_local: bool = False,
        retain_as_published: bool = False,
    ) -> list[int]:
        """Subscribe and wait for SUBACK; returns the granted QoS per topic. A refused topic raises
        SubscribeFailed. `no_local` (do not receive our own publications) and `retain_as_published`
        (keep the publisher's retain flag on live messages) need MQTT 5: asking for them on a 3.1.1
        connection raises ValueError rather than silently doing without."""
        client = self._require_client()
        wanted = [(topics, qos)] if isinstance(topics, str) else list(topics)
        if no_local or retain_as_published:
            if not self.mqtt5:
                raise ValueError("no_local / retain_as_published need MQTT 5 (protocol='5')")
            options = [
                (topic, SubscribeOptions(qos=q, noLocal=no_local, retainAsPublished=retain_as_published))
                for topic, q in wanted
            ]
            rc, mid = client.subscribe(options)
        else:
            rc, mid = client.subscribe(wanted)
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            raise NotConnected(f"cannot subscribe: {paho.error_string(rc)}")
        granted = await self._await_ack(client, mid, timeout)
        refused = [topic for (topic, _), g in zip(wanted, granted, strict=False) if g >= 0x80]
        if refused:
            raise SubscribeFailed(f"broker refused subscription to {', '.join(refused)} (not authorised?)")
        return granted

    async def unsubscribe(self, topics: str | Sequence[str], timeout: float = 10.0) -> None:
        client = self._require_client()
        wanted = [topics] if isinstance(topics, str) else list(topics)
        rc, mid = client.unsubscribe(wanted)
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            raise NotConnected(f"cannot unsubscribe: {paho.error_string(rc)}")
        await self._await_ack(client, mid, timeout)

    async def _await_ack(self, client: paho.Client, mid: int, timeout: float) -> list[int]:
        """Send what paho queued for `mid` and wait for its SUBACK/UNSUBACK (granted QoS list)."""
        assert self._loop is not None
        fut: asyncio.Future[list[int]] = self._loop.create_future()
        self._subacks[mid] = fut
        self._write_now(client)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._subacks.pop(mid, None)

    def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 0, retain: bool = False
    ) -> asyncio.Future[bool]:
        """Queue and (when possible) write a message now. The future resolves True when it is on
        the wire (QoS 0) or acknowledged by the broker (QoS 1/2), False if the connection went
        first. Never raises for a lost connection: the message is dropped and logged at debug."""
        client = self._client
        loop = self._loop or asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        if client is None or not self._connected:
            log.debug("not connected: dropping publish to %s", topic)
            fut.set_result(False)
            return fut
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            log.debug("publish to %s failed: %s", topic, paho.error_string(info.rc))
            fut.set_result(False)
            return fut
        if qos == 0:
            fut.set_result(True)
        else:
            self._acks[info.mid] = fut
        self._write_now(client)
        return fut

    async def flush(self, timeout: float) -> bool:
        """Wait until every QoS>0 publish so far is acknowledged. False on timeout or if some were
        lost with the connection."""
        pending = list(self._acks.values())
        if not pending:
            return True
        done, not_done = await asyncio.wait(pending, timeout=timeout)
        return not not_done and all(f.result() for f in done)

    def _require_client(self) -> paho.Client:
        if self._client is None or not self._connected:
            raise NotConnected(f"not connected to {self.settings.address}")
        return self._client

    def _write_now(self, client: paho.Client) -> None:
        """Write paho's backlog immediately instead of waiting a loop iteration for writability.
        Inside a paho callback its (non-reentrant) callback lock is held and loop_write would
        deadlock, so there the registered writer does it on the next iteration."""
        if threading.get_ident() != self._loop_thread or not client.want_write():
            return
        if client._in_callback_mutex.acquire(False):
            client._in_callback_mutex.release()
            self._guarded(client, client.loop_write)

    # -- loop integration ----------------------------------------------------------------------

    def _call_in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    def _guarded(self, client: paho.Client, step: Callable[[], int]) -> None:
        """Run loop_read/loop_write; an exception out of paho means the socket is unusable."""
        try:
            step()
        except Exception as exc:
            log.debug("paho I/O failed: %r", exc)
            if client is not self._client:
                return
            self._close_socket(client)
            if not self._connected and self._connack is not None and not self._connack.done():
                # e.g. TLS 1.3: a broker that wants a client certificate says so after the
                # handshake, on the first read; fail the connect now rather than at its timeout
                self._connack.set_exception(_describe_connect_error(exc, self.settings))
                return
            self._lost(client, f"connection to the broker failed: {type(exc).__name__}")

    def _current(self, client: paho.Client) -> bool:
        return client is self._client

    def _readable(self, client: paho.Client) -> None:
        self._guarded(client, client.loop_read)
        # TLS may have decrypted more than paho consumed; those bytes sit in the SSL object where
        # the selector cannot see them, so drain them now.
        sock: Any = client.socket()
        while isinstance(sock, ssl.SSLSocket) and self._current(client) and sock.pending() > 0:
            self._guarded(client, client.loop_read)
            sock = client.socket()
        # PUBACKs and anything published from inside on_message go out now, not next iteration.
        if self._current(client):
            self._write_now(client)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # Small MQTT packets must not wait for Nagle: the whole design is about latency.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fd = sock.fileno()
        self._fds[id(client)] = fd

        def register() -> None:
            if self._current(client) and self._loop is not None:
                self._loop.add_reader(fd, self._readable, client)

        self._call_in_loop(register)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        fd = self._fds.pop(id(client), None)
        if fd is not None and self._writer_fd == fd:
            self._writer_fd = None
        if fd is not None and self._loop is not None:
            # Runs before paho closes the fd, so the loop never polls a closed (or reused) fd.
            self._call_in_loop(self._loop.remove_reader, fd)
            self._call_in_loop(self._loop.remove_writer, fd)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # paho has bytes to send. publish() and _readable() normally write them at once
        # (_write_now), so a loop writer is only needed when the socket is full or paho's callback
        # lock was held: look again after this iteration instead of paying an add_writer and a
        # remove_writer (two epoll_ctl calls) for every packet.
        if self._flush_scheduled:
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        self._flush_scheduled = True
        if threading.get_ident() == self._loop_thread:
            loop.call_soon(self._flush_backlog, client)
        else:
            loop.call_soon_threadsafe(self._flush_backlog, client)

    def _flush_backlog(self, client: paho.Client) -> None:
        self._flush_scheduled = False
        if not self._current(client):
            return
        self._write_now(client)
        if self._current(client) and client.want_write():
            self._watch_writable(client)

    def _watch_writable(self, client: paho.Client) -> None:
        fd = self._fds.get(id(client))
        if fd is None or self._loop is None or self._writer_fd == fd:
            return
        self._writer_fd = fd
        self._loop.add_writer(fd, self._on_writable, client)

    def _on_writable(self, client: paho.Client) -> None:
        self._guarded(client, client.loop_write)
        if self._current(client) and not client.want_write():
            self._stop_watching_writable()

    def _stop_watching_writable(self) -> None:
        fd, self._writer_fd = self._writer_fd, None
        if fd is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_writer(fd)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._writer_fd is not None:
            self._call_in_loop(self._stop_watching_writable)

    async def _misc_loop(self, client: paho.Client) -> None:
        while client is self._client:
            await asyncio.sleep(1.0)
            if client is not self._client:
                return
            try:
                rc = client.loop_misc()
            except Exception as exc:
                log.debug("loop_misc failed: %r", exc)
                rc = paho.MQTT_ERR_CONN_LOST
            if rc != paho.MQTT_ERR_SUCCESS:
                return

    # -- paho callbacks (all on the loop thread) -----------------------------------------------

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: dict[str, int], rc: Any, properties: Any = None
    ) -> None:
        if client is self._client and self._connack is not None and not self._connack.done():
            self._session_present = bool(flags.get("session present"))
            self._connack.set_result(_code(rc))

    def _on_disconnect(self, client: paho.Client, userdata: Any, rc: Any, properties: Any = None) -> None:
        if client is not self._client:
            return
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if not self._connected:
            if self._connack is not None and not self._connack.done():
                self._connack.set_exception(
                    ConnectFailed(
                        f"broker {self.settings.address} closed the connection before CONNACK",
                        reason="closed",
                    )
                )
            return
        if isinstance(rc, ReasonCodes):  # an MQTT 5 DISCONNECT from the broker, with its reason
            self._lost(client, f"broker closed the connection: {rc.getName()}", rc=-1)
            return
        self._lost(client, _DISCONNECT_REASONS.get(rc, f"disconnected: {paho.error_string(rc)}"), rc=rc)

    def _lost(self, client: paho.Client, reason: str, rc: int = -1) -> None:
        was_connected = self._connected
        self._connected = False
        if self._misc_task is not None:
            self._misc_task.cancel()
            self._misc_task = None
        self._fail_pending()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if not was_connected or self._closing or rc == paho.MQTT_ERR_SUCCESS:
            return
        log.info("MQTT link to %s lost: %s", self.settings.address, reason)
        if self.on_connection_lost is not None:
            try:
                self.on_connection_lost(reason)
            except Exception:
                log.exception("on_connection_lost handler failed")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if self.on_message is None:
            return
        try:
            self.on_message(msg)
        except Exception:
            # Raising into paho would abort its read loop and look like a broken socket.
            log.exception("MQTT message handler failed for %s", msg.topic)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int) -> None:
        fut = self._acks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(True)

    def _on_unsubscribe(self, client: paho.Client, userdata: Any, mid: int, *v5: Any) -> None:
        fut = self._subacks.get(mid)
        if fut is not None and not fut.done():
            fut.set_result([])

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, granted: Iterable[Any], properties: Any = None
    ) -> None:
        fut = self._subacks.get(mid)
        if fut is not None and not fut.done():
            fut.set_result([_code(g) for g in granted])
