"""The agent's picture of the player, kept equal to what MPD last said.

MPD is the truth: the picture changes only when an `MpdSnapshot` arrives (from MPD's `idle` events
or an explicit re-read), never because the agent sent a command. What MPD does not know (which
stored playlist the queue came from, the volume to restore after mute) the agent tracks itself and
drops as soon as MPD's data contradicts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Playback = Literal["playing", "paused", "stopped"]
_PLAYBACK: dict[str, Playback] = {"play": "playing", "pause": "paused", "stop": "stopped"}


def _int(value: Any, default: int | None = None) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    # MPD repeats a tag given several times as a list; show the first
    if isinstance(value, list):
        value = value[0] if value else None
    return None if value is None else str(value)


@dataclass(slots=True)
class Output:
    id: int
    name: str
    enabled: bool
    plugin: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "enabled": self.enabled}


@dataclass(slots=True)
class PlayerPicture:
    known: bool = False  # False until the first snapshot after start
    playback: Playback = "stopped"
    volume: int | None = None
    random: bool = False
    repeat: bool = False
    single: bool = False
    consume: bool = False
    queue_length: int = 0
    queue_version: int | None = None
    song_pos: int | None = None
    song_id: str | None = None
    elapsed: float | None = None
    duration: float | None = None
    sampled_at: float | None = None
    mpd_error: str | None = None
    updating_db: bool = False
    track: dict[str, Any] | None = None
    outputs: list[Output] = field(default_factory=list)
    playlists: list[str] = field(default_factory=list)
    # what the agent knows that MPD does not
    loaded_playlist: str | None = None
    loaded_version: int | None = None
    muted: bool = False
    volume_before_mute: int | None = None

    def apply_status(self, status: dict[str, Any], at: float, *, with_song: bool = True) -> None:
        """`with_song=False`: the status that came back with a command; its song fields are left for
        the snapshot that follows (it brings the song's metadata with them)."""
        self.known = True
        self.playback = _PLAYBACK.get(str(status.get("state")), "stopped")
        volume = _int(status.get("volume"), -1)
        self.volume = None if volume is None or volume < 0 else volume
        if self.muted and self.volume not in (0, None):
            self.muted = False  # someone turned it up elsewhere: no longer muted
        self.random = status.get("random") == "1"
        self.repeat = status.get("repeat") == "1"
        self.single = status.get("single") == "1"
        self.consume = status.get("consume") == "1"
        self.queue_length = _int(status.get("playlistlength"), 0) or 0
        version = _int(status.get("playlist"))
        if (
            self.loaded_playlist is not None
            and version is not None
            and self.loaded_version is not None
            and version > self.loaded_version
        ):
            self.loaded_playlist = None  # the queue changed since the agent loaded it
        self.queue_version = version
        self.mpd_error = _text(status.get("error"))
        self.updating_db = "updating_db" in status
        if not with_song:
            return
        self.song_pos = _int(status.get("song"))
        self.song_id = _text(status.get("songid"))
        self.elapsed = _float(status.get("elapsed"))
        self.duration = _float(status.get("duration"))
        self.sampled_at = at
        if self.song_id is None:
            self.track = None

    def apply_song(self, song: dict[str, Any]) -> None:
        if not song:
            self.track = None
            return
        self.track = {
            "file": _text(song.get("file")),
            "title": _text(song.get("title")),
            "artist": _text(song.get("artist")),
            "album": _text(song.get("album")),
            "name": _text(song.get("name")),
        }
        if self.duration is None:
            self.duration = _float(song.get("duration") or song.get("time"))

    def apply_outputs(self, outputs: list[dict[str, Any]]) -> None:
        parsed = []
        for raw in outputs:
            ident = _int(raw.get("outputid"))
            if ident is None:
                continue
            parsed.append(
                Output(
                    id=ident,
                    name=_text(raw.get("outputname")) or f"output {ident}",
                    enabled=raw.get("outputenabled") == "1",
                    plugin=_text(raw.get("plugin")),
                )
            )
        self.outputs = parsed

    def apply_playlists(self, playlists: list[dict[str, Any]]) -> None:
        self.playlists = sorted({str(p["playlist"]) for p in playlists if "playlist" in p})

    def find_output(self, ref: int | str) -> Output | None:
        for output in self.outputs:
            if output.id == ref if isinstance(ref, int) else output.name == ref:
                return output
        return None

    def current_track_label(self) -> str | None:
        if not self.track:
            return None
        title = self.track.get("title")
        if title:
            artist = self.track.get("artist")
            return f"{artist} - {title}" if artist else str(title)
        file = self.track.get("file") or ""
        return str(file).rsplit("/", 1)[-1] or None

    def playback_json(self) -> dict[str, Any]:
        return {
            "status": self.playback,
            "track": self.track,
            "position": self.elapsed,
            "duration": self.duration,
            "sampled_at": self.sampled_at,
            "queue_position": self.song_pos,
            "queue_length": self.queue_length,
            "error": self.mpd_error,
        }

    def options_json(self) -> dict[str, bool]:
        return {"random": self.random, "repeat": self.repeat, "single": self.single, "consume": self.consume}
