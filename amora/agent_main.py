"""`amora-agent`: load the configuration, wire adapters to the core, run until told to stop."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from amora import __version__
from amora.config import Config, ConfigError, load_config, redacted, secret_values
from amora.core.agent import AgentCore
from amora.core.effects import Effect
from amora.core.events import Event, event_to_json
from amora.core.settings import BackoffPolicy, CoreSettings
from amora.runtime import Runtime, RuntimeOptions

log = logging.getLogger("amora.agent")

EXIT_CONFIG = 2


def core_settings(config: Config, sync: Any = None) -> CoreSettings:
    """`sync`: the content sync settings (amora.sync.SyncSettings) if content.sync is present."""

    def policy(backoff: Any) -> BackoffPolicy:
        return BackoffPolicy(
            initial_delay=backoff.initial_delay,
            max_delay=backoff.max_delay,
            multiplier=backoff.multiplier,
            jitter=backoff.jitter,
        )

    backoff = {"mqtt": policy(config.broker.backoff), "mpd": policy(config.mpd.backoff)}
    if config.iot is not None:
        backoff["iothub"] = policy(config.iot.backoff)
    return CoreSettings(
        device_id=config.broker.device_id,
        version=__version__,
        dev_mode=config.dev_mode,
        max_payload_bytes=config.broker.max_payload_bytes,
        max_command_age=config.broker.max_command_age,
        dedupe_window=config.broker.dedupe_window,
        backoff=backoff,
        iothub_configured=config.iot is not None,
        enable_device_twin=config.iot.enable_device_twin if config.iot is not None else False,
        enable_direct_methods=config.iot.enable_direct_methods if config.iot is not None else False,
        telemetry_interval=config.iot.telemetry_interval if config.iot is not None else 0.0,
        sync_configured=sync is not None and sync.source is not None,
        sync_enabled=bool(sync is not None and sync.enabled),
        sync_interval=float(sync.interval_seconds) if sync is not None else 0.0,
        reboot_command=tuple(config.system.reboot_command),
        reboot_guard_seconds=config.system.reboot_guard_seconds,
        startup_volume=config.audio.volume,
        audio_backend=config.audio.backend,
        audio_device=config.audio.device,
    )


class TraceRecorder:
    """Writes every input as one JSON line (schemas/trace.schema.json), flushed per line so a crash
    loses nothing. Secret values are replaced before writing."""

    def __init__(self, path: Path, secrets: Sequence[str], settings: CoreSettings | None = None) -> None:
        from amora.logs import Redactor

        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self._redact = Redactor(secrets)
        if settings is not None:
            # the core's settings make the replay bit for bit (amora/simulate.py); one header per run
            from amora.simulate import trace_header

            self._write(trace_header(settings, agent_version=__version__))

    def __call__(self, event: Event) -> None:
        self._write(event_to_json(event))

    def drained(self) -> None:
        from amora.simulate import DRAIN_LINE

        self._write(DRAIN_LINE)

    def _write(self, obj: dict[str, Any]) -> None:
        line = self._redact(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class RecordingCore(AgentCore):
    """Marks in the trace where the runtime drained: when the live queue held a burst, the core
    coalesced it, and the replay must coalesce the same inputs to publish the same messages."""

    def __init__(self, settings: CoreSettings, recorder: TraceRecorder) -> None:
        super().__init__(settings)
        self._recorder = recorder

    def drain(self) -> list[Effect]:
        self._recorder.drained()
        return super().drain()


async def run_agent(config: Config, *, record: Path | None = None) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from amora import reboot, systemd
    from amora.adapters.mpd import MpdLink, MpdSettings
    from amora.adapters.mqtt import MqttLink
    from amora.mqtt.settings import MqttSettings

    # The IoT Hub SDK runs its blocking calls on the loop's default executor (6 threads on 2 cores):
    # with the MQTT connects sharing it, a few slow calls could stall every SDK call behind them.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=16, thread_name_prefix="amora-io")
    )
    state_dir = config.system.state_dir
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("state directory %s is not usable: %s", state_dir, exc)
    came_back = reboot.take_marker(state_dir)
    if came_back.note:
        log.info("reboot marker: %s", came_back.note)

    from amora import operations

    sync = operations.sync_settings(config) if config.content.sync is not None else None
    settings = core_settings(config, sync)
    record_path = record or config.logging.record
    recorder = TraceRecorder(record_path, secret_values(config), settings) if record_path else None
    core = AgentCore(settings) if recorder is None else RecordingCore(settings, recorder)
    runtime = Runtime(
        core,
        options=RuntimeOptions(
            free_space_path=config.content.free_space_path,
            free_space_interval=config.system.free_space_interval,
            boot_time=reboot.boot_time(),
            rebooted_on_request=came_back.came_back_from_requested_reboot,
            version=__version__,
            sync_last_success=operations.sync_last_success(config) if sync is not None else None,
        ),
    )
    broker = config.broker
    # a stable client id and a persistent session: commands sent while the agent is briefly away
    # are queued by the broker (QoS 1) and delivered on reconnect
    mqtt_settings = MqttSettings.from_broker_config(broker, clean_session=False)
    runtime.attach(
        "mqtt",
        MqttLink(
            mqtt_settings, device_id=broker.device_id, topic_prefix=broker.topic_prefix, emit=runtime.emit
        ),
    )
    mpd_settings = MpdSettings(
        host=config.mpd.host, port=config.mpd.port, password=config.mpd.password, timeout=config.mpd.timeout
    )
    runtime.attach("mpd", MpdLink(mpd_settings, emit=runtime.emit))
    if config.iot is not None:
        from amora.adapters.iothub import IotHubLink, IotHubSettings

        runtime.attach("iothub", IotHubLink(IotHubSettings.from_config(config.iot), emit=runtime.emit))

    operations.install(runtime, config)

    if recorder is not None:
        runtime.recorder = recorder

    # unset: commands the agent runs (reboot) must not talk to systemd in its name
    notifier = systemd.Notifier.from_env(unset_environment=True)
    # the consumer beats after every event it processed, including the probes the heartbeat sends
    liveness = systemd.liveness_for(notifier)
    ready_sent = False

    def alive() -> None:
        nonlocal ready_sent
        liveness.beat()
        if not ready_sent:  # READY=1 once the consumer has processed its first event
            ready_sent = True
            notifier.ready(f"amora-agent {__version__} running")

    runtime.on_alive = alive

    last_status = ""

    def on_effects(_: Any) -> None:
        # Outside systemd there is nobody to tell; under it, one datagram per change of the line,
        # not one per event (this runs on the path of every state publication).
        nonlocal last_status
        if not notifier.enabled:
            return
        links = {region: state for region, state in core.configuration().items() if region != "player"}
        text = systemd.format_link_status(links, state=core.player_state())
        if text != last_status:
            last_status = text
            notifier.status(text)

    runtime.on_effects = on_effects

    hb = asyncio.ensure_future(systemd.watchdog_heartbeat(notifier, liveness.is_alive, probe=runtime.poke))
    try:
        await runtime.run()
    finally:
        notifier.stopping("stopping")
        hb.cancel()
        if recorder is not None:
            recorder.close()
        notifier.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="amora-agent", description="AmoraOS device agent")
    parser.add_argument("--config", required=True, type=Path, help="path to config.json")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate, print the effective config (secrets redacted) and exit: 0 valid, 2 invalid",
    )
    parser.add_argument("--record", type=Path, help="record every input to this JSON Lines trace")
    parser.add_argument("--version", action="version", version=f"amora-agent {__version__}")
    args = parser.parse_args(argv)

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"amora-agent: invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG

    if config.content.sync is not None:
        from amora.operations import sync_settings
        from amora.sync.config import SyncConfigError

        try:
            sync_settings(config)
        except SyncConfigError as exc:
            print(f"amora-agent: invalid configuration:\n{exc}", file=sys.stderr)
            return EXIT_CONFIG

    from amora.security import permission_refusal, startup_warnings

    warnings = startup_warnings(config, args.config)
    refusal = permission_refusal(config, args.config)
    if refusal:
        print(f"amora-agent: {refusal}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(json.dumps(redacted(config), indent=2, sort_keys=True))
        return 0

    import faulthandler

    from amora.logs import setup_logging

    faulthandler.enable()  # a watchdog SIGABRT then leaves every thread's stack in the journal

    redaction = setup_logging(config.logging.level.upper(), config.logging.format, secret_values(config))  # type: ignore[arg-type]
    if config.content.sync is not None:
        # sync credentials may come from the environment or a file: the log filter must know them too
        from amora.operations import sync_settings

        source = sync_settings(config).source
        if source is not None:
            redaction.add_secrets(source.container_url, source.connection_string)
    # transitions narrates every callback at INFO; the agent logs what matters itself
    logging.getLogger("transitions").setLevel(logging.WARNING)
    # the IoT Hub SDK narrates every publish at INFO
    if config.logging.level.lower() != "debug":
        logging.getLogger("azure").setLevel(logging.WARNING)
    for warning in warnings:
        log.warning("%s", warning)
    log.info("amora-agent %s starting for device %s", __version__, config.broker.device_id)
    return asyncio.run(run_agent(config, record=args.record))


if __name__ == "__main__":
    sys.exit(main())
