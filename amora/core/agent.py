"""The agent core: events in, effects out.

`AgentCore.handle(event)` applies one input and returns what must be done about it;
`AgentCore.drain()` is called when the input queue is empty and returns the coalesced publications
(state), so a burst of inputs ends in one state message carrying the latest truth while the first
change of a quiet period goes out at once.

Every request (MQTT command or direct method) takes the same path: envelope checks, de-duplication
by command_id, params against the command's schema, then the statechart trigger of the same name.
A trigger the current state does not have answers `not_possible`; a failed guard answers the error
that guard stands for; the transition's effect callbacks plan the MPD ops. Nothing is sent to MPD
before all checks passed, so a refused command changes nothing.
"""

from __future__ import annotations

import json
import random
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from transitions import MachineError

from amora import schemas
from amora.core import effects as fx
from amora.core import twin
from amora.core.chart import Chart, build_machine, load_chart
from amora.core.commands import PLANS, Plan, PlanError, summarize_status
from amora.core.events import (
    LINKS,
    DesiredPatch,
    Event,
    LinkDown,
    LinkUp,
    MethodCall,
    MpdResult,
    MpdSnapshot,
    MqttMessage,
    OperationDone,
    ShutdownRequested,
    Started,
    SyncProgress,
    SystemSample,
    TimerFired,
)
from amora.core.model import ChartModel
from amora.core.player import PlayerPicture
from amora.core.settings import BackoffPolicy, CoreSettings

HTTP_STATUS = {
    "invalid_json": 400,
    "invalid_command": 400,
    "too_large": 413,
    "stale_command": 400,
    "invalid_params": 400,
    "unknown_command": 404,
    "not_possible": 409,
    "busy": 409,
    "not_configured": 501,
    "mpd_refused": 502,
    "mpd_unavailable": 503,
    "timeout": 504,
    "internal": 500,
}

# A guard that fails stands for one error; the first failing guard of a trigger names it.
GUARD_ERRORS = {
    "mpd_online": ("mpd_unavailable", "MPD is not connected"),
    "mpd_has_song": ("not_possible", "nothing is playing"),
    "sync_configured": ("not_configured", "content sync is not configured on this device"),
    "reboot_allowed": (
        "not_possible",
        "reboot refused: the device came back from a requested reboot "
        'less than system.reboot_guard_seconds ago; send {"force": true} to override',
    ),
    "dev_mode": ("not_possible", "not in dev_mode"),
    "iothub_configured": ("not_configured", "IoT Hub is not configured"),
}

_COMMAND_ID_RE = re.compile(rb'"command_id"\s*:\s*"((?:[^"\\]|\\.){1,128})"')


@dataclass(slots=True)
class Request:
    # "desired": a desired property applied through its command; "internal": the agent's own timers
    transport: fx.Transport | Literal["desired", "internal"]
    request_id: str  # the direct method's rid; the property path for a desired property; "" for MQTT
    command_id: str | None
    command: str | None
    params: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0
    desired_version: int | None = None


@dataclass(slots=True)
class _Pending:
    kind: str  # "command" | "state" | "startup" | "sync_refresh"
    request: Request | None
    plan: Plan | None = None
    done: OperationDone | None = None  # sync_refresh: the outcome to publish once MPD was re-read


