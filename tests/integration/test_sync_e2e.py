"""Content sync through the agent: syncContent -> Azurite -> files -> MPD's database -> state."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from amora import schemas
from tests.fixtures.agent import AgentProcess, Controller
from tests.fixtures.azurite import BlobContainer
from tools.stack.mpd import MpdServer

pytestmark = pytest.mark.services


def tone(path: Path, title: str) -> bytes:
    subprocess.run(
        [
            "sox",
            "-n",
            "-r",
            "22050",
            "-c",
            "1",
            "-b",
            "16",
            "--comment",
            f"Title={title}",
            str(path),
            "synth",
            "1",
            "sine",
            "330",
            "vol",
            "0.2",
        ],
        check=True,
        timeout=30,
    )
    return path.read_bytes()


@pytest.fixture
def sync_agent(
    agent_config: dict[str, Any], blob_container: BlobContainer, controller: Controller, tmp_path: Path
) -> AgentProcess:
    agent_config["content"]["sync"] = {"container_url": blob_container.sync_url, "enabled": False}
    process = AgentProcess(agent_config, tmp_path).start()
    controller.wait_state(
        lambda s: s["links"]["mpd"] == "online" and s["links"]["mqtt"] == "online",
        timeout=20,
        what="agent online",
    )
    return process


def test_sync_through_the_agent_reaches_mpd(
    sync_agent: AgentProcess,
    blob_container: BlobContainer,
    controller: Controller,
    mpd_server: MpdServer,
    tmp_path: Path,
) -> None:
    blob_container.seed(
        {
            "Cloud Album/one.flac": tone(tmp_path / "one.flac", "Cloud One"),
            "Cloud Album/two.flac": tone(tmp_path / "two.flac", "Cloud Two"),
            "cloudlist.m3u": b"Cloud Album/one.flac\nCloud Album/two.flac\n",
        }
    )
    body = controller.send("syncContent")
    assert body["status"] == "ok" and body["result"]["accepted"] is True
    op_id = body["result"]["op_id"]
    busy = controller.send("syncContent")
    assert busy["error"]["code"] in ("busy",) or busy["status"] == "ok"  # the first may be done already
    state = controller.wait_state(
        lambda s: (s.get("sync") or {}).get("op_id") == op_id and s["sync"].get("phase") == "done",
        timeout=60,
        what="sync done",
    )
    assert state["sync"]["ok"] is True, state["sync"]
    assert state["sync"]["downloaded"] == 3 and state["player"] in ("stopped", "playing", "paused")
    assert schemas.issues("state", state) == []
    assert (mpd_server.music_dir / "Cloud Album" / "one.flac").is_file()
    assert (mpd_server.playlist_dir / "cloudlist.m3u").is_file()
    with mpd_server.client() as client:  # the database was updated before "done"
        titles = {song.get("title") for song in client.search("album", "") if "title" in song} | {
            s.get("title") for s in client.listallinfo("Cloud Album") if isinstance(s, dict)
        }
    assert {"Cloud One", "Cloud Two"} <= titles
    lists = controller.send("listPlaylists")["result"]["playlists"]
    assert "cloudlist" in lists
    assert controller.send("loadPlaylist", {"playlist": "cloudlist"})["status"] == "ok"
    # nothing changed: a second sync downloads nothing
    again = controller.send("syncContent")["result"]["op_id"]
    state = controller.wait_state(
        lambda s: (s.get("sync") or {}).get("op_id") == again and s["sync"].get("phase") == "done",
        timeout=60,
        what="second sync done",
    )
    assert (
        state["sync"]["ok"] is True and state["sync"]["downloaded"] == 0 and state["sync"]["unchanged"] == 3
    )


def test_amora_sync_cli_shows_the_outcome(
    sync_agent: AgentProcess, blob_container: BlobContainer, tmp_path: Path
) -> None:
    blob_container.seed({"a.flac": tone(tmp_path / "a.flac", "A")})
    config = sync_agent.config_path
    done = subprocess.run(
        [
            str(Path(__import__("sys").executable).parent / "amora"),
            "sync",
            "--config",
            str(config),
            "--wait",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    assert "sync succeeded" in done.stdout and "downloaded 1" in done.stdout
