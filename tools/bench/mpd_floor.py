"""The MPD part of the benchmark floor: what the agent cannot beat.

- `mpd_status_rtt`: python-mpd2 asyncio `status` round trips (the command connection's floor).
- `mpd_link_rtt`: the same through `MpdLink.call` (queue, worker, event emission).
- `external_change_latency`: another client's `setvol` sent -> `MpdSnapshot` emitted by `MpdLink`
  (first and second event of a back-to-back pair).

`python -m tools.bench.mpd_floor [N]` runs them all against a private MPD (unix socket and TCP).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mpd
import mpd.asyncio

from amora.adapters.mpd import MpdLink, MpdSettings
from amora.core.effects import MpdCall
from amora.core.events import Event, MpdResult, MpdSnapshot


async def _client(settings: MpdSettings) -> mpd.asyncio.MPDClient:
    client = mpd.asyncio.MPDClient()
    if settings.is_unix:
        await client.connect(settings.host)
    else:
        await client.connect(settings.host, settings.port)
        writer = client._MPDClient__wfile
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if settings.password is not None:
        await client.password(settings.password)
    return client


async def mpd_status_rtt(settings: MpdSettings, n: int, *, pace: float = 0.0) -> list[float]:
    """Seconds per `status` round trip, `n` samples; `pace` > 0 sleeps between them (paced load
    shows delayed-ACK effects that back-to-back commands hide, and vice versa)."""
    client = await _client(settings)
    samples = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            await client.status()
            samples.append(time.perf_counter() - t0)
            if pace:
                await asyncio.sleep(pace)
    finally:
        client.disconnect()
    return samples


async def mpd_link_rtt(settings: MpdSettings, n: int, *, pace: float = 0.0) -> list[float]:
    """Seconds from `MpdLink.call([["status"]])` to its MpdResult being emitted."""
    done: dict[int, float] = {}
    waiter: asyncio.Future[None] | None = None

    def emit(event: Event) -> None:
        if isinstance(event, MpdResult):
            done[event.call_id] = time.perf_counter()
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    link = MpdLink(settings, emit)
    await link.connect()
    samples = []
    loop = asyncio.get_running_loop()
    try:
        for i in range(n):
            waiter = loop.create_future()
            t0 = time.perf_counter()
            link.call(MpdCall(call_id=i, ops=[["status"]]))
            await asyncio.wait_for(waiter, settings.timeout)
            samples.append(done[i] - t0)
            if pace:
                await asyncio.sleep(pace)
    finally:
        await link.close()
    return samples


async def external_change_latency(settings: MpdSettings, n: int) -> tuple[list[float], list[float]]:
    """(first, second): seconds from another client sending `setvol` (twice back to back, from a
    thread) to the MpdSnapshot carrying each value being emitted."""
    seen: dict[str, float] = {}
    changed = asyncio.Event()

    def emit(event: Event) -> None:
        if isinstance(event, MpdSnapshot) and event.status is not None:
            seen.setdefault(event.status.get("volume", ""), time.perf_counter())
            changed.set()

    link = MpdLink(settings, emit)
    await link.connect()
    other = mpd.MPDClient()
    other.timeout = settings.timeout
    if settings.is_unix:
        other.connect(settings.host)
    else:
        other.connect(settings.host, settings.port)
        other._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if settings.password is not None:
        other.password(settings.password)
    loop = asyncio.get_running_loop()
    first: list[float] = []
    second: list[float] = []
    try:
        for i in range(n):
            a, b = str(i % 50), str(50 + i % 50)
            seen.clear()

            def burst(a: str = a, b: str = b) -> float:
                t0 = time.perf_counter()
                other.setvol(a)
                other.setvol(b)
                return t0

            t0 = await loop.run_in_executor(None, burst)
            deadline = loop.time() + settings.timeout
            while b not in seen:
                changed.clear()
                await asyncio.wait_for(changed.wait(), max(0.0, deadline - loop.time()))
            second.append(seen[b] - t0)
            if a in seen:  # MPD may fold both into one wake-up
                first.append(seen[a] - t0)
    finally:
        other.disconnect()
        await link.close()
    return first, second


def summary(samples: list[float]) -> str:
    if not samples:
        return "no samples"
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered) * 1e6:7.0f} us   p99 {p99 * 1e6:7.0f} us   (n={len(ordered)})"


async def _bench(settings_by_name: dict[str, MpdSettings], n: int) -> None:
    for name, settings in settings_by_name.items():
        print(f"[{name}] status rtt (python-mpd2 asyncio):   {summary(await mpd_status_rtt(settings, n))}")
        paced = await mpd_status_rtt(settings, max(20, n // 10), pace=0.02)
        print(f"[{name}] status rtt, paced 20 ms:           {summary(paced)}")
        print(f"[{name}] MpdLink.call status -> MpdResult:  {summary(await mpd_link_rtt(settings, n))}")
        first, second = await external_change_latency(settings, max(20, n // 10))
        print(f"[{name}] external setvol -> snapshot:       {summary(first)}")
        print(f"[{name}] 2nd of a burst -> snapshot:        {summary(second)}")


def main(argv: list[str] | None = None) -> None:
    from tools.stack.mpd import MpdServer, make_sample_library

    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else 2000
    with tempfile.TemporaryDirectory(prefix="mpd-bench-") as tmp:
        make_sample_library(Path(tmp) / "library")
        with MpdServer(Path(tmp) / "state", library=Path(tmp) / "library") as server:
            assert server.port is not None
            targets: dict[str, Any] = {
                "unix": MpdSettings(host=server.host),
                "tcp": MpdSettings(host="127.0.0.1", port=server.port),
            }
            asyncio.run(_bench(targets, n))


if __name__ == "__main__":
    main()
