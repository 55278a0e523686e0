"""Microsoft's Azure Storage emulator (Azurite, blob service only) as a local child process.

Azurite comes from npm (package.json at the repo root pins it); `npm ci` runs on first use. It listens
on a port chosen by the OS (or a given one, to restart on the same address) and prints that port
on stdout even with `--silent`. `--disableTelemetry` keeps it from sending usage data out.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import http.client
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tools.stack import proc

REPO_ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "devstoreaccount1"
# The emulator's well-known development key (public, documented by Microsoft).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_LISTENING = re.compile(rb"successfully listens on http://127\.0\.0\.1:(\d+)")


def ensure_installed(root: Path = REPO_ROOT) -> Path:
    """Path of the azurite-blob launcher, running `npm ci` first if node_modules is missing."""
    exe = root / "node_modules" / ".bin" / "azurite-blob"
    if not exe.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm not found: install Debian packages nodejs and npm")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=root, check=True, timeout=600)
    return exe


@dataclass
class Azurite:
    proc: subprocess.Popen[bytes]
    port: int
    location: Path | None
    _drain: threading.Thread | None = field(default=None, repr=False)

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def container_sas_url(self, container: str, *, permissions: str = "rl", hours: int = 4) -> str:
        """A container SAS URL signed with the well-known key (signing done here so that tools and
        fixtures need not import the 40 MB SDK)."""
        return f"{self.blob_endpoint}/{container}?{container_sas(container, permissions, hours)}"

    def create_container(self, container: str) -> None:
        status = _request(
            self.port, "PUT", f"/{ACCOUNT}/{container}?restype=container", b"", _shared_key=True
        )
        if status not in (201, 409):
            raise RuntimeError(f"create container {container!r}: HTTP {status}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            proc.kill9(self.proc)

    def stop(self) -> None:
        proc.stop(self.proc)


def start(
    *, location: Path | None = None, port: int = 0, log: Path | None = None, timeout: float = 30.0
) -> Azurite:
    """Start azurite-blob in memory (or persisted under `location`) and wait until it listens."""
    exe = ensure_installed()
    argv = [str(exe), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--skipApiVersionCheck", "--loose"]
    argv += ["--disableTelemetry", "--silent"]
    argv += ["--location", str(location)] if location is not None else ["--inMemoryPersistence"]
    child = proc.spawn(argv, stdout=subprocess.PIPE, cwd=location or REPO_ROOT)
    assert child.stdout is not None
    found: list[int] = []
    buffered = bytearray()

    def drain() -> None:
        # Keep reading so the child never blocks on a full pipe; the first match gives the port.
        assert child.stdout is not None
        for line in child.stdout:
            if log is not None:
                with open(log, "ab") as fh:
                    fh.write(line)
            if not found:
                buffered.extend(line)
                m = _LISTENING.search(buffered)
                if m:
                    found.append(int(m.group(1)))

    reader = threading.Thread(target=drain, name="azurite-stdout", daemon=True)
    reader.start()
    try:
        proc.wait_for(lambda: found or child.poll() is not None, timeout=timeout, what="azurite to listen")
        if not found:
            raise RuntimeError(f"azurite exited with {child.returncode}: {bytes(buffered)[-500:]!r}")
        proc.wait_for(lambda: proc.port_open(found[0]), timeout=timeout, what="azurite port")
    except BaseException:
        proc.stop(child)
        raise
    return Azurite(proc=child, port=found[0], location=location, _drain=reader)


def container_sas(container: str, permissions: str = "rl", hours: int = 4) -> str:
    """Service SAS for a container, per the documented string-to-sign of version 2020-12-06."""
    now = dt.datetime.now(dt.UTC)
    start_s = (now - dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    expiry = (now + dt.timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")
    version = "2020-12-06"
    fields = [
        permissions,
        start_s,
        expiry,
        f"/blob/{ACCOUNT}/{container}",
        "",  # signed identifier
        "",  # IP
        "http,https",
        version,
        "c",  # resource: container
        "",  # snapshot time
        "",  # encryption scope
        "",  # rscc
        "",  # rscd
        "",  # rsce
        "",  # rscl
        "",  # rsct
    ]
    sig = base64.b64encode(
        hmac.new(base64.b64decode(ACCOUNT_KEY), "\n".join(fields).encode(), hashlib.sha256).digest()
    ).decode()
    query = {
        "sv": version,
        "st": start_s,
        "se": expiry,
        "sr": "c",
        "sp": permissions,
        "spr": "http,https",
        "sig": sig,
    }
    return urllib.parse.urlencode(query)


# --- raw REST helpers for seeding test data (hostile names need raw percent-encoded paths) ---------


def _shared_key_auth(method: str, path: str, headers: dict[str, str], length: int) -> str:
    """SharedKey signature (only used to create containers)."""
    parsed = urllib.parse.urlsplit(path)
    canon_headers = "".join(f"{k}:{headers[k]}\n" for k in sorted(headers) if k.startswith("x-ms-"))
    canon_resource = f"/{ACCOUNT}{urllib.parse.unquote(parsed.path)}"
    for k, v in sorted(urllib.parse.parse_qsl(parsed.query)):
        canon_resource += f"\n{k.lower()}:{v}"
    content_length = str(length) if length else ""
    to_sign = "\n".join(
        [method, "", "", content_length, "", headers.get("Content-Type", ""), "", "", "", "", "", ""]
    )
    to_sign += "\n" + canon_headers + canon_resource
    sig = base64.b64encode(
        hmac.new(base64.b64decode(ACCOUNT_KEY), to_sign.encode(), hashlib.sha256).digest()
    ).decode()
    return f"SharedKey {ACCOUNT}:{sig}"


def _request(port: int, method: str, path: str, body: bytes, *, _shared_key: bool = False) -> int:
    headers = {
        "x-ms-version": "2021-12-02",
        "x-ms-date": dt.datetime.now(dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT"),
    }
    if _shared_key:
        headers["Authorization"] = _shared_key_auth(method, path, headers, len(body))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


class RawClient:
    """One keep-alive connection doing raw Put/Delete Blob over a container SAS URL."""

    def __init__(self, sas_url: str) -> None:
        parts = urllib.parse.urlsplit(sas_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path.rstrip("/")
        self.query = parts.query
        self.conn: http.client.HTTPConnection | None = None

    def _do(self, method: str, encoded_name: str, body: bytes, headers: dict[str, str]) -> int:
        for attempt in range(3):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                self.conn.connect()
                assert self.conn.sock is not None
                self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self.conn.request(
                    method, f"{self.path}/{encoded_name}?{self.query}", body=body, headers=headers
                )
                resp = self.conn.getresponse()
                resp.read()
                return resp.status
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")

    def put(self, name: str, data: bytes, *, encoded: str | None = None) -> None:
        """Upload `data` as block blob `name`; `encoded` gives the exact URL path to send instead
        (used for names the SDK would normalise, like `a/../x`)."""
        path = encoded if encoded is not None else urllib.parse.quote(name, safe="/")
        status = self._do("PUT", path, data, {"x-ms-blob-type": "BlockBlob", "x-ms-version": "2021-12-02"})
        if status != 201:
            raise RuntimeError(f"put {name!r}: HTTP {status}")

    def delete(self, name: str) -> None:
        status = self._do("DELETE", urllib.parse.quote(name, safe="/"), b"", {"x-ms-version": "2021-12-02"})
        if status not in (202, 404):
            raise RuntimeError(f"delete {name!r}: HTTP {status}")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def seed(sas_url: str, blobs: Iterable[tuple[str, bytes]], *, threads: int = 8) -> int:
    """Upload many blobs in parallel over keep-alive connections; returns the count."""
    items = list(blobs)
    lock = threading.Lock()
    it = iter(items)
    errors: list[BaseException] = []

    def work() -> None:
        client = RawClient(sas_url)
        try:
            while not errors:
                with lock:
                    item = next(it, None)
                if item is None:
                    return
                client.put(item[0], item[1])
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return len(items)


def delete_many(sas_url: str, names: Iterable[str]) -> None:
    client = RawClient(sas_url)
    try:
        for name in names:
            client.delete(name)
    finally:
        client.close()


def main() -> None:
    """Run an in-memory Azurite in the foreground for manual experiments."""
    az = start()
    print(f"azurite on port {az.port}\nconnection string: {az.connection_string}", flush=True)
    try:
        az.proc.wait()
    except KeyboardInterrupt:
        az.stop()


if __name__ == "__main__":
    main()
