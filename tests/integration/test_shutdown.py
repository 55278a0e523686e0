"""SIGTERM in the middle of things: no partial file, nothing accepted lost, offline, a prompt exit."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import AgentProcess, Controller
from tests.fixtures.azurite import BlobContainer
from tools.iothub_standin import LocalHub
from tools.stack.mpd import MpdServer

pytestmark = pytest.mark.services

STOP_TIMEOUT = 5.0


def visible_partials(root: Path) -> list[Path]:
    """Files MPD could index that are not complete: anything the sync marks as in progress and
    does not hide (hidden names start with a dot, which MPD skips)."""
    return [p for p in root.rglob("*") if p.is_file() and ".part" in p.name and not p.name.startswith(".")]


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".amora-*") if p.is_file()]


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_sigterm_during_a_sync(
    agent_config: dict[str, Any],
    blob_container: BlobContainer,
    controller: Controller,
    mpd_server: MpdServer,
    tmp_path: Path,
    how: str,
) -> None:
    """SIGTERM commits what was downloaded and stops; SIGKILL (the nearest a test gets to a power
    cut) may leave hidden temp files of the group not yet committed, never a visible partial
    file, and the next run takes over the rest."""
    blobs = {f"Big/{i:03d}.flac": bytes([i % 251]) * 64_000 for i in range(300)}
    blob_container.seed(blobs)
    agent_config["content"]["sync"] = {
        "container_url": blob_container.sync_url,
        "enabled": False,
        "concurrency": 1,
    }
    agent = AgentProcess(agent_config, tmp_path).start()
    try:
        controller.wait_state(lambda s: s["links"]["mpd"] == "online", timeout=20, what="agent up")
        op = controller.send("syncContent")["result"]["op_id"]
        controller.wait_state(
            lambda s: (s.get("sync") or {}).get("op_id") == op and (s["sync"].get("files_done") or 0) >= 5,
            timeout=30,
            what="sync under way",
        )
        started = time.monotonic()
        if how == "sigterm":
            assert agent.terminate(timeout=15) == 0
            assert time.monotonic() - started < STOP_TIMEOUT + 1
        else:
            agent.kill9()
        controller.wait(lambda: controller.connection[-1] == "offline", what="offline")
    finally:
        agent.stop()
    music = mpd_server.music_dir
    assert visible_partials(music) == []
    if how == "sigterm":  # downloaded files committed, the one in hand (< 1 MiB) dropped
        assert temp_files(music) == []
    done_before = {p.name for p in (music / "Big").iterdir() if not p.name.startswith(".")}
    assert 0 < len(done_before) < 300
    for name in done_before:  # what completed is whole
        assert (music / "Big" / name).stat().st_size == 64_000
    # the next run continues and completes
    (tmp_path / "again").mkdir()
    again = AgentProcess(agent_config, tmp_path / "again").start()
    try:
        controller.wait_state(
            lambda s: s["links"]["mpd"] == "online" and s["links"]["mqtt"] == "online",
            timeout=20,
            what="agent up again",
        )
        op = controller.send("syncContent")["result"]["op_id"]
        state = controller.wait_state(
            lambda s: (s.get("sync") or {}).get("op_id") == op and s["sync"].get("phase") == "done",
            timeout=120,
            what="second sync done",
        )
        assert state["sync"]["ok"] is True
        assert state["sync"]["downloaded"] == 300 - len(done_before)
    finally:
        again.stop()
    assert len([p for p in (music / "Big").iterdir() if not p.name.startswith(".")]) == 300
    assert temp_files(music) == []


def test_sigterm_with_a_pending_reported_change(
    agent_config: dict[str, Any],
    local_hub: LocalHub,
    controller: Controller,
    mpd_server: MpdServer,
    tmp_path: Path,
) -> None:
    host, port = local_hub.proxy_address
    agent_config["iot"] = {
        "connection_string": local_hub.connection_string("waybox-player-001"),
        "ca_file": str(local_hub.ca_path),
        "proxy": {"type": "HTTP", "host": host, "port": port},
        "telemetry_interval": 3600,
    }
    agent = AgentProcess(agent_config, tmp_path).start()
    try:
        controller.wait_state(
            lambda s: s["links"]["iothub"] == "online" and s["links"]["mpd"] == "online",
            timeout=30,
            what="all links",
        )
        # changes the agent accepted just before the signal must still reach the twin
        assert controller.send("setVolume", {"volume": 37})["status"] == "ok"
        controller.wait_state(lambda s: s["volume"] == 37, what="volume 37 in state")
        assert agent.terminate(timeout=15) == 0
    finally:
        agent.stop()
    reported = local_hub.twin()["reported"]
    assert reported["audio"]["volume"] == 37, json.dumps(reported)[:500]
