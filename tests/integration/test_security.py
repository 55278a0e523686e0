"""Security defaults, end to end: the shipped broker ACL, mutual TLS, secrets kept out of every
output, start-up warnings and the strict permission refusal. Real mosquitto, MPD and the IoT Hub
stand-in throughout."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import paho.mqtt.client as paho
import pytest

from tests.fixtures.agent import DEVICE, AgentProcess, Controller, make_config, wait_on
from tests.fixtures.mosquitto import MosquittoFactory
from tools.iothub_standin import LocalHub
from tools.stack import proc
from tools.stack.mosquitto import MOSQUITTO, MOSQUITTO_PASSWD, Mosquitto, make_test_ca
from tools.stack.mpd import MpdServer

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "docs" / "mosquitto"
CONTROLLER = "amora-controller"  # the controller user of the shipped ACL
OTHER_DEVICE = "amora-player-002"
PASSWORDS = {DEVICE: "device-pw-1", CONTROLLER: "controller-pw-1", OTHER_DEVICE: "device-pw-2"}


# --------------------------------------------------------------------------------------------------
# Helpers


class Client:
    """A paho client that records every message it receives; optionally with credentials and TLS."""

    def __init__(
        self,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.lock = threading.Condition()
        self.messages: list[tuple[str, bytes, bool]] = []
        self.granted: list[int] = []
        self.client = paho.Client(client_id=f"test-{uuid.uuid4().hex[:10]}", clean_session=True)
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set_context(tls)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_socket_open = lambda c, u, sock: sock.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )
        connected: list[int] = []
        self.client.on_connect = lambda c, u, f, rc: connected.append(rc)
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not proc.wait_for(lambda: connected, timeout=10, what="CONNACK") or connected[0] != 0:
            self.close()
            raise ConnectionRefusedError(
                f"broker refused the connection: {paho.connack_string(connected[0])}"
            )

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self.lock.notify_all()

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, granted: tuple[int, ...]) -> None:
        with self.lock:
            self.granted.extend(granted)
            self.lock.notify_all()

    def subscribe(self, *topics: str) -> list[int]:
        """Subscribe and return the granted QoS per topic (128 = refused)."""
        with self.lock:
            before = len(self.granted)
        self.client.subscribe([(t, 1) for t in topics])
        self.wait(lambda: len(self.granted) >= before + len(topics), what="SUBACK")
        with self.lock:
            return self.granted[before : before + len(topics)]

    def publish(self, topic: str, payload: bytes | str, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def wait(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        return wait_on(self.lock, predicate, timeout, what)

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def wait_message(self, topic: str, predicate: Callable[[bytes], bool] = bool, what: str = "") -> bytes:
        found: bytes = self.wait(
            lambda: next((p for p in reversed(self.on(topic)) if predicate(p)), None),
            what=what or f"a message on {topic}",
        )
        return found

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def command(name: str, params: dict[str, Any] | None = None) -> tuple[str, str]:
    command_id = uuid.uuid4().hex
    body = {"command": name, "command_id": command_id, "params": params or {}, "timestamp": time.time()}
    return command_id, json.dumps(body)


def send(client: Client, device: str, name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Send a command as `client` and wait for its response (the client reads the responses)."""
    command_id, body = command(name, params)
    client.publish(f"amora/devices/{device}/commands", body)
    raw = client.wait_message(
        f"amora/devices/{device}/responses",
        lambda p: json.loads(p).get("command_id") == command_id,
        what=f"response to {name}",
    )
    response: dict[str, Any] = json.loads(raw)
    return response


def flush(client: Client, topic: str) -> None:
    """Publish a marker that `client` may read, and wait for it: every message the broker routed to
    `client` before the marker has then been delivered (a broker delivers in order per client)."""
    marker = uuid.uuid4().hex.encode()
    client.publish(topic, marker)
    client.wait_message(topic, lambda p: p == marker, what="the flush marker")


def wait_log(agent: AgentProcess, text: str, count: int = 1, timeout: float = 20.0) -> str:
    def found() -> str | None:
        log = agent.log()
        return log if log.count(text) >= count else None

    try:
        return str(proc.wait_for(found, timeout=timeout, interval=0.02, what=f"{text!r} in the agent log"))
    except TimeoutError:
        print(agent.log()[-4000:])
        raise


