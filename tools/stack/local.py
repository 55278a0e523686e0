"""The local stack: the agent against private mosquitto, MPD, IoT Hub stand-in and Azurite.

    tools/run-local [--state-dir DIR] [--device-id ID] [--no-iothub] [--no-azurite]

Everything runs as the current user, on free ports, with its files under the state directory
(default `.stack` in the repository, gitignored): mosquitto, MPD with a generated sample library
(null outputs, no sound card needed), the IoT Hub stand-in (tools/iothub_standin), and Azurite with
a container holding sample content to sync. The agent's config.json is written there
(dev_mode on, so `reboot` only reports), the agent runs in the foreground with its log on this
terminal, and copy-paste instructions are printed once it is online.

Ctrl-C or SIGTERM stops the agent first (so it publishes `offline` and leaves cleanly), then the
services. The stack runs in its own session, so the terminal's Ctrl-C reaches only this process and
not the services behind the agent's back; every service also dies with the stack if it is killed.
`stack.json` in the state directory describes the running stack (ports, pids; no secrets).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# Run as a script, Python puts this file's directory first on sys.path, where tools/stack/mpd.py
# would shadow the python-mpd2 package: put the repository root there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_INNER = "AMORA_LOCAL_STACK_PARENT"  # set in the stack process: the pid of the launcher
_PR_SET_PDEATHSIG = 1
CONTAINER = "music"
CLOUD_ALBUM = "From the cloud"


# --------------------------------------------------------------------------------------------------
# Launcher: keeps the terminal's signals away from the services


def _launch(argv: list[str]) -> int:
    """Run the stack in a new session and forward SIGINT/SIGTERM/SIGHUP to it as SIGTERM.

    The terminal sends Ctrl-C to its whole foreground process group; mosquitto and MPD would then
    stop at the same moment as the agent, before it could say goodbye."""
    env = dict(os.environ, **{_INNER: str(os.getpid())})
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *argv], env=env, start_new_session=True
    )

    def forward(signum: int, frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    return child.wait()


def _die_with_launcher() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if str(os.getppid()) != os.environ.get(_INNER):  # the launcher died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


# --------------------------------------------------------------------------------------------------
# The stack


def _private_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _show(path: Path | str) -> str:
    """A path as short as it can be for the user to paste."""
    p = Path(path)
    with contextlib.suppress(ValueError):
        rel = p.relative_to(Path.cwd())
        return str(rel) if str(rel) != "." else "."
    return str(p)


class Stack:
    def __init__(self, args: argparse.Namespace, *, say: Callable[[str], None]) -> None:
        self.args = args
        self.say = say
        self.state: Path = args.state_dir.resolve()
        self.device_id: str = args.device_id
        self.stop_requested = threading.Event()
        launcher = int(os.environ.get(_INNER) or 0) or None
        self.info: dict[str, Any] = {
            "device_id": self.device_id,
            "pids": {"launcher": launcher, "stack": os.getpid()},
        }

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self) -> int:
        self.state.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state, 0o700)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: self.stop_requested.set())
        with self._exclusive(), contextlib.ExitStack() as stack:
            try:
                agent = self._start(stack)
            except _Interrupted:
                self.say("stopping (interrupted while starting)")
                return 130
            code = self._supervise(agent)
            self.say("stopping: agent first, then the services")
            self._stop_agent(agent)
            return code
        return 0  # pragma: no cover - ExitStack does not swallow

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        fd = os.open(self.state / "stack.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SystemExit(
                    f"another local stack is running with state dir {_show(self.state)}"
                ) from None
            try:
                yield
            finally:
                (self.state / "stack.json").unlink(missing_ok=True)
        finally:
            os.close(fd)

    def _check(self) -> None:
        if self.stop_requested.is_set():
            raise _Interrupted

    def _start(self, stack: contextlib.ExitStack) -> subprocess.Popen[bytes]:
        from tools.stack.mosquitto import Mosquitto
        from tools.stack.mpd import MpdServer, make_sample_library

        broker = Mosquitto(self.state / "mosquitto")
        broker.start()
        stack.callback(broker.stop)
        self.info["mqtt"] = {"host": broker.host, "port": broker.port}
        self.info["pids"]["mosquitto"] = broker.proc.pid if broker.proc else None
        self._check()

        if not (self.state / "library" / "music").exists():
            self.say("making the sample library (first run: a few seconds of sox)")
        make_sample_library(self.state / "library")
        self._check()
        mpd = MpdServer(self.state / "mpd", library=self.state / "library")
        stack.callback(mpd.close)
        mpd.start()
        self._prepare_queue(mpd)
        self.info["mpd"] = {"socket": mpd.host, "port": mpd.port}
        self.info["pids"]["mpd"] = mpd.pid
        self._check()

        iot: dict[str, Any] | None = None
        if not self.args.no_iothub:
            iot = self._start_iothub(stack)
            self._check()
        sync: dict[str, Any] | None = None
        if not self.args.no_azurite:
            sync = self._start_azurite(stack)
            self._check()

        config = self._write_config(broker, mpd, iot, sync)
        self.info["config"] = str(config)
        agent = self._start_agent(config)
        stack.callback(self._stop_agent, agent)  # registered last: stopped first
        self.info["pids"]["agent"] = agent.pid
        self._wait_online(broker.host, broker.port, agent, iothub=iot is not None)
        (self.state / "stack.json").write_text(json.dumps({**self.info, "ready": True}, indent=2) + "\n")
        self._print_instructions(config, broker.port, mpd, iot is not None, sync)
        return agent

    def _supervise(self, agent: subprocess.Popen[bytes]) -> int:
        while not self.stop_requested.wait(0.2):
            code = agent.poll()
            if code is not None:
                self.say(f"the agent exited with status {code}")
                return code or 1
        return 0

    def _stop_agent(self, agent: subprocess.Popen[bytes]) -> None:
        from tools.stack.proc import stop

        stop(agent, timeout=10.0)

    # -- services --------------------------------------------------------------------------------

    def _prepare_queue(self, mpd: Any) -> None:
        """Put a playlist in the queue on the first run, so `play` plays something at once."""
        with mpd.client() as c:
            if int(c.status().get("playlistlength", "0")) == 0:
                c.load("relaxing")

    def _start_iothub(self, stack: contextlib.ExitStack) -> dict[str, Any]:
        from tools.iothub_standin import control
        from tools.iothub_standin.localhub import LocalHub

        hub_dir = self.state / "iothub"
        hub_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(hub_dir, 0o700)
        hub = LocalHub(
            hub_dir, device_id=self.device_id, device_key=self._device_key(hub_dir), reuse_certs=True
        )
        stack.callback(hub.stop)
        hub.start()
        server = control.ControlServer(hub, control.socket_path(hub_dir))
        server.start()
        stack.callback(server.stop)
        host, port = hub.proxy_address
        secret = hub_dir / "connection_string"
        _private_file(secret, hub.connection_string() + "\n")
        self.info["iothub"] = {"state_dir": str(hub_dir), "proxy": {"host": host, "port": port}}
        self.info["pids"]["iothub_broker"] = hub.broker.proc.pid if hub.broker and hub.broker.proc else None
        return {
            "state_dir": hub_dir,
            "connection_string_file": secret,
            "ca_file": hub.ca_path,
            "proxy": {"type": "HTTP", "host": host, "port": port},
        }

    @staticmethod
    def _device_key(hub_dir: Path) -> str:
        """Kept across runs, so the connection string (and the twin's device) stay the same."""
        import base64

        path = hub_dir / "device.key"
        if path.exists():
            return path.read_text().strip()
        key = base64.b64encode(os.urandom(32)).decode()
        _private_file(path, key + "\n")
        return key

    def _start_azurite(self, stack: contextlib.ExitStack) -> dict[str, Any] | None:
        from tools.stack import azurite

        if not (ROOT / "node_modules" / ".bin" / "azurite-blob").exists():
            self.say("Azurite is not installed (npm ci): content sync is left out")
            return None
        az = azurite.start(log=self.state / "azurite.log")
        stack.callback(az.stop)
        az.create_container(CONTAINER)
        count = azurite.seed(az.container_sas_url(CONTAINER, permissions="racwdl"), self._cloud_content())
        secret = self.state / "azurite" / "container_url"
        # a read/list SAS valid for a day: all a device needs
        _private_file(secret, az.container_sas_url(CONTAINER, permissions="rl", hours=24) + "\n")
        self.info["azurite"] = {"blob_endpoint": az.blob_endpoint, "container": CONTAINER, "blobs": count}
        self.info["pids"]["azurite"] = az.proc.pid
        return {"container_url_file": secret, "blobs": count, "endpoint": az.blob_endpoint}

    def _cloud_content(self) -> list[tuple[str, bytes]]:
        """The sample tracks again, as a new album, and a playlist of it: what a sync would add."""
        from tools.stack.mpd import SAMPLE_TRACKS

        music = self.state / "library" / "music"
        blobs = [(f"{CLOUD_ALBUM}/{t.path}", (music / t.path).read_bytes()) for t in SAMPLE_TRACKS]
        playlist = "".join(f"{name}\n" for name, _ in blobs).encode()
        return [*blobs, ("playlists/cloud.m3u", playlist)]

    # -- the agent -------------------------------------------------------------------------------

    def _write_config(
        self, broker: Any, mpd: Any, iot: dict[str, Any] | None, sync: dict[str, Any] | None
    ) -> Path:
        fast = {"initial_delay": 0.5, "max_delay": 5}
        content: dict[str, Any] = {
            "storage_path": str(mpd.music_dir),
            "playlists_path": str(mpd.playlist_dir),
        }
        if sync is not None:
            content["sync"] = {"container_url_file": str(sync["container_url_file"]), "interval_seconds": 0}
        config: dict[str, Any] = {
            "device": {"id": self.device_id, "name": "Local development player"},
            "mpd": {"host": mpd.host, "timeout": 3, "backoff": fast},
            "content": content,
            "audio": {"backend": "pipewire", "device": "default"},
            "broker": {
                "device_id": self.device_id,
                "broker_url": f"mqtt://{broker.host}:{broker.port}",
                "backoff": fast,
            },
            "system": {
                "state_dir": str(self.state / "agent"),
                "reboot_command": ["echo", "reboot requested"],
                "reboot_guard_seconds": 0,
            },
            "logging": {"level": "info", "format": "text"},
            "dev_mode": True,
        }
        if iot is not None:
            config["iot"] = {
                "connection_string_file": str(iot["connection_string_file"]),
                "ca_file": str(iot["ca_file"]),
                "proxy": iot["proxy"],
                "telemetry_interval": 10,
                "backoff": {"initial_delay": 1, "max_delay": 10},
            }
        path = self.state / "config.json"
        _private_file(path, json.dumps(config, indent=2) + "\n")
        return path

    def _start_agent(self, config: Path) -> subprocess.Popen[bytes]:
        from tools.stack.proc import spawn

        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)  # the agent is not a systemd service here
        env.pop(_INNER, None)
        argv = [sys.executable, "-m", "amora.agent_main", "--config", str(config)]
        if self.args.agent_log is not None:
            return spawn(argv, log=self.args.agent_log, env=env, cwd=ROOT)
        return spawn(argv, stdout=sys.stdout, env=env, cwd=ROOT)

    def _wait_online(self, host: str, port: int, agent: subprocess.Popen[bytes], *, iothub: bool) -> None:
        """Until the agent's retained state says its links are up (IoT Hub: best effort)."""
        import paho.mqtt.client as paho

        latest: dict[str, Any] = {}
        seen = threading.Event()

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            with contextlib.suppress(ValueError):
                latest.update(json.loads(msg.payload))
                seen.set()

        client = paho.Client(client_id=f"local-stack-{os.getpid()}", clean_session=True)
        client.on_message = on_message
        client.connect(host, port, keepalive=30)
        client.subscribe(f"amora/devices/{self.device_id}/state", qos=1)
        client.loop_start()
        wanted = ("mqtt", "mpd", "iothub") if iothub else ("mqtt", "mpd")
        deadline = time.monotonic() + 30.0
        try:
            while time.monotonic() < deadline:
                self._check()
                if agent.poll() is not None:
                    raise SystemExit(f"the agent exited with status {agent.returncode} while starting")
                links = latest.get("links", {})
                if all(links.get(link) == "online" for link in wanted):
                    return
                seen.wait(0.1)
                seen.clear()
            self.say(f"the agent is not fully online after 30 s (links: {latest.get('links')}); carrying on")
        finally:
            client.loop_stop()
            client.disconnect()

    def _print_instructions(
        self, config: Path, port: int, mpd: Any, iothub: bool, sync: dict[str, Any] | None
    ) -> None:
        py = _show(sys.executable)
        bin_dir = Path(sys.executable).parent
        amora = _show(bin_dir / "amora") if (bin_dir / "amora").exists() else f"{py} -m amora.cli"
        cfg = _show(config)
        topic = f"amora/devices/{self.device_id}"
        lines = [
            "",
            "=" * 100,
            f"AmoraOS local stack is up. State: {_show(self.state)}. Ctrl-C stops everything.",
            f"  MQTT broker  mqtt://127.0.0.1:{port}",
            f"  MPD          {_show(mpd.host)} (TCP 127.0.0.1:{mpd.port})",
            f"               e.g. MPD_HOST={_show(mpd.host)} mpc status",
            f"  agent        device {self.device_id}, config {cfg}",
            "",
            "Send a command over MQTT (in another terminal):",
            f"  mosquitto_sub -h 127.0.0.1 -p {port} -v -t '{topic}/#'",
            f"  mosquitto_pub -h 127.0.0.1 -p {port} -q 1 -t {topic}/commands \\",
            '    -m \'{"command":"play","command_id":"test-1","params":{},"timestamp":1620000000}\'',
            "  (a command_id is answered once and never run twice: use a new one for every command)",
            "",
            "With the amora CLI:",
            f"  {amora} send setVolume --param volume=50 --config {cfg}",
            f"  {amora} send loadPlaylist --param playlist=focus --config {cfg}",
            f"  {amora} watch --config {cfg}",
        ]
        if iothub:
            hub = _show(self.state / "iothub")
            cli = f"{py} -m tools.iothub_standin"
            prefix = f"  cd {_show(ROOT)} && " if Path.cwd() != ROOT else "  "
            lines += [
                "",
                "Through the IoT Hub stand-in (like `az iot hub ...`; run from the repository root):",
                f"{prefix}{cli} invoke-device-method --state-dir {hub} --method-name play",
                f"{prefix}{cli} invoke-device-method --state-dir {hub} --method-name setVolume "
                "--method-payload '{\"volume\": 30}'",
                f'{prefix}{cli} update-desired --state-dir {hub} --set \'{{"audio": {{"volume": 40}}}}\'',
                f"{prefix}{cli} show-twin --state-dir {hub}",
                f"{prefix}{cli} monitor-events --state-dir {hub}     (telemetry every 10 s)",
            ]
        if sync is not None:
            lines += [
                "",
                f"Content sync: Azurite ({sync['endpoint']}) holds container '{CONTAINER}' with "
                f"{sync['blobs']} blobs (album '{CLOUD_ALBUM}', playlist 'cloud');",
                f"  its read/list SAS URL is in {_show(sync['container_url_file'])} (content.sync in the "
                "config).",
                f"  {amora} sync --config {cfg}",
                f"  then: {amora} send loadPlaylist --param playlist=cloud --config {cfg}",
            ]
        lines += ["=" * 100, ""]
        self.say("\n".join(lines))


class _Interrupted(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/run-local", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--state-dir", type=Path, default=ROOT / ".stack", help="default: .stack in the repository"
    )
    parser.add_argument("--device-id", default="amora-player-001")
    parser.add_argument("--no-iothub", action="store_true", help="leave out the IoT Hub stand-in")
    parser.add_argument("--no-azurite", action="store_true", help="leave out Azurite (content sync)")
    parser.add_argument(
        "--agent-log", type=Path, help="write the agent's log to this file instead of the terminal"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if os.environ.get(_INNER) is None:
        # resolve relative paths against the caller's directory before anything changes
        fixed = [*argv, "--state-dir", str(args.state_dir.resolve())]
        if args.agent_log is not None:
            fixed += ["--agent-log", str(args.agent_log.resolve())]
        return _launch(fixed)
    _die_with_launcher()

    def say(text: str) -> None:
        print(text if "\n" in text else f"[local stack] {text}", flush=True)

    return Stack(args, say=say).run()


if __name__ == "__main__":
    sys.exit(main())
