"""tools/stack/local.py as a developer runs it: a real stack, one MQTT command, one direct method,
then SIGTERM, after which nothing it started may be left running."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.agent import Controller
from tools.iothub_standin import control
from tools.stack import proc

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "local-stack-test"

pytestmark = pytest.mark.services


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes; /proc says which
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.timeout(120)
def test_local_stack_runs_answers_and_stops_cleanly(tmp_path: Path) -> None:
    if shutil.which("mpd") is None or shutil.which("sox") is None:
        pytest.skip("mpd and sox are needed")
    state = tmp_path / "stack"
    out = tmp_path / "stack.out"
    argv = [sys.executable, str(ROOT / "tools" / "stack" / "local.py"), "--state-dir", str(state)]
    argv += ["--device-id", DEVICE, "--agent-log", str(tmp_path / "agent.log")]
    if not (ROOT / "node_modules" / ".bin" / "azurite-blob").exists():
        argv.append("--no-azurite")
    launcher = proc.spawn(argv, log=out, cwd=tmp_path)
    controller: Controller | None = None
    try:

        def ready() -> dict[str, object] | None:
            if launcher.poll() is not None:
                raise AssertionError(f"local.py exited with {launcher.returncode}:\n{out.read_text()}")
            path = state / "stack.json"
            return json.loads(path.read_text()) if path.exists() else None

        info = proc.wait_for(ready, timeout=60, interval=0.05, what="the local stack")
        mqtt = info["mqtt"]
        assert isinstance(mqtt, dict)
        controller = Controller(mqtt["host"], mqtt["port"], device=DEVICE)

        response = controller.send("setVolume", {"volume": 35})
        assert response["status"] == "ok", response
        assert response["result"]["volume"] == 35

        reply = control.request(state / "iothub", "invoke", method="ping", payload={}, response_timeout=10)
        assert reply["status"] == 200, reply
        assert reply["payload"]["result"]["pong"] is True

        config = json.loads((state / "config.json").read_text())
        assert config["dev_mode"] is True
        assert "connection_string" not in config["iot"]  # the secret lives in a 0600 file
        assert (state / "iothub" / "connection_string").stat().st_mode & 0o077 == 0

        pids = info["pids"]
        assert isinstance(pids, dict)
        children = {name: pid for name, pid in pids.items() if pid and name != "launcher"}
        assert {"stack", "agent", "mosquitto", "mpd", "iothub_broker"} <= set(children)

        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(30) == 0, out.read_text()
        # the agent went first: the broker still took its goodbye
        controller.wait(lambda: controller.connection[-1:] == ["offline"], what="offline")
        for name, pid in children.items():
            proc.wait_for(lambda pid=pid: not _alive(pid), timeout=5, what=f"{name} ({pid}) to be gone")
        assert not (state / "stack.json").exists()
        secret = (state / "iothub" / "connection_string").read_text().strip()
        assert secret not in out.read_text()
    finally:
        if controller is not None:
            controller.close()
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGTERM)
            try:
                launcher.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill9(launcher)
