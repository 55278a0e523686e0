"""The local IoT Hub stand-in, driven by the real azure-iot-device SDK."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tools.iothub_standin import LocalHub
from tools.stack.proc import spawn, stop

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
    assert local_hub.proxy is not None
    proxy = local_hub.proxy
    tunnels_before = proxy.tunnels_opened
    await asyncio.to_thread(local_hub.restart_broker)
    # The SDK may already be back by now (its first retry comes 10 ms after the drop): look for the
    # new tunnel rather than for a disconnected state.
    await until(
        lambda: proxy.tunnels_opened > tunnels_before and device.connected,
        timeout=RETRY_INTERVAL * 5,
        what="SDK to reconnect",
    )
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


async def cli(state_dir: Any, *args: str, timeout: float = 20) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.iothub_standin",
        *args,
        "--state-dir",
        str(state_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_cli_drives_a_served_hub(tmp_path: Any) -> None:
    from azure.iot.device import Message, ProxyOptions
    from azure.iot.device.aio import IoTHubDeviceClient

    state = tmp_path / "hub"
    server = spawn(
        [sys.executable, "-m", "tools.iothub_standin", "serve", "--state-dir", str(state)],
        log=tmp_path / "serve.log",
    )
    try:
        await until(lambda: (state / "standin.json").exists() or server.poll() is not None, what="serve")
        assert server.poll() is None, (tmp_path / "serve.log").read_text()
        info = json.loads((state / "standin.json").read_text())
        rc, conn_str = await cli(state, "connection-string")
        assert rc == 0
        client = IoTHubDeviceClient.create_from_connection_string(
            conn_str.strip(),
            server_verification_cert=Path(info["ca_path"]).read_text(),
            proxy_options=ProxyOptions("HTTP", info["proxy"]["host"], info["proxy"]["port"]),
        )
        await asyncio.wait_for(client.connect(), 10)
        try:
            client.on_method_request_received = method_responder(client)
            await asyncio.wait_for(client.get_twin(), 5)
            rc, out = await cli(
                state, "invoke-device-method", "--method-name", "setVolume", "--method-payload", '{"v": 1}'
            )
            assert (rc, json.loads(out)) == (
                0,
                {"status": 200, "payload": {"method": "setVolume", "echo": {"v": 1}}},
            )

            rc, out = await cli(state, "update-desired", "--set", '{"audio": {"volume": 70}}')
            assert (rc, json.loads(out)) == (0, {"version": 2})
            await asyncio.wait_for(client.patch_twin_reported_properties({"volume": 70}), 5)
            rc, out = await cli(state, "show-twin")
            assert json.loads(out) == {
                "desired": {"audio": {"volume": 70}, "$version": 2},
                "reported": {"volume": 70, "$version": 2},
            }

            await asyncio.wait_for(
                client.send_message(Message('{"n": 1}', content_type="application/json")), 5
            )
            rc, out = await cli(state, "monitor-events", "--from-start", "--count", "1", "--timeout", "10")
            event = json.loads(out.strip().splitlines()[-1])
            assert (rc, event["body"], event["system_properties"]["content_type"]) == (
                0,
                '{"n": 1}',
                "application/json",
            )

            rc, out = await cli(state, "network", "cut")
            assert (rc, json.loads(out)) == (0, {"network": "cut"})
            await until(lambda: not client.connected, what="disconnect")
            rc, out = await cli(state, "invoke-device-method", "--method-name", "play", "--timeout", "1")
            assert rc == 1 and json.loads(out)["status"] == 404
            await cli(state, "network", "restore")
        finally:
            await client.shutdown()
    finally:
        stop(server)
    assert server.returncode == 0
    assert not (state / "control.sock").exists()
    rc, out = await cli(state, "show-twin")
    assert rc == 1 and "no stand-in running" in out


def test_bench_floor_smoke(local_hub: LocalHub) -> None:
    from tools.bench.iothub_floor import measure

    for via_proxy in (False, True):
        result = measure(local_hub, count=20, warmup=2, via_proxy=via_proxy)
        assert 0 < result.p50_ms <= result.p99_ms <= result.max_ms < 1000


def test_reset_clears_state_and_faults(local_hub: LocalHub) -> None:
    local_hub.update_desired({"a": 1})
    local_hub.cut()
    local_hub.reject_credentials()
    local_hub.reset()
    assert local_hub.twin() == {"desired": {"$version": 1}, "reported": {"$version": 1}}
    assert local_hub.network_mode.value == "normal"
    assert local_hub.broker is not None and not local_hub.broker.reject_devices
    assert local_hub.telemetry() == []


def test_property_bag_and_merge_patch() -> None:
    from tools.iothub_standin.hub import parse_property_bag
    from tools.iothub_standin.twin import TwinError, merge_patch, validate_patch

    system, custom = parse_property_bag(
        "%24.mid=m1&%24.ct=application%2Fjson&%24.ce=utf-8&a%2Bb=c%20d+e&flag="
    )
    assert system == {"message_id": "m1", "content_type": "application/json", "content_encoding": "utf-8"}
    assert custom == {"a+b": "c d+e", "flag": ""}

    doc: dict[str, Any] = {"a": {"b": 1, "c": 2}, "d": [1]}
    merge_patch(doc, {"a": {"b": None, "e": {"f": 3}}, "d": None, "g": [2]})
    assert doc == {"a": {"c": 2, "e": {"f": 3}}, "g": [2]}
    for bad in ({"a.b": 1}, {"$x": 1}, {"a b": 1}, [1], {"x": {"$version": 1}}):
        with pytest.raises(TwinError):
            validate_patch(bad)
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(11):
        node["k"] = {}
        node = node["k"]
    with pytest.raises(TwinError):
        validate_patch(deep)


async def test_desired_change_while_offline_arrives_as_full_document(
    local_hub: LocalHub, device: Any
) -> None:
    """The hub does not replay patches sent while the device was offline (QoS 0, like the real
    service), but SDK 2.14 (ensure_desired_properties, on by default) GETs the twin after a reconnect
    and hands the whole desired document to the patch handler as if it were a patch. A key deleted
    while offline is then simply missing: it does not come as null."""
    patches: list[dict[str, Any]] = []

    async def on_patch(patch: dict[str, Any]) -> None:
        patches.append(patch)

    device.on_twin_desired_properties_patch_received = on_patch
    await asyncio.wait_for(device.get_twin(), 5)
    local_hub.update_desired({"volume": 5, "playlist": "x"})
    await until(lambda: patches, what="live patch")
    local_hub.cut()
    await until(lambda: not device.connected, what="disconnect")
    version = local_hub.update_desired({"volume": 10, "playlist": None})
    local_hub.restore()
    await until(lambda: len(patches) == 2, timeout=RETRY_INTERVAL * 5, what="catch-up patch")
    assert patches[1] == {"volume": 10, "$version": version}


async def test_cloud_to_device_message(local_hub: LocalHub, device: Any) -> None:
    received: list[Any] = []

    async def on_message(message: Any) -> None:
        received.append(message)

    device.on_message_received = on_message
    await asyncio.wait_for(device.get_twin(), 5)
    local_hub.send_c2d('{"hello": 1}', {"kind": "greeting"})
    await until(lambda: received, what="C2D message")
    assert received[0].data == b'{"hello": 1}'
    assert received[0].custom_properties == {"kind": "greeting"}
