"""The live agent: one asyncio loop, one queue, one consumer.

Adapters (MQTT, MPD, IoT Hub, timers, signals) only put events on the queue. The consumer takes
them one at a time, applies each to the core and carries out the effects the core returns; when the
queue is empty it asks the core for its coalesced publications. Effects never block the consumer:
anything slow (MPD calls, connects, operations) runs as a task that reports back with an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from amora.core import effects as fx
from amora.core.agent import AgentCore
from amora.core.events import Event, OperationDone, ShutdownRequested, Started, SystemSample, TimerFired

log = logging.getLogger("amora.runtime")


class Link(Protocol):
    async def connect(self) -> None: ...

    async def close(self) -> None: ...


class MqttPort(Link, Protocol):
    def publish_state(self, state: dict[str, Any]) -> None: ...

    def publish_connection(self, online: bool) -> None: ...

    def respond(self, body: dict[str, Any]) -> None: ...

    async def flush(self, timeout: float) -> bool: ...


class MpdPort(Link, Protocol):
    def call(self, effect: fx.MpdCall) -> None: ...


class MethodPort(Link, Protocol):
    def respond(self, request_id: str, status: int, body: dict[str, Any]) -> None: ...

    def report(self, patch: dict[str, Any]) -> None: ...

    def send_telemetry(self, body: dict[str, Any]) -> None: ...


Operation = Callable[[dict[str, Any]], Awaitable[tuple[bool, Any, str]]]

_ALIVE = object()  # queue sentinel: proves the consumer still turns


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeOptions:
    free_space_path: Path | None = None
    free_space_interval: float = 60.0
    stop_timeout: float = 5.0
    boot_time: float = 0.0
    rebooted_on_request: bool = False
    version: str = ""
    seed: int | None = None
    sync_last_success: float | None = None


class Runtime:
    def __init__(
        self,
        core: AgentCore,
        *,
        options: RuntimeOptions,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.core = core
        self.options = options
        self.clock = clock
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.links: dict[str, Link] = {}
        self.mqtt: MqttPort | None = None
        self.mpd: MpdPort | None = None
        self.iothub: MethodPort | None = None
        self.operations: dict[str, Operation] = {}
        self.recorder: Callable[[Event], None] | None = None
        self.on_effects: Callable[[list[fx.Effect]], None] | None = None  # observers (status line)
        # the watchdog's proof that the consumer turns
        self.on_alive: Callable[[], None] | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing: list[asyncio.Task[Any]] = []
        self._running_ops: dict[str, set[asyncio.Task[Any]]] = {}
        self._stopped = asyncio.Event()
        self._parked = False  # the consumer waits on an empty queue
        self._busy = False  # an item is being handled (by the consumer or emit_now)
        self._free_space: int | None = None

    # adapters call this (from the loop's thread)
    def emit(self, event: Event) -> None:
        self.queue.put_nowait(event)

    def emit_now(self, event: Event) -> None:
        """`emit` for an adapter that has one event to report from a loop callback: if the consumer
        is idle (nothing queued, nothing being handled) the event is handled right here, publications
        included, instead of one loop iteration later when the woken consumer gets to it. Sources
        that may emit several events in one callback use `emit`, so those are handled and
        coalesced together as before."""
        if not self._parked or self._busy or not self.queue.empty() or self._stopped.is_set():
            self.queue.put_nowait(event)
            return
        self._consume(event)
        if self._stopped.is_set():
            self.queue.put_nowait(_ALIVE)  # the parked consumer must wake to see it

    def emit_threadsafe(self, loop: asyncio.AbstractEventLoop, event: Event) -> None:
        loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def attach(self, name: str, link: Link) -> None:
        self.links[name] = link
        if hasattr(link, "emit_now"):
            link.emit_now = self.emit_now  # links that can use the prompt path say so
        if name == "mqtt":
            self.mqtt = link  # type: ignore[assignment]
        elif name == "mpd":
            self.mpd = link  # type: ignore[assignment]
        elif name == "iothub":
            self.iothub = link  # type: ignore[assignment]

    def request_shutdown(self, reason: str = "signal") -> None:
        self.emit(ShutdownRequested(at=self.clock(), reason=reason))

    def poke(self) -> None:
        """Ask the consumer to prove it is alive (watchdog heartbeat)."""
        self.queue.put_nowait(_ALIVE)

    # ------------------------------------------------------------------ main loop

    async def run(self, *, install_signals: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_shutdown, sig.name)
        sampler = self._spawn(self._sample_free_space_forever())
        seed = self.options.seed if self.options.seed is not None else int.from_bytes(_urandom(8), "big")
        self.emit(
            Started(
                at=self.clock(),
                boot_time=self.options.boot_time,
                seed=seed,
                version=self.options.version,
                free_space=self._measure_free_space(),
                rebooted_on_request=self.options.rebooted_on_request,
                sync_last_success=self.options.sync_last_success,
            )
        )
        try:
            while not self._stopped.is_set():
                if self.queue.empty():
                    self._parked = True
                    try:
                        item = await self.queue.get()
                    finally:
                        self._parked = False
                else:
                    item = self.queue.get_nowait()
                self._consume(item)
            await self._finish_closing()
        finally:
            sampler.cancel()
            for handle in self._timers.values():
                handle.cancel()
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    def _consume(self, item: Any) -> None:
        self._busy = True
        try:
            if item is not _ALIVE:
                self._apply(item)
                if self.queue.empty() and not self._stopped.is_set():
                    self._execute(self.core.drain())
            if self.on_alive is not None:
                self.on_alive()
        finally:
            self._busy = False

    def _apply(self, event: Event) -> None:
        if self.recorder is not None:
            try:
                self.recorder(event)
            except Exception:
                log.exception("could not record an event")
        self._execute(self.core.handle(event))

    async def _finish_closing(self) -> None:
        # operations first (a sync must finish its cleanup), then the links, within the stop timeout
        ops = [task for tasks in self._running_ops.values() for task in tasks]
        for task in ops:
            task.cancel()
        waiting = ops + self._closing
        if not waiting:
            return
        _done, pending = await asyncio.wait(waiting, timeout=self.options.stop_timeout)
        for task in pending:
            task.cancel()

    async def cancel_operations(self, name: str, timeout: float = 10.0) -> None:
        """Cancel the running operations called `name` and wait until they have cleaned up."""
        tasks = list(self._running_ops.get(name, ()))
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    # ------------------------------------------------------------------ effects

    def _execute(self, effects: list[fx.Effect]) -> None:
        for effect in effects:
            try:
                self._execute_one(effect)
            except Exception:
                log.exception("failed to carry out %s", effect.kind)
        # observers (the status line) after the effects: a publication or response is not held up
        # by bookkeeping
        if self.on_effects is not None and effects:
            self.on_effects(effects)

    def _execute_one(self, effect: fx.Effect) -> None:
        match effect:
            case fx.Respond(transport="mqtt"):
                if self.mqtt is not None:
                    self.mqtt.respond(effect.body)
            case fx.Respond():
                if self.iothub is not None:
                    self.iothub.respond(effect.request_id, effect.status, effect.body)
            case fx.PublishState():
                if self.mqtt is not None:
                    self.mqtt.publish_state(effect.state)
            case fx.PublishConnection():
                if self.mqtt is not None:
                    self.mqtt.publish_connection(effect.online)
            case fx.MpdCall():
                if self.mpd is not None:
                    self.mpd.call(effect)
            case fx.ReportProperties():
                if self.iothub is not None:
                    self.iothub.report(effect.patch)
            case fx.SendTelemetry():
                if self.iothub is not None:
                    self.iothub.send_telemetry(effect.body)
            case fx.Connect():
                link = self.links.get(effect.link)
                if link is not None:
                    self._spawn(link.connect())
            case fx.Disconnect():
                self._closing.append(self._spawn(self._close_link(effect.link)))
            case fx.StartTimer():
                self._start_timer(effect.name, effect.delay)
            case fx.CancelTimer():
                handle = self._timers.pop(effect.name, None)
                if handle is not None:
                    handle.cancel()
            case fx.StartOperation():
                task = self._spawn(self._run_operation(effect))
                running = self._running_ops.setdefault(effect.operation, set())
                running.add(task)
                task.add_done_callback(running.discard)
            case fx.Log():
                log.log(logging.getLevelName(effect.level.upper()), "%s", effect.message)
            case fx.Stop():
                self._stopped.set()
            case _:
                log.warning("no executor for effect %s", effect.kind)

    def _start_timer(self, name: str, delay: float) -> None:
        old = self._timers.pop(name, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.pop(name, None)
            self.emit(TimerFired(at=self.clock(), name=name))

        self._timers[name] = loop.call_later(delay, fire)

    async def _close_link(self, name: str) -> None:
        link = self.links.get(name)
        if link is None:
            return
        if name == "mqtt" and self.mqtt is not None:
            # the offline message (and any last responses) must reach the broker first
            with contextlib.suppress(Exception):
                await self.mqtt.flush(min(2.0, self.options.stop_timeout / 2))
        try:
            await asyncio.wait_for(link.close(), timeout=self.options.stop_timeout / 2)
        except Exception as exc:
            log.warning("closing %s: %s", name, type(exc).__name__)

    async def _run_operation(self, effect: fx.StartOperation) -> None:
        operation = self.operations.get(effect.operation)
        if operation is None:
            self.emit(
                OperationDone(
                    at=self.clock(), op_id=effect.op_id, ok=False, error=f"{effect.operation}: not available"
                )
            )
            return
        try:
            ok, result, error = await operation(dict(effect.args))
        except asyncio.CancelledError:
            ok, result, error = False, None, "cancelled"
            self.emit(OperationDone(at=self.clock(), op_id=effect.op_id, ok=ok, result=result, error=error))
            raise
        except Exception as exc:
            log.exception("operation %s failed", effect.operation)
            ok, result, error = False, None, f"{type(exc).__name__}: {exc}"
        self.emit(OperationDone(at=self.clock(), op_id=effect.op_id, ok=ok, result=result, error=error))

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed: %r", task.exception())

    # ------------------------------------------------------------------ system sampling

    def _measure_free_space(self) -> int | None:
        path = self.options.free_space_path
        if path is None:
            return None
        try:
            return int(shutil.disk_usage(path).free)
        except OSError:
            return None

    async def _sample_free_space_forever(self) -> None:
        self._free_space = self._measure_free_space()
        while True:
            await asyncio.sleep(self.options.free_space_interval)
            value = self._measure_free_space()
            if value != self._free_space:
                self._free_space = value
                self.emit(SystemSample(at=self.clock(), free_space=value))


def _urandom(n: int) -> bytes:
    import os

    return os.urandom(n)
