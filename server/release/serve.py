"""Serving the release repository over plain HTTP (the content is signed; TLS in front is the
deployment's choice), with readiness, and re-signing metadata before it expires.

``serve_releases(home, port)`` is a context manager: a ``ThreadingHTTPServer`` serving only
``metadata/*.json`` and ``targets/**`` files of ``<home>/release/repository`` (no listings),
ready (it has answered its own ``GET metadata/timestamp.json``) when the block starts, and
stopped when it ends. With ``refresh_every`` (seconds) a thread runs ``refresh_repository``.
"""

from __future__ import annotations

import logging
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fedgate.errors import FedgateError, UnavailableError
from fedgate.server.release.repository import ReleaseRepository

log = logging.getLogger(__name__)


class _Handler(SimpleHTTPRequestHandler):
    """Files under ``metadata/`` and ``targets/`` only; no directory listings, no caching of
    the timestamp (the one file whose name stays while its content changes). HTTP/1.1, so a
    node's sync reuses one connection for its few requests."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no delayed-ACK wait

    def send_head(self) -> Any:
        path = self.path.split("?", 1)[0]
        if not (path.startswith("/metadata/") or path.startswith("/targets/")) or path.endswith(
            "/"
        ):
            self.send_error(404, "not found")
            return None
        return super().send_head()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """A 404 keeps the connection open (the base class closes it after every error): each
        refresh asks for the next root version and gets one, then continues on the same
        connection."""
        if code != 404:
            super().send_error(code, message, explain)
            return
        body = b"not found\n"
        self.send_response(code, message)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def end_headers(self) -> None:
        if self.path.endswith("/timestamp.json"):
            self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def list_directory(self, path: Any) -> Any:
        self.send_error(404, "not found")
        return None

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("release server: " + format, *args)


@dataclass(frozen=True)
class ReleaseServer:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _wait_ready(server: ReleaseServer, timeout: float = 10.0) -> None:
    try:
        with urllib.request.urlopen(f"{server.url}/metadata/timestamp.json", timeout=timeout) as r:
            r.read()
    except OSError as exc:
        raise UnavailableError(f"release server at {server.url} did not answer: {exc}") from None


def _refresher(home: Path, every: float, stop: threading.Event) -> None:
    # the signing side (and the coordinator's database) loads only here: serving starts light
    from fedgate.server.release.lifecycle import refresh_repository

    while not stop.wait(every):
        try:
            due = refresh_repository(home)
        except FedgateError as exc:  # keep serving; the next round tries again
            log.warning("release refresh failed: %s", exc)
            continue
        if due:
            log.info("release metadata re-signed: %s", ", ".join(sorted(due)))


@contextmanager
def serve_releases(
    home: Path, port: int = 0, host: str = "127.0.0.1", *, refresh_every: float | None = None
) -> Iterator[ReleaseServer]:
    """Serve ``home``'s release repository on ``host:port`` (0: a free port) while the block
    runs; yields the bound address once the server has answered."""
    repo = ReleaseRepository(home).require()
    handler = partial(_Handler, directory=str(repo.root_dir))
    try:
        httpd = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise UnavailableError(f"cannot serve releases on {host}:{port}: {exc.strerror}") from None
    httpd.daemon_threads = True
    server = ReleaseServer(host, httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, name="release-server", daemon=True)
    stop = threading.Event()
    thread.start()
    refresher = None
    try:
        _wait_ready(server)
        if refresh_every:
            refresher = threading.Thread(
                target=_refresher, args=(Path(home), refresh_every, stop), daemon=True
            )
            refresher.start()
        yield server
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()
        if refresher is not None:
            refresher.join()
