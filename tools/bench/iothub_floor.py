"""The latency floor under the direct-method benchmark: a bare MQTT echo round trip through the
stand-in's TLS broker (paho 1.6, TLS, TCP_NODELAY on both clients, mosquitto `set_tcp_nodelay true`).

A direct method adds, on top of this, the CONNECT proxy hop, the SDK's pipeline and the agent's work.

    python -m tools.bench.iothub_floor [--count 500] [--qos 0|1] [--via-proxy] [--json]
"""

from __future__ import annotations

import argparse
import json
import queue
import socket
import ssl
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import paho.mqtt.client as mqtt

from tools.iothub_standin import LocalHub


@dataclass(frozen=True)
class FloorResult:
    count: int
    qos: int
    via_proxy: bool
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float


def _tls_client(hub: LocalHub, client_id: str) -> mqtt.Client:
    assert hub.broker is not None
    client = mqtt.Client(client_id=client_id, clean_session=True)
    client.tls_set(ca_certs=str(hub.ca_path), tls_version=ssl.PROTOCOL_TLS_CLIENT)

    def nodelay(c: mqtt.Client, userdata: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    client.on_socket_open = nodelay
    return client


def _connect(client: mqtt.Client, port: int, host: str = "localhost", timeout: float = 10.0) -> None:
    ready = threading.Event()
    client.on_connect = lambda c, u, f, rc: ready.set() if rc == 0 else None
    client.connect(host, port)
    client.loop_start()
    if not ready.wait(timeout):
        raise TimeoutError("benchmark client could not connect")


def _subscribe(client: mqtt.Client, topic: str, qos: int, timeout: float = 10.0) -> None:
    done = threading.Event()
    client.on_subscribe = lambda *_: done.set()
    client.subscribe(topic, qos)
    if not done.wait(timeout):
        raise TimeoutError(f"subscribe to {topic} timed out")


def measure(
    hub: LocalHub, *, count: int = 500, qos: int = 0, warmup: int = 20, via_proxy: bool = False
) -> FloorResult:
    """Round trips requester -> broker -> echoer -> broker -> requester, one at a time. With
    `via_proxy` the echoer reaches the broker the way the SDK does: CONNECT proxy, hub host name, 8883."""
    assert hub.broker is not None
    port = hub.broker.tls_port
    echo = _tls_client(hub, "bench-echo")
    requester = _tls_client(hub, "bench-requester")
    echo_host, echo_port = "localhost", port
    if via_proxy:
        import socks

        proxy_host, proxy_port = hub.proxy_address
        echo.proxy_set(proxy_type=socks.HTTP, proxy_addr=proxy_host, proxy_port=proxy_port)
        echo_host, echo_port = hub.host_name, 8883
    replies: queue.Queue[bytes] = queue.Queue()
    echo.on_message = lambda c, u, m: c.publish("bench/res", m.payload, qos=qos)
    requester.on_message = lambda c, u, m: replies.put(m.payload)
    try:
        _connect(echo, echo_port, echo_host)
        _connect(requester, port)
        _subscribe(echo, "bench/req", qos)
        _subscribe(requester, "bench/res", qos)
        samples: list[float] = []
        for i in range(warmup + count):
            body = str(i).encode()
            t0 = time.perf_counter()
            requester.publish("bench/req", body, qos=qos)
            while replies.get(timeout=5) != body:
                pass
            if i >= warmup:
                samples.append((time.perf_counter() - t0) * 1000)
    finally:
        for c in (echo, requester):
            c.disconnect()
            c.loop_stop()
    samples.sort()
    return FloorResult(
        count=count,
        qos=qos,
        via_proxy=via_proxy,
        p50_ms=round(statistics.median(samples), 3),
        p99_ms=round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 3),
        mean_ms=round(statistics.fmean(samples), 3),
        max_ms=round(samples[-1], 3),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--qos", type=int, choices=[0, 1], default=0)
    parser.add_argument("--via-proxy", action="store_true", help="echo side goes through the CONNECT proxy")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with LocalHub() as hub:
        result = measure(hub, count=args.count, qos=args.qos, via_proxy=args.via_proxy)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(
            f"MQTT/TLS echo floor over {result.count} round trips (QoS {result.qos}"
            f"{', via proxy' if result.via_proxy else ''}): "
            f"p50 {result.p50_ms} ms, p99 {result.p99_ms} ms, "
            f"mean {result.mean_ms} ms, max {result.max_ms} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
