"""The edge node's HTTP fetcher (``clients/edge/fetcher.py``) against the release server's own
request handler on loopback: one connection for a sync's requests (the 404 included), tuf's
length check still applies, and every failure keeps tuf's meaning."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from tuf.api import exceptions as tuf_errors

from fedgate.clients.edge.fetcher import ConnectionFetcher, fetcher_for
from fedgate.server.release.serve import _Handler


class _Counting(_Handler):
    """The release server's handler, recording each request's client port."""

    ports: ClassVar[list[int]] = []

    def parse_request(self) -> bool:
        type(self).ports.append(self.client_address[1])
        return super().parse_request()


class _Closing(_Counting):
    """A server that closes the connection after every response (HTTP/1.0)."""

    protocol_version = "HTTP/1.0"


def _serve(root: Path, handler: type) -> tuple[ThreadingHTTPServer, str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "metadata").mkdir()
    (tmp_path / "targets").mkdir()
    (tmp_path / "metadata" / "timestamp.json").write_bytes(b'{"signed": {}}')
    (tmp_path / "targets" / "student.onnx").write_bytes(bytes(range(256)) * 40)
    yield tmp_path


def _stop(httpd: ThreadingHTTPServer) -> None:
    httpd.shutdown()
    httpd.server_close()


def test_a_sync_s_requests_share_one_connection_404_included(repo: Path) -> None:
    _Counting.ports = []
    httpd, url = _serve(repo, _Counting)
    fetcher = ConnectionFetcher(url, user_agent="test")
    try:
        with pytest.raises(tuf_errors.DownloadHTTPError) as err:
            fetcher.download_bytes(f"{url}/metadata/2.root.json", 1000)
        assert err.value.status_code == 404
        assert fetcher.download_bytes(f"{url}/metadata/timestamp.json", 1000) == b'{"signed": {}}'
        data = fetcher.download_bytes(f"{url}/targets/student.onnx", 10_240)
        assert data == bytes(range(256)) * 40
        with fetcher.download_file(f"{url}/targets/student.onnx", 10_240) as fh:
            assert fh.read() == data
        assert len(_Counting.ports) == 4 and len(set(_Counting.ports)) == 1
        # tuf's length limit still holds through this fetcher
        with pytest.raises(tuf_errors.DownloadLengthMismatchError):
            fetcher.download_bytes(f"{url}/targets/student.onnx", 10_239)
        with pytest.raises(tuf_errors.DownloadError, match="not on the release server"):
            fetcher.download_bytes("http://127.0.0.2:1/metadata/timestamp.json", 10)
    finally:
        fetcher.close()
        _stop(httpd)


def test_a_server_that_closes_each_connection_is_followed(repo: Path) -> None:
    _Closing.ports = []
    httpd, url = _serve(repo, _Closing)
    fetcher = ConnectionFetcher(url, user_agent="test")
    try:
        for _ in range(3):
            assert fetcher.download_bytes(f"{url}/metadata/timestamp.json", 100)
        with pytest.raises(tuf_errors.DownloadHTTPError):
            fetcher.download_bytes(f"{url}/metadata/2.root.json", 1000)
        assert fetcher.download_bytes(f"{url}/metadata/timestamp.json", 100)
        assert len(set(_Closing.ports)) == 5
    finally:
        fetcher.close()
        _stop(httpd)


def test_a_server_that_cannot_be_reached_is_a_slow_retrieval() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(tuf_errors.SlowRetrievalError, match="refused"):
        ConnectionFetcher(url, user_agent="t").download_bytes(f"{url}/metadata/timestamp.json", 9)


def test_a_proxy_uses_tuf_s_own_fetcher(monkeypatch: pytest.MonkeyPatch) -> None:
    from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert isinstance(fetcher_for("http://releases.example:8080", "t"), ConnectionFetcher)
    monkeypatch.setenv("http_proxy", "http://proxy.example:3128")
    assert isinstance(fetcher_for("http://releases.example:8080", "t"), Urllib3Fetcher)
    with pytest.raises(ValueError, match="not an http"):
        ConnectionFetcher("ftp://x", user_agent="t")
