"""The local IoT Hub stand-in, driven by the real azure-iot-device SDK."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tools.iothub_standin import LocalHub

pytest_plugins = ["tests.fixtures.iothub"]
pytestmark = pytest.mark.services

# Retries every second instead of every 10 s, so reconnect tests stay short.
RETRY_INTERVAL = 1


async def until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def make_client(hub: LocalHub, **kwargs: Any) -> Any:
    from azure.iot.device.aio import IoTHubDeviceClient

    options: dict[str, Any] = {
        "server_verification_cert": hub.ca_pem(),
        "proxy_options": hub.proxy_options(),
        "connection_retry_interval": RETRY_INTERVAL,
    }
    options.update(kwargs)
    return IoTHubDeviceClient.create_from_connection_string(hub.connection_string(), **options)


@pytest.fixture
async def device(local_hub: LocalHub) -> AsyncIterator[Any]:
    client = make_client(local_hub)
    await asyncio.wait_for(client.connect(), 10)
    try:
        yield client
    finally:
        await asyncio.wait_for(client.shutdown(), 10)


async def test_connect_through_proxy(local_hub: LocalHub, device: Any) -> None:
    assert device.connected
    assert local_hub.device_connected()
    assert local_hub.proxy is not None
    assert local_hub.proxy.requested_targets == [f"{local_hub.host_name}:8883"]


async def test_get_twin_has_versions(local_hub: LocalHub, device: Any) -> None:
    local_hub.update_desired({"audio": {"volume": 75}})
    twin = await asyncio.wait_for(device.get_twin(), 5)
    assert twin["desired"] == {"audio": {"volume": 75}, "$version": 2}
    assert twin["reported"] == {"$version": 1}


async def test_reported_patch_merges(local_hub: LocalHub, device: Any) -> None:
    await asyncio.wait_for(device.patch_twin_reported_properties({"audio": {"volume": 5, "device": "x"}}), 5)
    await asyncio.wait_for(device.patch_twin_reported_properties({"audio": {"device": None}, "up": 1}), 5)
    reported = local_hub.twin()["reported"]
    assert reported == {"audio": {"volume": 5}, "up": 1, "$version": 3}
    twin = await asyncio.wait_for(device.get_twin(), 5)
    assert twin["reported"] == reported


async def test_invalid_reported_patch_is_refused(local_hub: LocalHub, device: Any) -> None:
    from azure.iot.device.exceptions import ClientError

    with pytest.raises(ClientError):
        await asyncio.wait_for(device.patch_twin_reported_properties({"bad.key": 1}), 5)
    assert local_hub.twin()["reported"] == {"$version": 1}


async def test_desired_patch_reaches_device(local_hub: LocalHub, device: Any) -> None:
    patches: list[dict[str, Any]] = []

    async def on_patch(patch: dict[str, Any]) -> None:
        patches.append(patch)

    device.on_twin_desired_properties_patch_received = on_patch
    # The handler setter subscribes in the background; a twin GET round trip orders us after it.
    await asyncio.wait_for(device.get_twin(), 5)
    version = await asyncio.to_thread(local_hub.update_desired, {"content": {"default_playlist": "relax"}})
    await until(lambda: patches, what="desired patch")
    assert patches == [{"content": {"default_playlist": "relax"}, "$version": version}]
    local_hub.update_desired({"content": None})
    await until(lambda: len(patches) == 2, what="second desired patch")
    assert patches[1] == {"content": None, "$version": version + 1}
    assert local_hub.twin()["desired"] == {"$version": version + 1}


def method_responder(device: Any) -> Callable[[Any], Awaitable[None]]:
    from azure.iot.device import MethodResponse

    async def on_method(request: Any) -> None:
        body = {"method": request.name, "echo": request.payload}
        await device.send_method_response(MethodResponse.create_from_method_request(request, 200, body))

    return on_method


async def test_direct_method_round_trip(local_hub: LocalHub, device: Any) -> None:
    device.on_method_request_received = method_responder(device)
    await asyncio.wait_for(device.get_twin(), 5)
    status, payload = await asyncio.to_thread(local_hub.invoke_method, "setVolume", {"volume": 75}, 5)
    assert (status, payload) == (200, {"method": "setVolume", "echo": {"volume": 75}})


async def test_method_times_out_without_answer(local_hub: LocalHub, device: Any) -> None:
    async def silent(request: Any) -> None:
        pass

    device.on_method_request_received = silent
    await asyncio.wait_for(device.get_twin(), 5)
    started = time.monotonic()
    status, payload = await asyncio.to_thread(local_hub.invoke_method, "play", None, 0.3)
    assert status == 504
    assert payload["errorCode"] == 504101
    assert 0.3 <= time.monotonic() - started < 2


async def test_method_to_offline_device_is_404(local_hub: LocalHub) -> None:
    status, payload = await asyncio.to_thread(local_hub.invoke_method, "play", None, 5)
    assert status == 404
    assert payload["errorCode"] == 404103


async def test_telemetry_recorded_with_properties(local_hub: LocalHub, device: Any) -> None:
    from azure.iot.device import Message

    msg = Message(json.dumps({"status": "playing", "volume": 75}))
    msg.content_type = "application/json"
    msg.content_encoding = "utf-8"
    msg.message_id = "m-1"
    msg.custom_properties["kind"] = "state & more+plus"
    await asyncio.wait_for(device.send_message(msg), 5)
    (event,) = await asyncio.to_thread(local_hub.wait_for_telemetry, 1, 5)
    assert event.device_id == local_hub.device_id
    assert event.content_type == "application/json"
    assert event.content_encoding == "utf-8"
    assert event.system_properties["message_id"] == "m-1"
    assert event.properties == {"kind": "state & more+plus"}
    assert event.json() == {"status": "playing", "volume": 75}


async def test_cut_disconnects_and_restore_reconnects(local_hub: LocalHub, device: Any) -> None:
    device.on_method_request_received = method_responder(device)
    await asyncio.wait_for(device.get_twin(), 5)
    local_hub.cut()
    await until(lambda: not device.connected, what="SDK to notice the cut")
    status, _ = await asyncio.to_thread(local_hub.invoke_method, "play", None, 1)
    assert status == 404
    # Let the SDK fail at least once against the refusing proxy: it must keep retrying.
    assert local_hub.proxy is not None
    proxy = local_hub.proxy
    await until(lambda: proxy.tunnels_refused >= 1, what="a refused reconnect attempt")
    assert not device.connected
    local_hub.restore()
    await until(lambda: device.connected, timeout=RETRY_INTERVAL * 5, what="SDK to reconnect")
    # The session survived on the broker, so the method subscription still works.
    status, payload = await asyncio.to_thread(local_hub.invoke_method, "play", None, 5)
    assert (status, payload) == (200, {"method": "play", "echo": None})


async def test_broker_restart_keeps_subscriptions(local_hub: LocalHub, device: Any) -> None:
    device.on_method_request_received = method_responder(device)
    await asyncio.wait_for(device.get_twin(), 5)
    await asyncio.to_thread(local_hub.restart_broker)
    await until(lambda: not device.connected, what="SDK to notice the restart")
    await until(lambda: device.connected, timeout=RETRY_INTERVAL * 5, what="SDK to reconnect")
    status, _ = await asyncio.to_thread(local_hub.invoke_method, "play", None, 5)
    assert status == 200


async def test_hang_then_restore_delivers(local_hub: LocalHub, device: Any) -> None:
    device.on_method_request_received = method_responder(device)
    await asyncio.wait_for(device.get_twin(), 5)
    local_hub.hang()
    status, _ = await asyncio.to_thread(local_hub.invoke_method, "play", None, 0.3)
    assert status == 504
    local_hub.restore()
    status, _ = await asyncio.to_thread(local_hub.invoke_method, "pause", None, 5)
    assert status == 200


async def test_wrong_ca_is_a_clear_error(local_hub: LocalHub, tmp_path: Any) -> None:
    from azure.iot.device.exceptions import ClientError

    from tools.iothub_standin import certs

    other = certs.generate(tmp_path / "other-ca", [local_hub.host_name])
    client = make_client(local_hub, server_verification_cert=other.ca_cert.read_text())
    try:
        with pytest.raises(ClientError) as info:
            await asyncio.wait_for(client.connect(), 10)
        # ClientError <- TlsExchangeAuthError <- SSLCertVerificationError; the SDK does not retry it.
        cause = info.value.__cause__
        assert type(cause).__name__ == "TlsExchangeAuthError"
        assert "CERTIFICATE_VERIFY_FAILED" in str(cause and cause.__cause__)
    finally:
        await client.shutdown()


async def test_rejected_credentials_raise_credential_error(local_hub: LocalHub) -> None:
    from azure.iot.device.exceptions import CredentialError

    local_hub.reject_credentials()
    client = make_client(local_hub)
    try:
        with pytest.raises(CredentialError):
            await asyncio.wait_for(client.connect(), 10)
    finally:
        await client.shutdown()
    local_hub.reject_credentials(False)
    client = make_client(local_hub)
    try:
        await asyncio.wait_for(client.connect(), 10)
    finally:
        await client.shutdown()


def test_twin_survives_service_restart(tmp_path: Any) -> None:
    with LocalHub(tmp_path / "hub") as hub:
        hub.update_desired({"a": 1})
    with LocalHub(tmp_path / "hub") as hub:
        assert hub.twin()["desired"] == {"a": 1, "$version": 2}
