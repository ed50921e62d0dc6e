"""The HTTP fetcher an edge node's ``tuf.ngclient.Updater`` downloads through: one persistent
``http.client`` connection to the release server for the whole sync.

A sync makes five requests (the next root, which is usually a 404, the timestamp, snapshot,
targets and the student). tuf's default ``Urllib3Fetcher`` closes its connection after the 404
and spends about as long in urllib3's pool and retry layers per request as the server takes to
answer; this fetcher sends them all on one keep-alive connection. The bytes are kept in memory
(tuf's own ``download_file`` writes every download, even a metadata file of a few hundred
bytes, to a temporary file first): up to ``SPOOL_BYTES`` for a file, spilled to a temporary
file beyond. It only moves bytes: lengths, digests, signatures and versions are checked by
``tuf.ngclient`` exactly as before, and the maximum length is enforced as tuf's
``FetcherInterface`` enforces it (``DownloadLengthMismatchError`` once it is exceeded).

Errors keep tuf's meaning: an HTTP status >= 400 is ``DownloadHTTPError``; a connection that
cannot be made, or a server silent for ``socket_timeout`` seconds, is ``SlowRetrievalError``
(as urllib3 reports both). Where a proxy applies to the server (``*_proxy`` variables), tuf's
own ``Urllib3Fetcher`` is used instead, so proxies work as they did.
"""

from __future__ import annotations

import http.client
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO
from urllib.parse import urlsplit

from tuf.api import exceptions as tuf_errors
from tuf.ngclient.fetcher import FetcherInterface

CHUNK = 400_000  # tuf's default chunk size
MAX_ERROR_BODY = 64 * 1024  # an error body longer than this closes the connection instead
SPOOL_BYTES = 32 * 1024 * 1024  # a download up to this size stays in memory


class ConnectionFetcher(FetcherInterface):
    """Fetch ``http(s)://host[:port]/...`` URLs of one server over one reused connection."""

    def __init__(self, base_url: str, *, socket_timeout: float = 30.0, user_agent: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._scheme, self._netloc = parts.scheme, parts.netloc
        self._host, self._port = parts.hostname, parts.port
        self._timeout = socket_timeout
        self._headers = {"User-Agent": user_agent, "Accept-Encoding": "identity"}
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        # http.client sets TCP_NODELAY on connecting: a request is one write, sent at once
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _response(self, path: str) -> http.client.HTTPResponse:
        """Send ``GET path``; a kept-alive connection the server has meanwhile closed is
        reopened once (the request had not been answered, so repeating it is safe)."""
        for attempt in (0, 1):
            reused = self._conn is not None
            if self._conn is None:
                self._conn = self._connect()
            try:
                self._conn.request("GET", path, headers=self._headers)
                return self._conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if not reused or attempt:
                    raise tuf_errors.SlowRetrievalError(f"GET {path}: {exc}") from exc
            except TimeoutError as exc:
                self.close()
                raise tuf_errors.SlowRetrievalError(f"GET {path}: timed out") from exc
            except OSError as exc:
                self.close()
                raise tuf_errors.SlowRetrievalError(f"GET {path}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _fetch(self, url: str) -> Iterator[bytes]:
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc) != (self._scheme, self._netloc):
            raise tuf_errors.DownloadError(f"{url} is not on the release server {self._netloc}")
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        response = self._response(path)
        if response.status >= 400:
            length = response.getheader("Content-Length", "")
            if length.isdigit() and int(length) <= MAX_ERROR_BODY and not response.will_close:
                response.read()  # the connection stays usable for the next request
            else:
                self.close()
            raise tuf_errors.DownloadHTTPError(
                f"HTTP error occurred with status {response.status}", response.status
            )
        return self._chunks(response)

    def _chunks(self, response: http.client.HTTPResponse) -> Iterator[bytes]:
        try:
            while chunk := response.read(CHUNK):
                yield chunk
        except TimeoutError as exc:
            self.close()
            raise tuf_errors.SlowRetrievalError("the release server stopped sending") from exc
        except (http.client.HTTPException, OSError) as exc:
            self.close()
            raise tuf_errors.DownloadError(f"download cut short: {exc}") from exc
        finally:
            if response.will_close or not response.isclosed():
                self.close()  # unread data or a server that closes: start afresh next time

    def _limited(self, url: str, max_length: int) -> Iterator[bytes]:
        """The chunks of ``url``; ``DownloadLengthMismatchError`` past ``max_length`` bytes."""
        received = 0
        for chunk in self.fetch(url):
            received += len(chunk)
            if received > max_length:
                raise tuf_errors.DownloadLengthMismatchError(
                    f"Downloaded {received} bytes exceeding the maximum allowed length of "
                    f"{max_length}"
                )
            yield chunk

    @contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO]:
        """As ``FetcherInterface.download_file``, the content in memory up to ``SPOOL_BYTES``."""
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            for chunk in self._limited(url, max_length):
                spool.write(chunk)
            spool.seek(0)
            yield spool

    def download_bytes(self, url: str, max_length: int) -> bytes:
        """As ``FetcherInterface.download_bytes``, with no temporary file."""
        return b"".join(self._limited(url, max_length))


def fetcher_for(base_url: str, user_agent: str) -> FetcherInterface:
    """The fetcher for ``base_url``: one kept-alive connection, or tuf's own through a proxy."""
    parts = urlsplit(base_url)
    host, scheme = parts.hostname or "", parts.scheme
    proxies = urllib.request.getproxies()
    if (scheme in proxies or "all" in proxies) and not urllib.request.proxy_bypass(host):
        from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

        return Urllib3Fetcher(app_user_agent=user_agent)
    return ConnectionFetcher(base_url, user_agent=user_agent)