def write_passwd(path: Path, users: dict[str, str]) -> None:
    path.write_text("".join(f"{u}:{p}\n" for u, p in users.items()))
    path.chmod(0o600)
    # -U hashes the plain file in place: no password on a command line
    subprocess.run([MOSQUITTO_PASSWD, "-U", str(path)], check=True, capture_output=True)


class ShippedBroker:
    """mosquitto running docs/mosquitto/amora.conf + amora.acl as shipped: only the file locations
    and the listener's port are changed, and logging/persistence lines for the test are appended."""

    def __init__(self, directory: Path, users: dict[str, str]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = proc.free_port()
        self.certs = make_test_ca(directory / "certs")
        acl = directory / "amora.acl"
        acl.write_text((SHIPPED / "amora.acl").read_text())  # verbatim
        passwd = directory / "amora.passwd"
        write_passwd(passwd, users)
        text = (SHIPPED / "amora.conf").read_text()
        replacements = {
            "/etc/mosquitto/amora.passwd": str(passwd),
            "/etc/mosquitto/amora.acl": str(acl),
            "/etc/mosquitto/certs/server.crt": str(self.certs["server_cert"]),
            "/etc/mosquitto/certs/server.key": str(self.certs["server_key"]),
            "/etc/mosquitto/certs/ca.crt": str(self.certs["ca"]),
            "\nlistener 8883\n": f"\nlistener {self.port} 127.0.0.1\n",
        }
        for old, new in replacements.items():
            assert old in text, f"docs/mosquitto/amora.conf no longer contains {old!r}"
            text = text.replace(old, new)
        text += "\nlog_dest stderr\nconnection_messages true\nlog_type all\npersistence false\n"
        if os.geteuid() == 0:
            text += "user root\n"
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(text)
        self.log_path = directory / "mosquitto.log"
        self.proc = proc.spawn([MOSQUITTO, "-c", str(self.conf)], log=self.log_path)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log_path.read_text()}")
            return proc.port_open(self.port)

        proc.wait_for(up, timeout=10, what="mosquitto with the shipped configuration")

    @property
    def ca_file(self) -> Path:
        return self.certs["ca"]

    def client(self, user: str | None, password: str | None = None) -> Client:
        if user is not None and password is None:
            password = PASSWORDS[user]
        return Client(
            self.port, username=user, password=password, tls=tls_context(self.ca_file), host="localhost"
        )

    def stop(self) -> None:
        proc.stop(self.proc)


