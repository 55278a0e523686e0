"""A private MPD (no sound card) for the tests and the developer's local stack.

`make_sample_library` renders a few short tagged tracks and m3u playlists once; `MpdServer` runs
`mpd --no-daemon` on a copy of them with two null outputs, listening on a unix socket (and
optionally a free TCP port), and can stop, kill, freeze and restart it to inject faults.
See /work/shared/notes/mpd.md for the measured behaviour this relies on.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mpd

from tools.stack import proc

# Bump when the tracks or playlists below change, so a cached library is rebuilt.
LIBRARY_VERSION = "1"
_MARKER = ".amora-sample-library"
_MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the NUL


@dataclass(frozen=True, slots=True)
class SampleTrack:
    path: str  # relative to the music directory, as MPD names it
    title: str
    artist: str
    album: str
    track: int
    seconds: int
    freq: int


_ENSEMBLE = "Amora Test Ensemble"
SAMPLE_TRACKS: tuple[SampleTrack, ...] = (
    SampleTrack("Calm Waters/01 Relaxing Piano.flac", "Relaxing Piano", _ENSEMBLE, "Calm Waters", 1, 30, 220),
    SampleTrack("Calm Waters/02 Ocean Drift.ogg", "Ocean Drift", _ENSEMBLE, "Calm Waters", 2, 45, 247),
    SampleTrack("Calm Waters/03 Evening Glow.flac", "Evening Glow", _ENSEMBLE, "Calm Waters", 3, 25, 262),
    SampleTrack(
        "Focus Sessions/01 Deep Work.ogg", "Deep Work", "Quiet Signals", "Focus Sessions", 1, 40, 294
    ),
    SampleTrack(
        "Focus Sessions/02 Steady Pulse.flac", "Steady Pulse", "Quiet Signals", "Focus Sessions", 2, 20, 330
    ),
    SampleTrack(
        "Focus Sessions/03 Flow State.ogg", "Flow State", "Quiet Signals", "Focus Sessions", 3, 60, 349
    ),
    SampleTrack("Morning Light/01 Sunrise.flac", "Sunrise", "Dawn Chorus", "Morning Light", 1, 35, 392),
    SampleTrack(
        "Morning Light/02 Coffee Time.ogg", "Coffee Time", "Dawn Chorus", "Morning Light", 2, 50, 440
    ),
)

SAMPLE_PLAYLISTS: dict[str, tuple[str, ...]] = {
    "relaxing": (
        "Calm Waters/01 Relaxing Piano.flac",
        "Calm Waters/02 Ocean Drift.ogg",
        "Calm Waters/03 Evening Glow.flac",
        "Morning Light/01 Sunrise.flac",
    ),
    "focus": (
        "Focus Sessions/01 Deep Work.ogg",
        "Focus Sessions/02 Steady Pulse.flac",
        "Focus Sessions/03 Flow State.ogg",
    ),
    "morning": (
        "Morning Light/01 Sunrise.flac",
        "Morning Light/02 Coffee Time.ogg",
        "Calm Waters/01 Relaxing Piano.flac",
    ),
}


def make_sample_library(dir: Path) -> None:
    """Fill `dir` with `music/<Album>/<track>` and `playlists/<name>.m3u`; a no-op when `dir` already
    holds this version of the library (rendering takes a few seconds of sox)."""
    dir = Path(dir)
    marker = dir / _MARKER
    if marker.exists() and marker.read_text().strip() == LIBRARY_VERSION:
        return
    dir.mkdir(parents=True, exist_ok=True)
    # Render next to the target and swap in, so an interrupted run never looks complete.
    work = Path(tempfile.mkdtemp(prefix=".building-", dir=dir))
    try:
        for t in SAMPLE_TRACKS:
            out = work / "music" / t.path
            out.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [
                    "sox", "-n", "-r", "22050", "-c", "1", "-b", "16",
                    "--comment", f"Title={t.title}",
                    "--add-comment", f"Artist={t.artist}",
                    "--add-comment", f"Album={t.album}",
                    "--add-comment", f"Track={t.track}",
                    "--add-comment", "Genre=Test Tone",
                    str(out), "synth", str(t.seconds), "sine", str(t.freq), "vol", "0.3",
                ],
                check=True,
                capture_output=True,
            )  # fmt: skip
        (work / "playlists").mkdir()
        for name, paths in SAMPLE_PLAYLISTS.items():
            (work / "playlists" / f"{name}.m3u").write_text("".join(p + "\n" for p in paths))
        for sub in ("music", "playlists"):
            if (dir / sub).exists():
                shutil.rmtree(dir / sub)
            (work / sub).rename(dir / sub)
        marker.write_text(LIBRARY_VERSION + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _config(
    state: Path, socket_path: Path, port: int | None, music: Path, playlists: Path, password: str | None
) -> str:
    tcp = f'bind_to_address     "127.0.0.1"\nport                "{port}"\n' if port is not None else ""
    if password is not None:
        # Without the password a client may do nothing at all.
        tcp += f'password            "{password}@read,add,control,admin"\ndefault_permissions ""\n'
    return (
        f'music_directory     "{music}"\n'
        f'playlist_directory  "{playlists}"\n'
        f'db_file             "{state / "mpd.db"}"\n'
        f'state_file          "{state / "state"}"\n'
        # The default (120 s) would lose everything newer on a SIGKILL.
        'state_file_interval "1"\n'
        f'log_file            "{state / "mpd.log"}"\n'
        f'bind_to_address     "{socket_path}"\n'
        f"{tcp}"
        'zeroconf_enabled    "no"\n'
        'auto_update         "no"\n'
        # software mixers make setvol work; the default sync makes playback advance in real time.
        'audio_output {\n  type "null"\n  name "Speaker A"\n  mixer_type "software"\n}\n'
        'audio_output {\n  type "null"\n  name "Speaker B"\n  mixer_type "software"\n}\n'
    )


def _greets(socket_path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        s.connect(str(socket_path))
        return s.recv(64).startswith(b"OK MPD ")


class MpdServer:
    """One MPD process on `state_dir`. `library`, if given, is copied in (music and playlists) the
    first time; `tcp` also opens a free port on 127.0.0.1 (kept across restarts); `password` makes
    MPD refuse everything until a client sends it."""

    def __init__(
        self, state_dir: Path, *, library: Path | None = None, tcp: bool = True, password: str | None = None
    ) -> None:
        self.password = password
        self.state_dir = Path(state_dir).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.music_dir = self.state_dir / "music"
        self.playlist_dir = self.state_dir / "playlists"
        if library is not None and not self.music_dir.exists():
            shutil.copytree(Path(library) / "music", self.music_dir)
            shutil.copytree(Path(library) / "playlists", self.playlist_dir)
        self.music_dir.mkdir(exist_ok=True)
        self.playlist_dir.mkdir(exist_ok=True)
        self.socket_path = self.state_dir / "socket"
        self._short_dir: Path | None = None
        if len(os.fsencode(self.socket_path)) > _MAX_UNIX_PATH:
            self._short_dir = Path(tempfile.mkdtemp(prefix="mpd-"))
            self.socket_path = self._short_dir / "socket"
        self.port: int | None = proc.free_port() if tcp else None
        self.conf = self.state_dir / "mpd.conf"
        self.log = self.state_dir / "mpd.log"
        self.conf.write_text(
            _config(self.state_dir, self.socket_path, self.port, self.music_dir, self.playlist_dir, password)
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, *, timeout: float = 15.0) -> MpdServer:
        """Start MPD and return once it answers and its database is up to date."""
        if self.running:
            return self
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        with open(self.state_dir / "stderr.log", "ab") as log:  # the child keeps its own copy
            self.proc = proc.spawn(["mpd", "--no-daemon", str(self.conf)], stdout=log)
        self._paused = False

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"mpd exited with {self.proc.returncode}: {self._log_tail()}")
            return _greets(self.socket_path)

        try:
            proc.wait_for(up, timeout=timeout, what="the MPD greeting")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; log: {self._log_tail()}") from exc
        self.update_db(timeout=timeout)
        return self

    def update_db(self, *, timeout: float = 15.0) -> None:
        """Run `update` and wait until `updating_db` leaves `status`."""
        with self.client() as c:
            c.update()
            proc.wait_for(lambda: "updating_db" not in c.status(), timeout=timeout, what="the MPD db update")

    def stop(self) -> None:
        """SIGTERM (MPD saves its state file) and wait."""
        if self.proc is None:
            return
        self.resume()
        proc.stop(self.proc)
        self.proc = None

    def kill9(self) -> None:
        """SIGKILL: no state saved beyond the last state_file_interval."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            proc.kill9(self.proc)
        self._paused = False
        self.proc = None

    def restart(self, *, timeout: float = 15.0) -> MpdServer:
        self.stop()
        return self.start(timeout=timeout)

    def pause(self) -> None:
        """SIGSTOP: MPD keeps its sockets open but answers nothing (a frozen server)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        if self.proc is not None and self._paused and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
        self._paused = False

    def close(self) -> None:
        """Stop MPD and remove the out-of-tree socket dir, if one was needed."""
        try:
            self.stop()
        finally:
            if self._short_dir is not None:
                shutil.rmtree(self._short_dir, ignore_errors=True)

    def __enter__(self) -> MpdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # -- clients -----------------------------------------------------------------------------
    @property
    def host(self) -> str:
        """What MPD clients take as host: the unix socket path."""
        return str(self.socket_path)

    def env(self) -> dict[str, str]:
        """Environment for `mpc` and other libmpdclient tools (MPD_HOST may be a socket path)."""
        env = dict(os.environ)
        prefix = f"{self.password}@" if self.password is not None else ""
        env["MPD_HOST"] = f"{prefix}{self.socket_path}"
        env.pop("MPD_PORT", None)
        return env

    def mpc(self, *args: str, check: bool = True, timeout: float = 10.0) -> str:
        """Run `mpc ARGS` against this server; returns stdout. Raises CalledProcessError on failure
        when `check` (mpc exits non-zero on MPD errors)."""
        res = subprocess.run(
            ["mpc", *args], env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and res.returncode != 0:
            raise subprocess.CalledProcessError(res.returncode, res.args, res.stdout, res.stderr)
        return res.stdout

    @contextlib.contextmanager
    def client(self, *, tcp: bool = False, timeout: float = 5.0) -> Iterator[mpd.MPDClient]:
        """A connected synchronous python-mpd2 client (unix socket, or TCP with `tcp`)."""
        c = mpd.MPDClient()
        c.timeout = timeout
        if tcp:
            if self.port is None:
                raise ValueError("this MpdServer has no TCP port")
            c.connect("127.0.0.1", self.port)
            c._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            c.connect(str(self.socket_path))
        if self.password is not None:
            c.password(self.password)
        try:
            yield c
        finally:
            with contextlib.suppress(Exception):
                c.disconnect()

    def output_ids(self) -> dict[str, int]:
        """Output name -> id (python-mpd2 addresses outputs by integer id)."""
        with self.client() as c:
            return {o["outputname"]: int(o["outputid"]) for o in c.outputs()}

    def _log_tail(self, n: int = 2000) -> str:
        parts = []
        for f in (self.log, self.state_dir / "stderr.log"):
            with contextlib.suppress(OSError):
                parts.append(f.read_text(errors="replace")[-n:])
        return " | ".join(p.strip() for p in parts if p.strip())


def _main() -> None:  # pragma: no cover - developer convenience
    """`python -m tools.stack.mpd DIR`: run a private MPD on DIR until Ctrl-C."""
    import sys
    import time

    base = Path(sys.argv[1] if len(sys.argv) > 1 else ".stack/mpd")
    make_sample_library(base / "library")
    with MpdServer(base / "state", library=base / "library") as server:
        print(f"MPD_HOST={server.host}  (TCP port {server.port})", flush=True)
        try:
            while server.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    _main()
