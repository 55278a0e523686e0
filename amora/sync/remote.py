"""The Blob service REST calls the sync needs (List Blobs, Get Blob) over a container SAS.

Why not the SDK's clients for the data path: its per-request pipeline costs ~6 ms CPU per blob and
its listing parser ~0.4 ms per entry, which made a plain SDK sync 2-4x slower than rclone. Here
each worker thread keeps one keep-alive connection (amora.sync.http11, not http.client: see there)
and does one GET per blob; listings are parsed with the C ElementTree's pull parser, one blob at a
time. The SDK is still used where it is the
reference: turning a connection string with an account key into a short-lived read/list container
SAS (imported only then).

Error texts never contain the SAS query or the account key: only scheme, host and path.
"""

from __future__ import annotations

import datetime as dt
import html
import http.client
import random
import socket
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from amora.sync import http11

API_VERSION = "2021-12-02"
LIST_PAGE = 5000
LIST_CHUNK = 64 * 1024
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RemoteBlob:
    name: str
    etag: str  # unquoted
    size: int
    md5: str | None  # base64, as the service stores it


@dataclass(frozen=True, slots=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    container_path: str  # "/account/container" (percent-encoded as sent)
    sas: str  # the query string, without "?"

    def describe(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.container_path}"


class RemoteError(Exception):
    """The run cannot continue (service unreachable, access denied, bad source); safe to show."""


class BlobSkipped(Exception):
    """This blob cannot be fetched now (gone, changed during the run); str() is the reason."""


class Stopped(Exception):
    """The run was asked to stop."""


def endpoint_from_sas_url(url: str) -> Endpoint:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RemoteError("container_url must be an http(s) URL")
    path = parts.path.rstrip("/")
    if not path or path == "/":
        raise RemoteError("container_url has no container in its path")
    if not parts.query:
        raise RemoteError("container_url has no SAS token (query string)")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Endpoint(parts.scheme, parts.hostname, port, path, parts.query)


def endpoint_from_connection_string(conn: str, container: str) -> Endpoint:
    """Parse with the SDK (the reference for all the connection string variants) and, for an account
    key, sign a container SAS good for one day with read+list only."""
    from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

    try:
        svc = BlobServiceClient.from_connection_string(conn)
    except Exception:  # the SDK's message may quote the string itself: do not chain it
        raise RemoteError("connection_string could not be parsed") from None
    account_url = svc.url.split("?", 1)[0].rstrip("/")
    quoted = urllib.parse.quote(container, safe="")
    credential = svc.credential
    key = getattr(credential, "account_key", None)
    if key:
        now = dt.datetime.now(dt.UTC)
        sas = generate_container_sas(
            svc.account_name or "",
            container,
            account_key=key,
            permission=ContainerSasPermissions(read=True, list=True),
            start=now - dt.timedelta(minutes=15),
            expiry=now + dt.timedelta(days=1),
        )
    else:
        sas = urllib.parse.urlsplit(svc.url).query
        if not sas:
            raise RemoteError("connection_string has neither AccountKey nor SharedAccessSignature")
    return endpoint_from_sas_url(f"{account_url}/{quoted}?{sas}")


@dataclass(frozen=True, slots=True)
class Tuning:
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    retries: int = 3  # per request, before the whole run is abandoned
    backoff: float = 0.25  # seconds, doubled per retry (0.25 + 0.5 + 1: a dead service fails in ~2 s)


class Connection:
    """One keep-alive HTTP(S) connection, owned by one thread. `abort()` may be called from any thread
    to break a blocked read (used when the run is stopped)."""

    def __init__(self, ep: Endpoint, tuning: Tuning, stop: threading.Event) -> None:
        self.ep = ep
        self.tuning = tuning
        self.stop = stop
        tls: Any = None
        if ep.scheme == "https":
            import ssl  # only for https: it costs start-up time and memory

            tls = ssl.create_default_context()
        self._http = http11.Connection(
            ep.host, ep.port, timeout=tuning.connect_timeout, read_timeout=tuning.read_timeout, tls=tls
        )

    def abort(self) -> None:
        self._http.abort()

    def close(self) -> None:
        self._http.close()

    def get(self, path_query: str, headers: dict[str, str], what: str) -> http11.Response:
        """GET with bounded retries on connection faults and 5xx; the caller reads (and must fully
        read or close) the response. Raises RemoteError once retries are spent."""
        headers = {"x-ms-version": API_VERSION, **headers}
        last = ""
        stale_retry = True
        attempt = 0
        while attempt <= self.tuning.retries:
            if self.stop.is_set():
                raise Stopped()
            if attempt:
                delay = self.tuning.backoff * (2 ** (attempt - 1))
                if self.stop.wait(delay * (0.9 + 0.2 * random.random())):
                    raise Stopped()
            reused = self._http.sock is not None
            try:
                resp = self._http.get(path_query, headers)
                if resp.status in _TRANSIENT_STATUS:
                    resp.read()
                    last = f"HTTP {resp.status} {resp.reason}"
                    attempt += 1
                    continue
                return resp
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if self.stop.is_set():
                    raise Stopped() from None
                if reused and stale_retry and isinstance(exc, _STALE):
                    # A kept-alive connection the server had already closed: not a fault, so
                    # reconnect at once, without a backoff or an attempt spent (once per request).
                    stale_retry = False
                    continue
                last = _describe_exc(exc)
                attempt += 1
        raise RemoteError(
            f"storage service unreachable at {self.ep.describe()} ({what}): {last}; "
            f"gave up after {self.tuning.retries + 1} attempts"
        )


_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def _describe_exc(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | http.client.RemoteDisconnected):
        return "connection reset"
    if isinstance(exc, socket.gaierror):
        return "host name not resolved"
    if type(exc).__module__ == "ssl":
        return f"TLS error ({getattr(exc, 'reason', None) or type(exc).__name__})"
    return type(exc).__name__


def raise_for_status(resp: http11.Response, ep: Endpoint, what: str) -> None:
    """Map a non-2xx final response to RemoteError (run-fatal) or BlobSkipped (this blob only)."""
    if resp.status < 300:
        return
    body = resp.read(4096)
    code = resp.getheader("x-ms-error-code") or ""
    if resp.status in (404, 412, 416) and what != "list":
        raise BlobSkipped(
            "blob disappeared during the sync" if resp.status == 404 else "blob changed during the sync"
        )
    if resp.status == 403:
        raise RemoteError(
            f"access denied by {ep.describe()} ({code or 'HTTP 403'}): the SAS may be expired, "
            "lack read/list permission, or the clock may be wrong"
        )
    if resp.status == 404:
        raise RemoteError(f"container not found: {ep.describe()} ({code or 'HTTP 404'})")
    del body
    raise RemoteError(f"unexpected HTTP {resp.status} {code} from {ep.describe()} ({what})")


def list_blobs(conn: Connection, prefix: str) -> Iterator[RemoteBlob]:
    """All blobs under `prefix` (flat listing, service order), page by page. The next page is
    fetched while the current one is parsed (its marker is read from the raw tail first). A page
    is parsed incrementally, keeping only the four fields the sync needs: a 5,000-blob page is
    ~3 MB of XML but ~16 MB as a whole element tree, which used to set the sync's peak memory."""
    ep = conn.ep

    def fetch(marker: str) -> bytes:
        query = f"restype=container&comp=list&maxresults={LIST_PAGE}"
        if prefix:
            query += "&prefix=" + urllib.parse.quote(prefix, safe="")
        if marker:
            query += "&marker=" + urllib.parse.quote(marker, safe="")
        resp = conn.get(f"{ep.container_path}?{query}&{ep.sas}", {}, "list")
        raise_for_status(resp, ep, "list")
        try:
            return resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            if conn.stop.is_set():
                raise Stopped() from None
            raise RemoteError(f"listing from {ep.describe()} failed: {_describe_exc(exc)}") from None

    body = fetch("")
    while True:
        marker = _next_marker(body)
        ahead: list[bytes | BaseException] = []
        prefetch = None
        if marker:

            def run(m: str = marker, out: list[bytes | BaseException] = ahead) -> None:
                try:
                    out.append(fetch(m))
                except BaseException as exc:
                    out.append(exc)

            prefetch = threading.Thread(target=run, name="sync-list", daemon=True)
            prefetch.start()
        page = _Page(body)
        del body
        try:
            yield from page.blobs()
        except ET.ParseError:
            raise RemoteError(f"listing from {ep.describe()} is not valid XML") from None
        finally:
            if prefetch is not None:
                prefetch.join()  # it uses the connection: let it finish before anyone closes it
        if prefetch is None and not page.next_marker:
            return
        if prefetch is None or page.next_marker != marker:
            # The raw tail and the parsed document disagree (never seen): trust the parser.
            body = fetch(page.next_marker) if page.next_marker else b""
            if not body:
                return
            continue
        result = ahead[0]
        if isinstance(result, BaseException):
            raise result
        body = result


class _Page:
    def __init__(self, body: bytes) -> None:
        self.body: bytes | None = body
        self.next_marker = ""

    def blobs(self) -> Iterator[RemoteBlob]:
        body, self.body = self.body, None
        assert body is not None
        parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(("end",))
        view = memoryview(body)
        for i in range(0, len(view) + 1, LIST_CHUNK):
            if i < len(view):
                parser.feed(view[i : i + LIST_CHUNK])
            else:
                parser.close()
            for event in parser.read_events():
                el = cast("tuple[str, ET.Element]", event)[1]  # "end" events only: always elements
                tag = el.tag
                if tag == "Blob":
                    blob = _parse_blob(el)
                    el.clear()  # finished elements stay in the tree otherwise
                    yield blob
                elif tag == "NextMarker":
                    self.next_marker = el.text or ""


def _next_marker(body: bytes) -> str:
    start = body.rfind(b"<NextMarker>")
    if start < 0:
        return ""
    end = body.find(b"</NextMarker>", start)
    raw = body[start + len(b"<NextMarker>") : end].decode()
    return html.unescape(raw)


def _parse_blob(b: ET.Element) -> RemoteBlob:
    name_el = b.find("Name")
    name = (name_el.text or "") if name_el is not None else ""
    if name_el is not None and name_el.get("Encoded") == "true":
        # The service percent-encodes names holding characters XML cannot carry.
        name = urllib.parse.unquote(name)
    props = b.find("Properties")
    etag = size = md5 = None
    if props is not None:
        etag = props.findtext("Etag")
        size = props.findtext("Content-Length")
        md5 = props.findtext("Content-MD5")
    return RemoteBlob(name=name, etag=(etag or "").strip('"'), size=int(size or 0), md5=md5 or None)


def blob_path(ep: Endpoint, name: str) -> str:
    return f"{ep.container_path}/{urllib.parse.quote(name, safe='/')}?{ep.sas}"
