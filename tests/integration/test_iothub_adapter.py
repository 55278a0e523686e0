"""IotHubLink in-process against the IoT Hub stand-in (real SDK, real TLS broker, real CONNECT proxy)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from amora.adapters.iothub import IotHubLink, IotHubSettings
from amora.core.events import DesiredPatch, Event, LinkDown, LinkUp, MethodCall
from tools.iothub_standin import LocalHub

pytestmark = pytest.mark.services


class Events:
    def __init__(self) -> None:
        self.seen: list[Event] = []
        self.changed = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.seen.append(event)
        self.changed.set()

    async def wait(self, predicate: Callable[[Event], bool], timeout: float = 15.0) -> Event:
        async with asyncio.timeout(timeout):
            start = 0
            while True:
                for event in self.seen[start:]:
                    if predicate(event):
                        return event
                start = len(self.seen)
                self.changed.clear()
                await self.changed.wait()


def settings(hub: LocalHub) -> IotHubSettings:
    host, port = hub.proxy_address
    return IotHubSettings(
        connection_string=hub.connection_string(),
        ca_file=hub.ca_path,
        proxy=("HTTP", host, port),
        call_timeout=5,
    )


@pytest.fixture
async def link(local_hub: LocalHub) -> AsyncIterator[tuple[IotHubLink, Events]]:
    events = Events()
    link = IotHubLink(settings(local_hub), emit=events)
    try:
        yield link, events
    finally:
        await link.close()


def sockets_to(peer: tuple[str, int]) -> list[socket.socket]:
    """This process's TCP sockets connected to `peer`, one per open socket (duplicated descriptors:
    the SDK's stack holds some sockets under two)."""
    found: dict[str, socket.socket] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            inode = os.readlink(f"/proc/self/fd/{name}")
            if not inode.startswith("socket:") or inode in found:
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if sock.type == socket.SOCK_STREAM and sock.getpeername()[:2] == peer:
                found[inode] = sock
                continue
        except OSError:
            pass
        sock.close()
    return list(found.values())


def nodelay_of_device_sockets(hub: LocalHub) -> list[int]:
    socks = sockets_to(hub.proxy_address)
    try:
        return [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in socks]
    finally:
        for s in socks:
            s.close()


async def test_the_sdk_socket_has_tcp_nodelay_after_connect_and_reconnect(
    link: tuple[IotHubLink, Events], local_hub: LocalHub
) -> None:
    iot, events = link
    await iot.connect()
    await events.wait(lambda e: isinstance(e, LinkUp))
    assert [bool(v) for v in nodelay_of_device_sockets(local_hub)] == [True]

    # the SDK client survives a drop and opens a new socket on the next connect
    local_hub.drop()
    await events.wait(lambda e: isinstance(e, LinkDown))
    ups = sum(isinstance(e, LinkUp) for e in events.seen)
    await iot.connect()
    await events.wait(
        lambda e: isinstance(e, LinkUp) and sum(isinstance(x, LinkUp) for x in events.seen) > ups
    )
    assert [bool(v) for v in nodelay_of_device_sockets(local_hub)] == [True]


async def test_concurrent_method_calls_are_all_answered(
    link: tuple[IotHubLink, Events], local_hub: LocalHub
) -> None:
    iot, events = link

    def answer(event: Event) -> None:
        events(event)
        if isinstance(event, MethodCall):
            iot.respond(event.request_id, 200, {"echo": event.payload, "name": event.name})

    iot._emit = answer
    await iot.connect()
    await events.wait(lambda e: isinstance(e, DesiredPatch) and e.full)
    status, body = await asyncio.to_thread(local_hub.invoke_method, "ping", {"n": -1}, 10)
    assert (status, body) == (200, {"echo": {"n": -1}, "name": "ping"})

    # Not asyncio.to_thread: the SDK's aio client runs its blocking calls on the loop's default
    # executor, and 20 hub calls waiting there for answers would starve it.
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=20) as pool:
        calls = [loop.run_in_executor(pool, local_hub.invoke_method, "ping", {"n": i}, 10) for i in range(20)]
        results = await asyncio.gather(*calls)
    assert [status for status, _ in results] == [200] * 20
    assert [body["echo"]["n"] for _, body in results] == list(range(20))


async def test_a_response_does_not_wait_behind_reported_patches(
    link: tuple[IotHubLink, Events], local_hub: LocalHub
) -> None:
    iot, events = link
    reports = 50

    def answer(event: Event) -> None:
        events(event)
        if isinstance(event, MethodCall):
            # queued ahead of the response; they go out one at a time, each waiting for the hub's 204
            for i in range(reports):
                iot.report({"counter": i})
            iot.respond(event.request_id, 200, {"ok": True})

    iot._emit = answer
    await iot.connect()
    await events.wait(lambda e: isinstance(e, DesiredPatch) and e.full)
    base = local_hub.twin()["reported"]["$version"]
    status, _ = await asyncio.to_thread(local_hub.invoke_method, "ping", None, 10)
    version_at_response = local_hub.twin()["reported"]["$version"]
    assert status == 200
    assert version_at_response - base < reports // 2, (base, version_at_response)
    async with asyncio.timeout(15):
        while local_hub.twin()["reported"].get("counter") != reports - 1:
            await asyncio.sleep(0.02)


async def test_a_response_after_the_link_dropped_is_discarded_quietly(
    link: tuple[IotHubLink, Events], local_hub: LocalHub
) -> None:
    iot, events = link
    await iot.connect()
    await events.wait(lambda e: isinstance(e, LinkUp))
    local_hub.cut()
    await events.wait(lambda e: isinstance(e, LinkDown))
    iot.respond("no-such-request", 200, {})
    assert not iot._responses
    local_hub.restore()


def test_the_nodelay_helper_tolerates_a_client_without_the_sdk_internals() -> None:
    from amora.adapters import iothub

    iothub._enable_nodelay(object())
    iothub._take_method_requests_early(object(), lambda request: None)


async def test_every_connect_is_answered_by_exactly_one_link_event(local_hub: LocalHub) -> None:
    """The core's backoff only runs again after LinkUp or LinkDown, so a connect that ended without
    either (refused credentials, a stalled network, a timeout) would leave IoT Hub offline for good."""
    events = Events()
    iot = IotHubLink(replace(settings(local_hub), call_timeout=2), emit=events)

    def link_events() -> list[Event]:
        return [e for e in events.seen if isinstance(e, LinkUp | LinkDown)]

    async def connect_once() -> Event:
        before = len(link_events())
        await iot.connect()
        after = link_events()
        assert len(after) == before + 1, after[before:]
        return after[-1]

    try:
        assert isinstance(await connect_once(), LinkUp)
        local_hub.reject_credentials(True)
        local_hub.drop()
        await events.wait(lambda e: isinstance(e, LinkDown))
        for _ in range(3):
            down = await connect_once()
            assert isinstance(down, LinkDown) and "CredentialError" in down.reason
        local_hub.reject_credentials(False)
        assert isinstance(await connect_once(), LinkUp)

        local_hub.drop()
        await events.wait(lambda e: isinstance(e, LinkDown) and e is link_events()[-1])
        local_hub.hang()
        down = await connect_once()  # stalls until call_timeout
        assert isinstance(down, LinkDown)
        local_hub.restore()
        assert isinstance(await connect_once(), LinkUp)
        assert not iot._connecting
    finally:
        local_hub.restore()
        local_hub.reject_credentials(False)
        await iot.close()