def tls_context(ca_file: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def start_agent(config: dict[str, Any], workdir: Path, *extra: str) -> AgentProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    return AgentProcess(config, workdir, extra_args=extra).start()


# --------------------------------------------------------------------------------------------------
# (a) the shipped mosquitto configuration: password file + ACL


@pytest.fixture
def shipped_broker(tmp_path: Path) -> Iterator[ShippedBroker]:
    broker = ShippedBroker(tmp_path / "broker", PASSWORDS)
    yield broker
    broker.stop()


@pytest.fixture
def acl_agent(shipped_broker: ShippedBroker, mpd_server: MpdServer, tmp_path: Path) -> Iterator[AgentProcess]:
    config = make_config(Mosquitto(tmp_path / "unused"), mpd_server, tmp_path)
    config["broker"] = {
        **config["broker"],
        "broker_url": f"mqtts://localhost:{shipped_broker.port}",
        "ca_file": str(shipped_broker.ca_file),
        "username": DEVICE,
        "password": PASSWORDS[DEVICE],
    }
    config["broker"].pop("port")
    agent = start_agent(config, tmp_path / "agent")
    try:
        yield agent
    finally:
        agent.stop()
        print(agent.log()[-3000:])


def test_shipped_acl_lets_the_agent_work_and_its_controller_drive_it(
    acl_agent: AgentProcess, shipped_broker: ShippedBroker
) -> None:
    base = f"amora/devices/{DEVICE}"
    controller = shipped_broker.client(CONTROLLER)
    try:
        assert controller.subscribe(f"{base}/responses", f"{base}/state", f"{base}/connection") == [1, 1, 1]
        # birth and state are retained: a controller that subscribes later still gets them
        controller.wait_message(f"{base}/connection", lambda p: p == b"online")
        state = json.loads(
            controller.wait_message(f"{base}/state", lambda p: json.loads(p)["links"]["mpd"] == "online")
        )
        assert state["links"]["mqtt"] == "online"
        late = shipped_broker.client(CONTROLLER)
        try:
            late.subscribe(f"{base}/state", f"{base}/connection")
            late.wait(lambda: late.on(f"{base}/state") and late.on(f"{base}/connection"), what="retained")
            assert all(retain for _, _, retain in late.messages)
        finally:
            late.close()
        # commands end to end
        assert send(controller, DEVICE, "ping")["status"] == "ok"
        assert send(controller, DEVICE, "setVolume", {"volume": 42})["status"] == "ok"
        assert send(controller, DEVICE, "teleport")["status"] == "error"
    finally:
        controller.close()


def test_shipped_acl_keeps_other_clients_out_of_a_device(
    acl_agent: AgentProcess, shipped_broker: ShippedBroker
) -> None:
    base = f"amora/devices/{DEVICE}"
    controller = shipped_broker.client(CONTROLLER)
    intruder = shipped_broker.client(OTHER_DEVICE)  # an authenticated user: another device
    own = f"amora/devices/{OTHER_DEVICE}/commands"  # the one topic the intruder may read
    try:
        controller.subscribe(f"{base}/responses", f"{base}/state", f"{base}/connection")
        controller.wait_message(f"{base}/state", lambda p: json.loads(p)["links"]["mpd"] == "online")
        # the other device may not read this device's commands, responses or state
        granted = intruder.subscribe(f"{base}/commands", f"{base}/responses", f"{base}/state", f"{base}/#")
        assert intruder.subscribe(own) == [1]
        # ... nor forge its state, connection or responses, nor command it
        forged_id, forged_command = command("setVolume", {"volume": 1})
        intruder.publish(f"{base}/state", json.dumps({"forged": True}), retain=True)
        intruder.publish(f"{base}/connection", b"offline", retain=True)
        intruder.publish(f"{base}/responses", json.dumps({"command_id": "forged", "status": "ok"}))
        intruder.publish(f"{base}/commands", forged_command)
        # the controller must not read the commands it sends either (mosquitto 2.0 grants such a
        # subscription and filters on delivery, so delivery is what is checked)
        controller.subscribe(f"{base}/commands")
        assert send(controller, DEVICE, "ping")["status"] == "ok"  # routed after all of the above
        flush(intruder, own)

        seen = {t for t, _, _ in intruder.messages}
        assert seen == {own}, f"the other device read {seen - {own}} (granted {granted})"
        assert all(
            b"forged" not in p for p in controller.on(f"{base}/state") + controller.on(f"{base}/responses")
        )
        assert controller.on(f"{base}/connection")[-1] == b"online"
        assert not [p for p in controller.on(f"{base}/responses") if json.loads(p)["command_id"] == forged_id]

        # a controller may command, but not pose as the device
        controller.publish(f"{base}/state", json.dumps({"forged": "by the controller"}), retain=True)
        controller.publish(f"{base}/responses", json.dumps({"command_id": "forged", "status": "ok"}))
        assert send(controller, DEVICE, "ping")["status"] == "ok"
        assert all(
            b"forged" not in p for p in controller.on(f"{base}/state") + controller.on(f"{base}/responses")
        )
        assert not controller.on(f"{base}/commands")
        denied = shipped_broker.log_path.read_text().count("Denied PUBLISH")
        assert denied >= 6, "mosquitto should have logged each refused publish"
        # the retained state a newcomer gets is still the device's own
        newcomer = shipped_broker.client(CONTROLLER)
        try:
            newcomer.subscribe(f"{base}/state")
            assert "links" in json.loads(newcomer.wait_message(f"{base}/state"))
        finally:
            newcomer.close()
    finally:
        controller.close()
        intruder.close()


def test_shipped_configuration_refuses_anonymous_and_wrong_passwords(shipped_broker: ShippedBroker) -> None:
    with pytest.raises(ConnectionRefusedError, match=r"not authorised|bad user name or password"):
        shipped_broker.client(None)
    with pytest.raises(ConnectionRefusedError, match=r"not authorised|bad user name or password"):
        shipped_broker.client(DEVICE, "wrong")


# --------------------------------------------------------------------------------------------------
# (b) mutual TLS and host name verification


def tls_agent_config(
    broker: Mosquitto, mpd: MpdServer, workdir: Path, *, host: str = "localhost", client_cert: bool = True
) -> dict[str, Any]:
    config = make_config(broker, mpd, workdir)
    config["broker"].pop("port")
    config["broker"].update(broker_url=f"mqtts://{host}:{broker.tls_port}", ca_file=str(broker.tls_ca_file))
    if client_cert:
        config["broker"].update(
            cert_file=str(broker.certs["client_cert"]), key_file=str(broker.certs["client_key"])
        )
    return config


def mtls_broker(
    directory: Path, *, server_names: tuple[str, ...] = ("localhost",), extra_conf: str = ""
) -> Mosquitto:
    # the launcher reuses certificates already in <dir>/certs: this picks the server's names
    make_test_ca(directory / "certs", hosts=server_names)
    return Mosquitto(
        directory, tls=True, tls_only=True, require_client_cert=True, extra_conf=extra_conf
    ).start()


def test_mutual_tls_with_host_name_verification_works(
    mpd_server: MpdServer, tmp_path: Path, mosquitto_factory: MosquittoFactory
) -> None:
    broker = mosquitto_factory(tls=True, tls_only=True, require_client_cert=True)
    agent = start_agent(tls_agent_config(broker, mpd_server, tmp_path), tmp_path / "agent")
    try:
        log = wait_log(agent, "MQTT connected to mqtts://localhost:")
        assert " WARNING " not in log, log
        certs = broker.certs
        ctx = tls_context(certs["ca"], certs["client_cert"], certs["client_key"])
        assert broker.tls_port is not None
        controller = Client(broker.tls_port, host="localhost", tls=ctx)
        try:
            controller.subscribe(f"amora/devices/{DEVICE}/responses")
            assert send(controller, DEVICE, "ping")["status"] == "ok"
        finally:
            controller.close()
    finally:
        agent.stop()


def test_a_certificate_for_another_name_is_refused_with_a_clear_error_and_retried(
    mpd_server: MpdServer, tmp_path: Path
) -> None:
    broker = mtls_broker(tmp_path / "broker", server_names=("broker.example",))
    agent = start_agent(tls_agent_config(broker, mpd_server, tmp_path), tmp_path / "agent")
    try:
        # retried with backoff (0.1 s .. 0.5 s here), the process stays up
        log = wait_log(agent, "TLS verification failed for mqtts://localhost:", count=3)
        assert "Hostname mismatch" in log or "doesn't match" in log, log
        assert agent.alive
        assert "Traceback" not in log
    finally:
        agent.stop()
        broker.stop()


def test_tls_insecure_connects_to_a_mismatched_broker_but_says_so_loudly(
    mpd_server: MpdServer, tmp_path: Path
) -> None:
    broker = mtls_broker(tmp_path / "broker", server_names=("broker.example",))
    config = tls_agent_config(broker, mpd_server, tmp_path)
    config["broker"]["tls_insecure"] = True
    agent = start_agent(config, tmp_path / "agent")
    try:
        log = wait_log(agent, "MQTT connected to mqtts://localhost:")
        assert re.search(r"WARNING amora\.agent: broker\.tls_insecure is on: .* NOT checked", log), log
        assert "MQTT TLS VERIFICATION DISABLED" in log
    finally:
        agent.stop()
        broker.stop()


def test_a_missing_client_certificate_is_reported_not_fatal(mpd_server: MpdServer, tmp_path: Path) -> None:
    broker = mtls_broker(tmp_path / "broker")
    agent = start_agent(tls_agent_config(broker, mpd_server, tmp_path, client_cert=False), tmp_path / "agent")
    try:
        # Under TLS 1.3 the broker's "certificate required" alert comes after the handshake; the MQTT
        # bridge sees it but only gives up at its 10 s connect timeout (reported to its owner).
        log = wait_log(agent, "MQTT link down:", timeout=30)
        assert agent.alive and "Traceback" not in log
    finally:
        agent.stop()
        broker.stop()


# --------------------------------------------------------------------------------------------------
# (c) no secret in any output: logs, MQTT traffic, the twin and telemetry, state files, the trace

BROKER_SECRET = "brk-Qz7+Xr/9=Lp&w2Kd"
MPD_SECRET = "mpd-Vt4+kY/8sJ2nR6"
IOT_KEY = base64.b64encode(b"amora-known-iothub-key-0123456789").decode()
IOT_DEVICE = "waybox-player-001"


def secret_forms(secret: str) -> set[str]:
    """The ways a leaked secret could be written: raw, URL-encoded, base64 and JSON-escaped."""
    raw = secret.encode()
    return {
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        json.dumps(secret)[1:-1],
    }


# a SAS signature or token that is not masked (the agent derives these from the key)
UNMASKED_SAS = re.compile(r"(?:sig=|SharedAccessSignature )(?!\*\*\*)[A-Za-z0-9%+/=]{8,}")


def leaks(text: str, secrets: list[str]) -> list[str]:
    found = [form for s in secrets for form in secret_forms(s) if form in text]
    found += UNMASKED_SAS.findall(text)
    return found


def test_no_secret_appears_in_logs_messages_state_files_or_the_trace(
    mosquitto_factory: MosquittoFactory,
    mpd_library: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connection_string = f"HostName=localhub.azure-devices.net;DeviceId={IOT_DEVICE};SharedAccessKey={IOT_KEY}"
    secrets = [BROKER_SECRET, MPD_SECRET, IOT_KEY, connection_string]
    sniffer_pw = "sniffer-pw"
    broker = mosquitto_factory(users={DEVICE: BROKER_SECRET, "sniffer": sniffer_pw})  # no ACL: all see all
    mpd = MpdServer(tmp_path / "mpd", library=mpd_library, tcp=True, password=MPD_SECRET).start()
    hub = LocalHub(tmp_path / "hub", device_id=IOT_DEVICE, device_key=IOT_KEY).start()
    workdir = tmp_path / "agent"
    workdir.mkdir()
    trace = workdir / "trace.jsonl"
    (workdir / "mpd-password").write_text(MPD_SECRET + "\n")
    (workdir / "mpd-password").chmod(0o600)
    config = make_config(broker, mpd, workdir)
    config["mpd"].update(host="127.0.0.1", port=mpd.port, password_file="mpd-password")
    config["broker"]["username"] = DEVICE
    host, port = hub.proxy_address
    config["iot"] = {
        "connection_string": connection_string,  # inline, in a 0600 config file
        "ca_file": str(hub.ca_path),
        "proxy": {"type": "HTTP", "host": host, "port": port},
        "telemetry_interval": 1,
        "call_timeout": 5,
        "backoff": {"initial_delay": 0.2, "max_delay": 1},
    }
    config["logging"] = {"level": "debug"}  # the most talkative the agent gets
    monkeypatch.setenv("AMORA_BROKER_PASSWORD", BROKER_SECRET)

    sniffers: list[Client] = []

    def sniff() -> Client:
        sniffer = Client(broker.port, username="sniffer", password=sniffer_pw)
        sniffer.subscribe("#", "$SYS/#")
        sniffers.append(sniffer)
        return sniffer

    def all_online(c: Client) -> bool:
        states = [json.loads(p) for p in c.on(f"amora/devices/{DEVICE}/state")]
        return bool(states) and set(states[-1]["links"].values()) == {"online"}

    agent = AgentProcess(config, workdir, extra_args=("--record", str(trace)))
    try:
        sniffer = sniff()
        agent.start()
        sniffer.wait(lambda: all_online(sniffer), timeout=30, what="all links online")

        # commands, good and bad, over MQTT and as direct methods
        for name, params in [
            ("ping", None),
            ("loadPlaylist", {"playlist": "relaxing"}),
            ("setVolume", {"volume": 30}),
            ("pause", None),
            ("teleport", None),
            ("setVolume", {"volume": 500}),
            ("getState", None),
        ]:
            send(sniffer, DEVICE, name, params)
        sniffer.publish(f"amora/devices/{DEVICE}/commands", b"{not json")
        sniffer.publish(f"amora/devices/{DEVICE}/commands", json.dumps({"command": "ping"}), retain=True)
        assert hub.invoke_method("setVolume", {"volume": 45}, timeout=10)[0] == 200
        assert hub.invoke_method("nope", None, timeout=10)[0] == 404
        hub.wait_for_telemetry(1, timeout=10)

        # reconnects: MPD, the broker, IoT Hub; and IoT Hub refusing the credentials for a while
        def recovered(c: Client, link: str, since: int) -> bool:
            states = [json.loads(p) for p in c.on(f"amora/devices/{DEVICE}/state")][since:]
            went_down = any(s["links"][link] != "online" for s in states)
            return went_down and all_online(c)

        since = len(sniffer.on(f"amora/devices/{DEVICE}/state"))
        mpd.restart()
        sniffer.wait(lambda: recovered(sniffer, "mpd", since), timeout=30, what="MPD back")
        broker.restart()
        sniffer = sniff()
        sniffer.wait(lambda: all_online(sniffer), timeout=30, what="MQTT back")
        wait_log(agent, "MQTT connected to", count=2)
        hub.reject_credentials(True)
        hub.drop()
        wait_log(agent, "IoT Hub connect failed: CredentialError", timeout=30)
        since = len(sniffer.on(f"amora/devices/{DEVICE}/state"))
        hub.reject_credentials(False)
        sniffer.wait(
            lambda: recovered(sniffer, "iothub", since) or all_online(sniffer), timeout=30, what="hub"
        )
        wait_log(agent, "Successfully connected to Hub", count=2, timeout=30)
        assert send(sniffer, DEVICE, "ping")["status"] == "ok"

        check = subprocess.run(
            [sys.executable, "-m", "amora.agent_main", "--config", str(agent.config_path), "--check-config"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "AMORA_BROKER_PASSWORD": BROKER_SECRET},
        )
        assert check.returncode == 0, check.stderr
        assert agent.terminate() == 0
    finally:
        agent.stop()
        for s in sniffers:
            s.close()
        twin = json.dumps(hub.twin())
        telemetry = [t.body.decode(errors="replace") + json.dumps(t.properties) for t in hub.telemetry()]
        hub.stop()
        mpd.close()

    outputs: dict[str, str] = {
        "agent log": agent.log(),
        "--check-config stdout": check.stdout,
        "--check-config stderr": check.stderr,
        "trace": trace.read_text(),
        "twin": twin,
        "telemetry": "\n".join(telemetry),
        "mosquitto log": broker.log_path.read_text(errors="replace"),
    }
    for index, s in enumerate(sniffers):
        outputs[f"MQTT traffic {index}"] = "\n".join(
            f"{t} {p.decode(errors='replace')}" for t, p, _ in s.messages
        )
    for path in sorted(Path(config["system"]["state_dir"]).rglob("*")):
        if path.is_file():
            outputs[f"state file {path.name}"] = path.read_bytes().decode(errors="replace")

    # the scan sees real material, and would see a leak
    assert "MQTT connected" in outputs["agent log"] and "DEBUG" in outputs["agent log"]
    assert outputs["trace"].count("\n") > 20 and '"volume"' in outputs["trace"]
    assert "***" in outputs["--check-config stdout"]
    assert leaks(agent.config_path.read_text(), secrets)
    assert sum(len(s.messages) for s in sniffers) > 10
    found = {where: leaks(text, secrets) for where, text in outputs.items()}
    assert not {where: hits for where, hits in found.items() if hits}


# --------------------------------------------------------------------------------------------------
# (d) start-up warnings and the strict permission refusal, through the real entry point


def run_agent_main(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amora.agent_main", "--config", str(config_path), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def write_config(tmp_path: Path, mode: int, **broker: Any) -> Path:
    doc = {
        "device": {"id": DEVICE},
        "content": {"storage_path": str(tmp_path / "music")},
        "broker": {"broker_url": "localhost", "username": DEVICE, "password": BROKER_SECRET, **broker},
        "system": {"state_dir": str(tmp_path / "state"), "strict_permissions": True},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    path.chmod(mode)
    return path


def test_strict_permissions_refuses_to_start_with_exit_status_2(tmp_path: Path) -> None:
    path = write_config(tmp_path, 0o644)
    for args in ((), ("--check-config",)):
        result = run_agent_main(path, *args)
        assert result.returncode == 2, result.stderr
        assert "refusing to start (system.strict_permissions)" in result.stderr
        assert "0644" in result.stderr and "chmod 600" in result.stderr
        assert BROKER_SECRET not in result.stderr + result.stdout
    path.chmod(0o600)
    result = run_agent_main(path, "--check-config")
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_check_config_prints_every_startup_warning(tmp_path: Path) -> None:
    path = write_config(tmp_path, 0o644, broker_url="mqtt.example.com")
    doc = json.loads(path.read_text())
    doc["system"]["strict_permissions"] = False
    path.write_text(json.dumps(doc))
    result = run_agent_main(path, "--check-config")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("warning: ") for line in lines), lines
    assert "NOT encrypted" in result.stderr and "readable by group/others" in result.stderr
    assert BROKER_SECRET not in result.stderr + result.stdout


def test_plain_mqtt_to_a_remote_broker_is_logged_as_a_warning_at_start(
    mpd_server: MpdServer, tmp_path: Path
) -> None:
    config = make_config(Mosquitto(tmp_path / "unused"), mpd_server, tmp_path)
    config["broker"].update(broker_url="192.0.2.10")  # TEST-NET-1: never answers
    agent = start_agent(config, tmp_path / "agent")
    try:
        log = wait_log(agent, "MQTT broker mqtt://192.0.2.10:")
        assert "WARNING amora.agent: MQTT broker mqtt://192.0.2.10:" in log and "NOT encrypted" in log
    finally:
        agent.stop()


# --------------------------------------------------------------------------------------------------
# IoT Hub with X.509: the stand-in's device listener requires a client certificate from the
# device CA (as IoT Hub does for CA-registered devices), so a connection proves the agent presents
# its certificate; one without a certificate, or with another CA's, is refused.


def _tls_handshake(port: int, ca: Path, cert: Path | None = None, key: Path | None = None) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        # TLS 1.2: a rejected client certificate ends the handshake; read to see the alert
        tls.settimeout(5)
        tls.sendall(b"\x10\x00")  # not MQTT: the broker closes; a refused handshake raises first
        tls.recv(1)


def test_iot_hub_with_an_x509_identity_connects_and_answers_methods(
    agent_config: dict[str, Any], controller: Controller, tmp_path: Path
) -> None:
    certs = make_test_ca(tmp_path / "device-certs")
    foreign = make_test_ca(tmp_path / "other-ca")
    hub = LocalHub(tmp_path / "hub", device_id=IOT_DEVICE, client_ca=certs["ca"]).start()
    try:
        assert hub.broker is not None
        for cert, key in ((None, None), (foreign["client_cert"], foreign["client_key"])):
            with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
                _tls_handshake(hub.broker.tls_port, hub.ca_path, cert, key)
        _tls_handshake(hub.broker.tls_port, hub.ca_path, certs["client_cert"], certs["client_key"])
        host, port = hub.proxy_address
        agent_config["iot"] = {
            "x509": {
                "hostname": hub.host_name,
                "device_id": IOT_DEVICE,
                "cert_file": str(certs["client_cert"]),
                "key_file": str(certs["client_key"]),
            },
            "ca_file": str(hub.ca_path),
            "proxy": {"type": "HTTP", "host": host, "port": port},
            "call_timeout": 5,
            "backoff": {"initial_delay": 0.2, "max_delay": 1},
        }
        agent = start_agent(agent_config, tmp_path / "agent")
        try:
            controller.wait_state(
                lambda s: s["links"].get("iothub") == "online", timeout=30, what="iothub online"
            )
            status, body = hub.invoke_method("ping", None, timeout=10)
            assert status == 200 and body["status"] == "ok"
        finally:
            agent.stop()
    finally:
        hub.stop()