class AgentCore:
    def __init__(self, settings: CoreSettings, chart: Chart | None = None) -> None:
        self.settings = settings
        self.chart = chart or load_chart()
        self.model = ChartModel(self)
        self.machine = build_machine(self.chart, self.model)
        self.picture = PlayerPicture()
        self.rng = random.Random(0)
        self.now = 0.0
        self.boot_time = 0.0
        self.started_at = 0.0
        self.free_space: int | None = None
        self.rebooted_on_request = False
        self.last_error: str | None = None
        self.sync_status: dict[str, Any] | None = None
        self.seq = 0
        self.shutting_down = False
        self._effects: list[fx.Effect] = []
        self._config: dict[str, str] | None = None  # region -> state, cached between triggers
        self._firing = False
        self._dirty = False
        self._awaiting_song = False
        self._last_published: dict[str, Any] | None = None
        self._attempts: dict[str, int] = dict.fromkeys(LINKS, 0)
        self._next_id = 0
        self._pending: dict[int, _Pending] = {}
        self._responses: OrderedDict[str, tuple[int, dict[str, Any]]] = OrderedDict()
        self._in_flight: dict[str, list[Request]] = {}
        self._outbox: list[fx.Respond] = []
        self._startup_volume_applied = False
        # device twin
        self.desired_version: int | None = None
        self.desired: dict[tuple[str, ...], Any] = {}  # what the cloud asked for, by path
        self.acks: dict[tuple[str, ...], dict[str, Any]] = {}
        self.default_playlist: str | None = None
        self.sync_enabled_override: bool | None = None  # desired content.sync_enabled
        self.desired_sync: dict[str, Any] | None = None  # desired content.sync (overrides the config's)
        self._reported: dict[str, Any] | None = None  # what the hub was last sent
        self._last_report_at: float | None = None
        self._report_timer = False
        self._operations: dict[int, str] = {}  # op_id -> operation, for OperationDone
        self.sync_last_success: float | None = None
        self._sync_timer = False
        self._sync_started_once = False

    # ------------------------------------------------------------------ public API

    def handle(self, event: Event) -> list[fx.Effect]:
        self.now = event.at
        self._effects = []
        try:
            self._dispatch_event(event)
        except Exception as exc:  # no input may crash the agent; the machine is left as it was
            self.emit(fx.Log("error", f"internal error handling {event.kind}: {type(exc).__name__}: {exc}"))
        out, self._effects = self._effects, []
        return out

    def drain(self) -> list[fx.Effect]:
        """Coalesced publications, once the queue is empty."""
        self._effects = []
        if self._dirty and not self._awaiting_song:
            if self.link_state("mqtt") == "online":
                self._publish_state(force=False)
            if self.link_state("iothub") == "online":
                self._report(full=False)
        if not self._awaiting_song:
            self._dirty = False
        out, self._effects = self._effects, []
        return out

    def emit(self, effect: fx.Effect) -> None:
        self._effects.append(effect)

    def mark_dirty(self) -> None:
        self._dirty = True

    def link_state(self, link: str) -> str:
        """The active state of a region (`player` or a link)."""
        config = self._config
        if config is None:
            # reading the machine's state is costly (it walks the nested tree); between triggers
            # it cannot change, so it is read once per trigger
            config = self._read_configuration()
            if not self._firing:
                self._config = config
        return config.get(link, "offline")

    def _read_configuration(self) -> dict[str, str]:
        out = {}
        cut = len(self.chart.name) + 1
        for leaf in self._leaves():
            region, _, state = leaf[cut:].partition("_")
            out[region] = state
        return out

    def player_state(self) -> str:
        return self.link_state("player")

    def configuration(self) -> dict[str, str]:
        """Region -> active state, for debugging and traces."""
        return {region: self.link_state(region) for region in self.chart.regions}

    # ------------------------------------------------------------------ events

    def _leaves(self) -> list[str]:
        state = self.model.state  # type: ignore[attr-defined]
        return list(state) if isinstance(state, list) else [state]

    def _fire(self, trigger: str, **kwargs: Any) -> bool:
        self._config = None
        self._firing = True
        try:
            result: bool = self.model.trigger(trigger, **kwargs)  # type: ignore[attr-defined]
        finally:
            self._firing = False
            self._config = None
        return result

    def _dispatch_event(self, event: Event) -> None:
        match event:
            case MqttMessage():
                self._on_mqtt_message(event)
            case MethodCall():
                self._on_method_call(event)
            case MpdSnapshot():
                self._on_snapshot(event)
            case MpdResult():
                self._on_mpd_result(event)
            case LinkUp():
                self._on_link(f"{event.link}_up", event.link)
            case LinkDown():
                self._on_link_down(event)
            case TimerFired():
                self._on_timer(event)
            case Started():
                self._on_started(event)
            case ShutdownRequested():
                self._on_shutdown(event)
            case SystemSample():
                if _mib(event.free_space) != _mib(self.free_space):
                    self.free_space = event.free_space
                    self._dirty = True
            case OperationDone():
                self._on_operation_done(event)
            case SyncProgress():
                if self.player_state() == "syncing":
                    previous = self.sync_status or {}
                    keep: dict[str, Any] = {
                        k: previous[k]
                        for k in ("op_id", "force", "started_at", "trigger", "last_success")
                        if k in previous
                    }
                    self.sync_status = {**keep, **event.progress}
                    self._dirty = True
            case DesiredPatch():
                self._on_desired(event)
            case _:
                self.emit(fx.Log("warning", f"unknown event {event.kind}"))

    def _on_started(self, event: Started) -> None:
        self.boot_time = event.boot_time
        self.started_at = event.at
        self.rng = random.Random(event.seed)
        self.free_space = event.free_space
        self.rebooted_on_request = event.rebooted_on_request
        self.sync_last_success = event.sync_last_success
        if event.rebooted_on_request:
            self.emit(fx.Log("info", "came back from a requested reboot"))
        for link in LINKS:
            self._try_fire(f"{link}_start")

    def _on_shutdown(self, event: ShutdownRequested) -> None:
        if self.shutting_down:
            return
        self.shutting_down = True
        # what changed since the last publication is said before going: the last truth, then offline
        if self.link_state("mqtt") == "online":
            if self._dirty:
                self._publish_state(force=False)
            self.emit(fx.PublishConnection(online=False))
        if self.link_state("iothub") == "online":
            self._report(full=False, throttle=False)
        self._dirty = False
        self._try_fire("shutdown")  # fires in every link region that is not offline
        self.emit(fx.Stop())

    def _try_fire(self, trigger: str, **kwargs: Any) -> bool:
        try:
            return self._fire(trigger, **kwargs)
        except MachineError:
            return False

    def _on_link(self, trigger: str, link: str) -> None:
        if not self._try_fire(trigger):
            self.emit(fx.Log("debug", f"{trigger} ignored in {self.link_state(link)}"))

    def _on_link_down(self, event: LinkDown) -> None:
        if event.link == "mpd":
            self._awaiting_song = False
            self._fail_pending("mpd_unavailable", f"MPD connection lost: {event.reason}")
        moved = self._try_fire(f"{event.link}_down")
        if moved:
            self.emit(fx.Log("warning", f"{event.link} link down: {event.reason}"))

    def _on_timer(self, event: TimerFired) -> None:
        if event.name.startswith("retry:"):
            link = event.name.removeprefix("retry:")
            self._try_fire(f"{link}_retry")
        elif event.name == "telemetry":
            if self.link_state("iothub") == "online":
                self.emit(fx.SendTelemetry(body=self.telemetry()))
                self.emit(fx.StartTimer(name="telemetry", delay=self.settings.telemetry_interval))
        elif event.name == "sync":
            self._sync_timer_fired()
        elif event.name == "report":
            self._report_timer = False
            self._dirty = True
        elif event.name == "reboot_overdue" and self.player_state() == "rebooting":
            self._reboot_did_not_happen(
                f"reboot command succeeded but the device did not reboot within "
                f"{self.settings.reboot_overdue_seconds:g} s"
            )

    def _reboot_did_not_happen(self, message: str) -> None:
        self.last_error = message
        self.emit(fx.Log("error", message))
        self._try_fire("reboot_finished")
        self._dirty = True

    # ------------------------------------------------------------------ links

    def link_online(self, link: str) -> None:
        self._attempts[link] = 0
        self._dirty = True
        if link == "mqtt":
            self.emit(fx.PublishConnection(online=True))
            self._publish_state(force=True)
            outbox, self._outbox = self._outbox, []
            self._effects.extend(outbox)
        elif link == "iothub":
            self.emit(fx.Log("info", "IoT Hub connected"))
            if self.settings.enable_device_twin:
                self._report(full=True)
            if self.settings.telemetry_interval > 0:
                self.emit(fx.StartTimer(name="telemetry", delay=self.settings.telemetry_interval))
        elif link == "mpd":
            self.emit(fx.Log("info", "MPD connected"))
            self._retry_desired()
            if not self._sync_started_once:
                self._sync_started_once = True
                self._arm_sync_timer(0.0)  # sync at start, once MPD can index what arrives
            if self.settings.startup_volume is not None and not self._startup_volume_applied:
                self._startup_volume_applied = True
                call_id = self._new_id()
                self._pending[call_id] = _Pending("startup", None)
                self.emit(fx.MpdCall(call_id=call_id, ops=[["setvol", self.settings.startup_volume]]))

    def schedule_retry(self, link: str) -> None:
        self._attempts[link] += 1
        policy = self.settings.backoff.get(link, BackoffPolicy())
        delay = policy.delay(self._attempts[link], self.rng)
        self._dirty = True
        self.emit(fx.StartTimer(name=f"retry:{link}", delay=delay))

    # ------------------------------------------------------------------ requests

    def _on_mqtt_message(self, event: MqttMessage) -> None:
        payload = event.payload
        if event.retained:
            self.emit(fx.Log("warning", "ignored a retained message on the commands topic"))
            return
        if len(payload) > self.settings.max_payload_bytes:
            self._reject_raw(
                payload,
                "too_large",
                f"payload of {len(payload)} bytes is over the limit of {self.settings.max_payload_bytes}",
            )
            return
        try:
            doc = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            self._reject_raw(payload, "invalid_json", f"payload is not UTF-8 JSON: {str(exc)[:120]}")
            return
        command_id = doc.get("command_id") if isinstance(doc, dict) else None
        command = doc.get("command") if isinstance(doc, dict) else None
        request = Request(
            transport="mqtt",
            request_id="",
            command_id=command_id if isinstance(command_id, str) and command_id else None,
            command=command if isinstance(command, str) else None,
            at=event.at,
        )
        issues = schemas.issues("command", doc)
        if issues:
            if request.command_id is None:
                self.emit(fx.Log("warning", f"dropped a command without a readable command_id: {issues[0]}"))
                return
            self._respond_error(request, "invalid_command", issues[0].message, issues[0].field)
            return
        age_limit = self.settings.max_command_age
        if age_limit is not None and "timestamp" in doc and event.at - float(doc["timestamp"]) > age_limit:
            self._respond_error(
                request, "stale_command", f"command is older than {age_limit} s", "/timestamp"
            )
            return
        request.params = doc.get("params") or {}
        self._run_request(request, params_pointer="/params")

    def _on_method_call(self, event: MethodCall) -> None:
        request = Request(
            transport="method",
            request_id=event.request_id,
            command_id=event.request_id or None,
            command=event.name,
            at=event.at,
        )
        payload = event.payload
        if payload is None or payload == "":
            payload = {}
        if not isinstance(payload, dict):
            self._respond_error(request, "invalid_params", "the method payload must be a JSON object", "")
            return
        request.params = payload
        self._run_request(request, params_pointer="")

    def _reject_raw(self, payload: bytes, code: str, message: str) -> None:
        match = _COMMAND_ID_RE.search(payload[:4096])
        if match is None:
            self.emit(fx.Log("warning", f"dropped a command ({code}): {message}"))
            return
        try:
            command_id = json.loads(b'"' + match.group(1) + b'"')
        except ValueError:
            self.emit(fx.Log("warning", f"dropped a command ({code}): {message}"))
            return
        request = Request(transport="mqtt", request_id="", command_id=command_id, command=None, at=self.now)
        self._respond_error(request, code, message, "")

    def _run_request(self, request: Request, *, params_pointer: str) -> None:
        key = request.command_id if request.transport == "mqtt" else None
        if key is not None:
            if key in self._responses:
                status, body = self._responses[key]
                self._deliver(request, status, body)
                return
            if key in self._in_flight:
                self._in_flight[key].append(request)
                return
        name = request.command or ""
        if name not in PLANS and name not in ("getState", "ping", "syncContent", "reboot"):
            self._respond_error(
                request,
                "unknown_command",
                f"unknown command {name!r}",
                "/command" if request.transport == "mqtt" else "",
            )
            return
        issues = schemas.command_params_issues(name, request.params)
        if issues:
            self._respond_error(
                request, "invalid_params", issues[0].message, params_pointer + issues[0].field
            )
            return
        if key is not None:
            self._in_flight[key] = []
        try:
            moved = self._fire(name, request=request)
        except MachineError:
            self._respond_error(
                request, "not_possible", f"{name} is not possible while the player is {self.player_state()}"
            )
            return
        except PlanError as exc:
            self._respond_error(request, "invalid_params", exc.message, params_pointer + exc.field)
            return
        except Exception as exc:  # a bug must still answer the caller, and not take the agent down
            self.emit(fx.Log("error", f"internal error in {name}: {type(exc).__name__}: {exc}"))
            self._respond_error(request, "internal", f"internal error: {type(exc).__name__}")
            return
        if not moved:
            code, message = self._failed_guard(name, request)
            self._respond_error(request, code, message)

    def _failed_guard(self, trigger: str, request: Request) -> tuple[str, str]:
        player = self.player_state()
        for t in self.chart.transitions:
            if t.trigger != trigger or t.region != "player" or player not in t.sources:
                continue
            for guard in t.conditions:
                if not getattr(self.model, guard)(_FakeEvent(request)) and guard in GUARD_ERRORS:
                    if guard == "dev_mode":
                        continue
                    return GUARD_ERRORS[guard]
        return "not_possible", f"{trigger} is not possible now"

    # effect callbacks for requests

    def send_to_mpd(self, request: Request) -> None:
        assert request.command is not None
        plan = PLANS[request.command](request.params, self.picture)
        if plan.result is not None and not plan.ops:
            self._respond_ok(request, plan.result)
            return
        call_id = self._new_id()
        self._pending[call_id] = _Pending("command", request, plan)
        self.emit(fx.MpdCall(call_id=call_id, ops=plan.ops))

    def refresh_state(self, request: Request) -> None:
        self._dirty = True
        if self.link_state("mpd") != "online":
            self._respond_ok(request, self.state_document())
            return
        call_id = self._new_id()
        self._pending[call_id] = _Pending("state", request)
        self.emit(fx.MpdCall(call_id=call_id, ops=[["snapshot"]]))

    def answer_ping(self, request: Request) -> None:
        self._respond_ok(request, {"pong": True, "version": self.settings.version, "time": self.now})

    def start_sync(self, request: Request) -> None:
        op_id = self._new_id()
        force = bool(request.params.get("force", False))
        self._operations[op_id] = "sync"
        self.sync_status = {
            "phase": "starting",
            "op_id": op_id,
            "force": force,
            "started_at": self.now,
            "trigger": "timer" if request.transport == "internal" else "request",
            "last_success": self.sync_last_success,
        }
        self._dirty = True
        self._respond_ok(request, {"accepted": True, "op_id": op_id})
        args: dict[str, Any] = {"force": force}
        if self.desired_sync:
            args["desired"] = dict(self.desired_sync)
        self.emit(fx.StartOperation(op_id=op_id, operation="sync", args=args))

    def report_sync_busy(self, request: Request) -> None:
        running = (self.sync_status or {}).get("op_id")
        self._respond_error(request, "busy", f"a content sync is already running (op_id {running})")

    def sync_enabled(self) -> bool:
        enabled = self.sync_enabled_override
        return self.settings.sync_enabled if enabled is None else enabled

    def sync_configured(self) -> bool:
        """A container from the config, or one the cloud gave in desired content.sync."""
        desired = self.desired_sync or {}
        return self.settings.sync_configured or bool(
            desired.get("container_url") or desired.get("connection_string")
        )

    def sync_interval(self) -> float:
        interval = (self.desired_sync or {}).get("interval_seconds")
        return float(interval) if isinstance(interval, int) else self.settings.sync_interval

    def _arm_sync_timer(self, delay: float | None = None) -> None:
        if not self.sync_configured() or not self.sync_enabled() or self._sync_timer:
            return
        if delay is None:
            if self.sync_interval() <= 0:
                return
            delay = self.sync_interval()
        self._sync_timer = True
        self.emit(fx.StartTimer(name="sync", delay=delay))

    def _sync_timer_fired(self) -> None:
        self._sync_timer = False
        if not self.sync_enabled():
            return
        if self.player_state() == "syncing":
            return
        request = Request(
            transport="internal",
            request_id="sync",
            command_id=None,
            command="syncContent",
            params={},
            at=self.now,
        )
        self._run_request(request, params_pointer="")

    def _sync_done(self, event: OperationDone) -> None:
        result = event.result if isinstance(event.result, dict) else {}
        if result.get("changed") and self.link_state("mpd") == "online":
            # the playlists folder changed behind MPD's back (no idle event for that): re-read
            # everything before calling the sync done, so "done" means the agent sees it too
            if self.sync_status is not None:
                self.sync_status = {**self.sync_status, "phase": "refreshing"}
                self._dirty = True
            call_id = self._new_id()
            self._pending[call_id] = _Pending("sync_refresh", None, done=event)
            self.emit(fx.MpdCall(call_id=call_id, ops=[["snapshot"]]))
            return
        self._finish_sync(event)

    def _finish_sync(self, event: OperationDone) -> None:
        result = event.result if isinstance(event.result, dict) else {}
        if event.ok:
            self.sync_last_success = self.now
        previous = self.sync_status or {}
        self.sync_status = {
            "phase": "done",
            "ok": event.ok,
            "error": event.error or None,
            "op_id": event.op_id,
            "started_at": previous.get("started_at"),
            "finished_at": self.now,
            "last_success": self.sync_last_success,
            **{
                k: result[k]
                for k in (
                    "downloaded",
                    "removed",
                    "unchanged",
                    "skipped",
                    "bytes",
                    "duration",
                    "changed",
                    "files_total",
                )
                if k in result
            },
        }
        self._dirty = True
        if self.player_state() == "syncing":
            self._try_fire("sync_finished")
        if (
            event.ok
            and result.get("changed")
            and self.default_playlist
            and self.picture.playback == "stopped"
            and self.link_state("mpd") == "online"
        ):
            # new content and an idle player: have the default playlist ready (not playing)
            call_id = self._new_id()
            self._pending[call_id] = _Pending("startup", None)
            self.emit(fx.MpdCall(call_id=call_id, ops=[["clear"], ["load", self.default_playlist]]))
        self._arm_sync_timer()

    def reboot_allowed(self, request: Request) -> bool:
        if request.params.get("force"):
            return True
        uptime = self.now - self.boot_time
        return not (self.rebooted_on_request and uptime < self.settings.reboot_guard_seconds)

    def start_reboot(self, request: Request) -> None:
        self._respond_ok(request, {"rebooting": True})
        self._publish_state(force=True)
        op_id = self._new_id()
        self._operations[op_id] = "reboot"
        self.emit(
            fx.StartOperation(
                op_id=op_id,
                operation="reboot",
                args={"command": list(self.settings.reboot_command), "command_id": request.command_id},
            )
        )

    def report_dev_reboot(self, request: Request) -> None:
        self.emit(fx.Log("warning", "reboot requested; dev_mode is on, so the device is not rebooted"))
        self._respond_ok(request, {"rebooting": False, "dev_mode": True})

    # ------------------------------------------------------------------ MPD

    def _on_snapshot(self, event: MpdSnapshot) -> None:
        picture = self.picture
        if event.song is not None or event.status is None:
            self._awaiting_song = False
        if event.status is not None:
            picture.apply_status(event.status, event.at)
        if event.song is not None:
            picture.apply_song(event.song)
        if event.outputs is not None:
            picture.apply_outputs(event.outputs)
        if event.playlists is not None:
            picture.apply_playlists(event.playlists)
        self._dirty = True
        if picture.playback != self.player_state():
            self._try_fire("mpd_state")

    def _on_mpd_result(self, event: MpdResult) -> None:
        pending = self._pending.pop(event.call_id, None)
        if pending is None:
            return  # answered already (the link dropped before the result came)
        if pending.kind == "sync_refresh" and pending.done is not None:
            self._finish_sync(pending.done)
            return
        if pending.kind == "startup":
            if not event.ok:
                self.emit(fx.Log("warning", f"MPD refused the agent's own call: {event.error}"))
            return
        request = pending.request
        assert request is not None
        if not event.ok:
            if event.connection_lost and "did not answer" in event.error:
                self._respond_error(request, "timeout", event.error)
            elif event.connection_lost:
                self._respond_error(request, "mpd_unavailable", f"MPD connection lost: {event.error}")
            else:
                self._respond_error(request, "mpd_refused", f"MPD refused: {event.error}")
            return
        if pending.kind == "state":
            self._respond_ok(request, self.state_document())
            return
        status = event.results[-1] if event.results else None
        if isinstance(status, dict):
            # MPD's word right after the command: the next command must see it even if the idle
            # snapshot is still on its way (volumeStep after setVolume, toggle after pause)
            if str(status.get("songid")) != str(self.picture.song_id):
                # another song: publish nothing until the snapshot brings its title (it follows
                # within milliseconds); a state with the new status and the old track would lie
                self._awaiting_song = True
            self.picture.apply_status(status, event.at, with_song=False)
            self._dirty = True
            if self.picture.playback != self.player_state():
                self._try_fire("mpd_state")
        plan = pending.plan
        if plan is not None:
            for key, value in plan.remember.items():
                setattr(self.picture, key, value)
            if "loaded_playlist" in plan.remember and event.results:
                status = event.results[-1]
                if isinstance(status, dict) and str(status.get("playlist", "")).isdigit():
                    self.picture.loaded_version = int(status["playlist"])
            if plan.remember:
                self._dirty = True
        self._respond_ok(request, summarize_status(event.results[-1] if event.results else None))

    def _fail_pending(self, code: str, message: str) -> None:
        pending, self._pending = self._pending, {}
        for item in pending.values():
            if item.request is not None:
                self._respond_error(item.request, code, message)
            elif item.kind == "sync_refresh" and item.done is not None:
                self._finish_sync(item.done)  # the files are there; MPD will be re-read on reconnect

    # ------------------------------------------------------------------ operations

    def _on_operation_done(self, event: OperationDone) -> None:
        operation = self._operations.pop(event.op_id, None)
        if operation == "sync":
            self._sync_done(event)
            return
        if operation == "reboot" and self.player_state() == "rebooting":
            if event.ok:
                # the command was accepted; if the device is still here much later, say so
                self.emit(fx.StartTimer(name="reboot_overdue", delay=self.settings.reboot_overdue_seconds))
            else:
                self._reboot_did_not_happen(f"reboot failed: {event.error}")

    # ------------------------------------------------------------------ responses

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _respond_ok(self, request: Request, result: Any) -> None:
        self._finish(request, 200, self._body(request, "ok", result, None))

    def _respond_error(self, request: Request, code: str, message: str, field: str | None = None) -> None:
        error: dict[str, Any] = {"code": code, "message": message, "http_status": HTTP_STATUS[code]}
        if field is not None and field != "":
            error["field"] = field
        elif field == "" and code in ("invalid_params", "invalid_command"):
            error["field"] = ""
        self._finish(request, HTTP_STATUS[code], self._body(request, "error", None, error))

    def _body(
        self, request: Request, status: str, result: Any, error: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {
            "command_id": request.command_id,
            "command": request.command,
            "status": status,
            "result": result,
            "error": error,
            "device_id": self.settings.device_id,
            "timestamp": self.now,
        }

    def _finish(self, request: Request, status: int, body: dict[str, Any]) -> None:
        self._deliver(request, status, body)
        key = request.command_id if request.transport == "mqtt" else None
        if key is None:
            return
        for waiter in self._in_flight.pop(key, []):
            self._deliver(waiter, status, body)
        self._responses[key] = (status, body)
        while len(self._responses) > self.settings.dedupe_window:
            self._responses.popitem(last=False)

    def _deliver(self, request: Request, status: int, body: dict[str, Any]) -> None:
        if request.transport == "desired":
            self._ack_from_response(request, status, body)
            return
        if request.transport == "internal":
            if body["status"] != "ok":
                self.emit(
                    fx.Log("info", f"{request.command} ({request.request_id}): {body['error']['message']}")
                )
            return
        effect = fx.Respond(
            transport=request.transport, request_id=request.request_id, status=status, body=body
        )
        if request.transport == "mqtt" and self.link_state("mqtt") != "online":
            # kept until the broker is back: an accepted command's answer is never dropped
            self._outbox.append(effect)
            del self._outbox[: -self.settings.outbox_limit]
            return
        self.emit(effect)

    # ------------------------------------------------------------------ device twin

    def _on_desired(self, event: DesiredPatch) -> None:
        if not self.settings.enable_device_twin:
            return
        patch = event.patch if isinstance(event.patch, dict) else {}
        raw_version = patch.get("$version")
        version = raw_version if isinstance(raw_version, int) else None
        if version is not None and self.desired_version is not None:
            if version < self.desired_version or (version == self.desired_version and not event.full):
                self.emit(
                    fx.Log(
                        "info",
                        f"ignored stale desired properties (version {version} <= {self.desired_version})",
                    )
                )
                return
            if version == self.desired_version and event.full:
                return  # the whole document again, already applied: nothing to do
        leaves = list(twin.desired_leaves(patch))
        if event.full:
            # a property missing from the full document was removed while we were away
            present = {path for path, _ in leaves}
            leaves += [(path, None) for path in list(self.desired) if path not in present]
        if version is not None:
            self.desired_version = version
        for path, value in leaves:
            self._apply_desired(path, value, version, full=event.full)
        self._dirty = True

    def _apply_desired(
        self, path: tuple[str, ...], value: Any, version: int | None, *, full: bool = False
    ) -> None:
        label = ".".join(path)
        if path not in twin.DESIRED_PATHS:
            self.acks[path[:2]] = twin.ack(value, twin.AC_REJECTED, version, f"unknown property {label}")
            return
        if value is None:
            self.desired.pop(path, None)
            self.acks.pop(path, None)
            if path == ("content", "default_playlist"):
                self.default_playlist = None
            elif path == ("content", "sync_enabled"):
                self.sync_enabled_override = None
            elif path == ("content", "sync"):
                self.desired_sync = None
            return
        if path == ("content", "sync"):
            self._apply_desired_sync(value, version, replace=full)
            return
        issues = schemas.issues("desired", value, "/properties/" + "/properties/".join(path))
        if issues:
            self.acks[path] = twin.ack(value, twin.AC_REJECTED, version, f"{label}: {issues[0].message}")
            return
        self.desired[path] = value
        if path == ("content", "default_playlist"):
            self.default_playlist = value
            self.acks[path] = twin.ack(value, twin.AC_APPLIED, version, "stored")
        elif path == ("content", "sync_enabled"):
            self.sync_enabled_override = value
            self._arm_sync_timer(0.0 if value else None)
            note = "stored" if self.sync_configured() else "stored; content sync is not configured"
            self.acks[path] = twin.ack(value, twin.AC_APPLIED, version, note)
        elif path == ("audio", "device") and value == "default":
            self.acks[path] = twin.ack(value, twin.AC_APPLIED, version, "default: outputs left as they are")
        else:
            self._desired_command(path, value, version)

    def _apply_desired_sync(self, value: Any, version: int | None, *, replace: bool) -> None:
        path = ("content", "sync")
        shown = twin.redact_sync(value)
        issues = schemas.issues("sync", value, "/$defs/desired")
        if issues:
            self.acks[path] = twin.ack(shown, twin.AC_REJECTED, version, f"content.sync{issues[0]}")
            return
        merged = {} if replace or self.desired_sync is None else dict(self.desired_sync)
        for key, item in value.items():
            if item is None:
                merged.pop(key, None)
            else:
                merged[key] = item
        self.desired_sync = merged or None
        self.desired[path] = merged
        note = (
            "stored; used by the next sync"
            if self.sync_configured()
            else "stored; no container configured yet"
        )
        self.acks[path] = twin.ack(twin.redact_sync(merged), twin.AC_APPLIED, version, note)
        # new settings (another container, prefix, interval): sync with them soon, then on the interval
        self._sync_timer = False
        self.emit(fx.CancelTimer(name="sync"))
        self._arm_sync_timer(0.0)

    def _desired_command(self, path: tuple[str, ...], value: Any, version: int | None) -> None:
        """Apply a desired property through the command of the same meaning: same checks, same path."""
        command = twin.DESIRED_PATHS[path]
        assert command is not None
        params = {"volume": value} if command == "setVolume" else {"output": value}
        self.acks[path] = twin.ack(value, twin.AC_PENDING, version, "applying")
        request = Request(
            transport="desired",
            request_id=".".join(path),
            command_id=None,
            command=command,
            params=params,
            at=self.now,
        )
        request.desired_version = version
        self._run_request(request, params_pointer="")

    def _ack_from_response(self, request: Request, status: int, body: dict[str, Any]) -> None:
        path = tuple(request.request_id.split("."))
        value = self.desired.get(path)
        version = request.desired_version
        if body["status"] == "ok":
            self.acks[path] = twin.ack(value, twin.AC_APPLIED, version, "applied")
        else:
            error = body["error"] or {}
            code = (
                twin.AC_REJECTED
                if 400 <= status < 500 and error.get("code") != "not_possible"
                else twin.AC_FAILED
            )
            if error.get("code") == "mpd_unavailable":
                code = twin.AC_PENDING  # applied as soon as MPD is back (see _retry_desired)
            self.acks[path] = twin.ack(value, code, version, str(error.get("message", "failed")))
        self._dirty = True

    def _retry_desired(self) -> None:
        for path, ack in list(self.acks.items()):
            if ack["ac"] == twin.AC_PENDING and path in self.desired and twin.DESIRED_PATHS.get(path):
                self._desired_command(path, self.desired[path], ack["av"])

    def reported_document(self) -> dict[str, Any]:
        picture = self.picture
        state = self.state_document()
        acks: dict[str, Any] = {}
        for path, ack in sorted(self.acks.items()):
            twin.set_path(acks, path, ack)
        return {
            "audio": {
                "volume": picture.volume,
                "device": state["audio"]["device"],
                "backend": self.settings.audio_backend,
                "muted": picture.muted,
            },
            "playback": {
                "status": picture.playback,
                "current_track": picture.current_track_label(),
                "position": None if picture.elapsed is None else int(picture.elapsed),
                "duration": None if picture.duration is None else int(picture.duration),
            },
            "system": {
                "version": self.settings.version,
                "uptime": state["system"]["uptime"],
                "free_space": state["system"]["free_space"],
                "rebooted_on_request": self.rebooted_on_request,
                "last_error": self.last_error,
            },
            "content": {
                "current_playlist": picture.loaded_playlist,
                "default_playlist": self.default_playlist,
                "sync_enabled": self.sync_enabled(),
                "sync": self.sync_status,
            },
            "player": self.player_state(),
            "links": {"mqtt": self.link_state("mqtt"), "mpd": self.link_state("mpd")},
            "desired_version": self.desired_version,
            "acks": acks,
        }

    def _report(self, *, full: bool, throttle: bool = True) -> None:
        if not self.settings.enable_device_twin:
            return
        doc = self.reported_document()
        if full or self._reported is None:
            patch = doc
        else:
            if twin.without_volatile(doc) == twin.without_volatile(self._reported):
                return
            interval = self.settings.min_report_interval
            recent = self._last_report_at is not None and self.now - self._last_report_at < interval
            if throttle and recent:
                if not self._report_timer:
                    self._report_timer = True
                    self.emit(
                        fx.StartTimer(
                            name="report", delay=interval - (self.now - (self._last_report_at or 0))
                        )
                    )
                return
            patch = twin.merge_diff(self._reported, doc)
        self._reported = doc
        self._last_report_at = self.now
        self.emit(fx.ReportProperties(patch=patch))

    def telemetry(self) -> dict[str, Any]:
        state = self.state_document()
        return {
            "device_id": self.settings.device_id,
            "timestamp": self.now,
            "playback": self.picture.playback,
            "track": self.picture.current_track_label(),
            "volume": self.picture.volume,
            "free_space": state["system"]["free_space"],
            "uptime": state["system"]["uptime"],
            "links": state["links"],
        }

    # ------------------------------------------------------------------ state

    def state_document(self) -> dict[str, Any]:
        picture = self.picture
        enabled = [o.name for o in picture.outputs if o.enabled]
        return {
            "device_id": self.settings.device_id,
            "seq": self.seq,
            "timestamp": self.now,
            "player": self.player_state(),
            "playback": picture.playback_json(),
            "volume": picture.volume,
            "muted": picture.muted,
            "playlist": picture.loaded_playlist,
            "options": picture.options_json(),
            "outputs": [o.to_json() for o in picture.outputs],
            "audio": {
                "backend": self.settings.audio_backend,
                "device": enabled[0]
                if len(enabled) == 1
                else (", ".join(enabled) or self.settings.audio_device),
            },
            "system": {
                "version": self.settings.version,
                "uptime": max(0, int(self.now - self.boot_time)) if self.boot_time else None,
                "agent_uptime": max(0, int(self.now - self.started_at)) if self.started_at else None,
                "free_space": None if self.free_space is None else self.free_space // 2**20,
                "rebooted_on_request": self.rebooted_on_request,
            },
            "links": {link: self.link_state(link) for link in LINKS},
            "sync": self.sync_status,
            "last_error": self.last_error,
        }

    def _publish_state(self, *, force: bool) -> None:
        doc = self.state_document()
        comparable = _comparable(doc)
        if not force and comparable == self._last_published:
            return
        self.seq += 1
        doc["seq"] = self.seq
        self._last_published = comparable
        self.emit(fx.PublishState(state=doc))


def _mib(value: int | None) -> int | None:
    return None if value is None else value // 2**20


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    system = {k: v for k, v in doc["system"].items() if k not in ("uptime", "agent_uptime")}
    # a new sample time alone is no news: while playing, the position changes with it anyway
    playback = {k: v for k, v in doc["playback"].items() if k != "sampled_at"}
    return {**doc, "seq": None, "timestamp": None, "system": system, "playback": playback}


class _FakeEvent:
    """Lets the core ask a guard its opinion outside a transition (to name the failed guard)."""

    def __init__(self, request: Request) -> None:
        self.kwargs = {"request": request}
