"""The fleet-only proxy: a real nginx in front of a recording TLS upstream.

The upstream stands in for a SuperLink: it records every request that reaches it, so the
tests can assert that Control and Runtime routes never get past nginx, and that Fleet routes
(and large bodies) do.
"""

from __future__ import annotations

import http.client
import os
import signal
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fedgate.server.launch import fleet_proxy
from fedgate.server.launch.fleet_proxy import (
    FLEET_ROUTES,
    SELF_REGISTRATION_ROUTES,
    ProxyError,
    ProxySpec,
    check_config,
    healthy,
    nginx_binary,
    render_server_block,
    start_command,
    write_config,
)
from fedgate.server.launch.processes import ProcessTable, alive, free_port_block, wait_until
from fedgate.server.trust.pki import RegionTls, ensure_region_pki

CONTROL_ROUTES = ("start-run", "register-node", "unregister-node", "list-nodes", "stop-run")
RUNTIME_ROUTES = ("acquire-task", "pull-task-input", "push-messages", "get-nodes")


@dataclass
class Upstream:
    """A TLS HTTP server recording (method, path, body length) of what reaches it."""

    port: int
    seen: list[tuple[str, str, int]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None


def _start_upstream(tls: RegionTls, port: int) -> Upstream:
    upstream = Upstream(port)

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length) if length else b""
            upstream.seen.append((self.command, self.path, len(body)))
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls.server_cert, tls.server_key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    upstream.server = server
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return upstream


@dataclass
class Proxy:
    spec: ProxySpec
    tls: RegionTls
    upstream: Upstream
    table: ProcessTable
    paths: fleet_proxy.ProxyPaths


def _start_proxy(tmp: Path, spec: ProxySpec, tls: RegionTls, upstream: Upstream) -> Proxy:
    paths = write_config(spec, tmp / "proxy")
    check_config(paths)
    table = ProcessTable(tmp / "home")
    proc = table.start("fleet-proxy", start_command(paths), {})
    wait_until(lambda: healthy(spec, tls.ca_cert), 30, "fleet proxy", proc.log, proc.pid)
    return Proxy(spec, tls, upstream, table, paths)


def _stop(proxy: Proxy) -> None:
    pids = [p.pid for p in proxy.table.load()]
    proxy.table.stop_all()
    assert pids and not any(alive(pid) for pid in pids), "nginx is still running"
    assert proxy.upstream.server is not None
    proxy.upstream.server.shutdown()
    proxy.upstream.server.server_close()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    nginx_binary()  # fail with the install hint, not a confusing error, if nginx is absent
    tls = ensure_region_pki(tmp_path, "eu").tls
    base = free_port_block(2)
    upstream = _start_upstream(tls, base)
    spec = ProxySpec(base + 1, f"127.0.0.1:{base}", tls.server_cert, tls.server_key, tls.ca_cert)
    running = _start_proxy(tmp_path, spec, tls, upstream)
    try:
        yield running
    finally:
        _stop(running)


def _request(
    proxy: Proxy, method: str, path: str, body: bytes = b"", host: str = "127.0.0.1"
) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=str(proxy.tls.ca_cert))
    conn = http.client.HTTPSConnection(host, proxy.spec.listen_port, context=ctx, timeout=10)
    try:
        conn.request(method, path, body=body or None)
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


def _upstream_paths(proxy: Proxy) -> set[str]:
    return {path for _, path, _ in proxy.upstream.seen}


def test_every_fleet_route_is_forwarded_over_verified_tls(proxy):
    for route in FLEET_ROUTES:
        status, body = _request(proxy, "POST", f"/v1/fleet/{route}", b"\x08\x01")
        assert (status, body) == (200, b"ok"), route
    assert _upstream_paths(proxy) == {f"/v1/fleet/{r}" for r in FLEET_ROUTES} | {"/health"}


@pytest.mark.parametrize(
    "path",
    [
        *(f"/v1/control/{r}" for r in CONTROL_ROUTES),
        *(f"/v1/runtime/{r}" for r in RUNTIME_ROUTES),
        *(f"/v1/fleet/{r}" for r in SELF_REGISTRATION_ROUTES),
        "/v1/fleet/../control/start-run",
        "/v1/fleet/pull-messages/../../control/start-run",
        "/v1/fleet/%2e%2e/control/start-run",
        "/v1/fleet/pull-messages/extra",
        "/V1/FLEET/pull-messages",
        "/docs",
        "/openapi.json",
        "/",
    ],
)
def test_everything_else_is_refused_and_never_reaches_the_superlink(proxy, path):
    status, body = _request(proxy, "POST", path, b"\x08\x01")
    assert status in (400, 403), (path, status)
    if status == 403:
        assert b"only the Flower Fleet API" in body
    assert _upstream_paths(proxy) <= {"/health"}


def test_the_superlink_sees_the_normalized_path_not_the_raw_one(proxy):
    status, _ = _request(proxy, "POST", "/v1/control/../fleet//pull-messages?x=1", b"\x08\x01")
    assert status == 200
    assert _upstream_paths(proxy) == {"/v1/fleet/pull-messages", "/health"}


def test_fleet_routes_accept_only_post(proxy):
    for method in ("GET", "PUT", "DELETE"):
        status, _ = _request(proxy, method, "/v1/fleet/pull-messages")
        assert status == 403, method
    assert _upstream_paths(proxy) <= {"/health"}


def test_large_update_bodies_pass(proxy):
    size = 3 * 1024 * 1024  # above nginx's 1 MiB default limit
    status, _ = _request(proxy, "POST", "/v1/fleet/push-object", b"\0" * size)
    assert status == 200
    assert ("POST", "/v1/fleet/push-object", size) in proxy.upstream.seen


def test_devices_verify_the_proxy_certificate_by_name_and_address(proxy):
    assert _request(proxy, "POST", "/v1/fleet/get-run", host="localhost")[0] == 200
    ctx = ssl.create_default_context()  # the system trust store does not know the region CA
    conn = http.client.HTTPSConnection("127.0.0.1", proxy.spec.listen_port, context=ctx)
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("POST", "/v1/fleet/get-run")
    conn.close()


def test_plain_http_to_the_device_address_is_refused(proxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.spec.listen_port, timeout=10)
    try:
        conn.request("POST", "/v1/fleet/pull-messages", body=b"\x08\x01")
        res = conn.getresponse()
        assert res.status == 400
        assert b"plain HTTP request was sent to HTTPS port" in res.read()
    finally:
        conn.close()
    assert "/v1/fleet/pull-messages" not in _upstream_paths(proxy)


def test_health_fails_while_the_superlink_is_down(proxy):
    assert healthy(proxy.spec, proxy.tls.ca_cert)
    assert proxy.upstream.server is not None
    proxy.upstream.server.shutdown()
    proxy.upstream.server.server_close()
    assert not healthy(proxy.spec, proxy.tls.ca_cert)
    proxy.upstream.server = _start_upstream(proxy.tls, proxy.upstream.port).server


def test_upstream_with_a_certificate_from_another_ca_is_not_trusted(tmp_path):
    tls = ensure_region_pki(tmp_path / "eu", "eu").tls
    rogue = ensure_region_pki(tmp_path / "rogue", "eu").tls
    base = free_port_block(2)
    upstream = _start_upstream(rogue, base)  # a SuperLink impostor
    spec = ProxySpec(base + 1, f"127.0.0.1:{base}", tls.server_cert, tls.server_key, tls.ca_cert)
    paths = write_config(spec, tmp_path / "proxy")
    table = ProcessTable(tmp_path / "home")
    proc = table.start("fleet-proxy", start_command(paths), {})
    proxy = Proxy(spec, tls, upstream, table, paths)
    try:
        wait_until(lambda: _listening(proxy), 30, "fleet proxy", proc.log, proc.pid)
        assert not healthy(spec, tls.ca_cert)
        status, _ = _request(proxy, "POST", "/v1/fleet/pull-messages", b"\x08\x01")
        assert status == 502
        assert upstream.seen == []
    finally:
        _stop(proxy)


def _listening(proxy: Proxy) -> bool:
    try:
        _request(proxy, "GET", "/")
    except OSError:
        return False
    return True


def test_stop_with_sigterm_leaves_no_nginx_behind(tmp_path):
    tls = ensure_region_pki(tmp_path, "eu").tls
    base = free_port_block(2)
    upstream = _start_upstream(tls, base)
    spec = ProxySpec(base + 1, f"127.0.0.1:{base}", tls.server_cert, tls.server_key, tls.ca_cert)
    proxy = _start_proxy(tmp_path, spec, tls, upstream)
    master = proxy.table.load()[0].pid
    assert proxy.paths.pid.read_text().strip() == str(master)
    os.kill(master, signal.SIGTERM)
    wait_until(lambda: not alive(master), 15, "nginx stop")
    _stop(proxy)


def test_render_lists_only_fleet_routes(tmp_path):
    tls = ensure_region_pki(tmp_path, "eu").tls
    spec = ProxySpec(8443, "superlink:9093", tls.server_cert, tls.server_key, tls.ca_cert)
    text = render_server_block(spec)
    assert "/v1/control" not in text and "/v1/runtime" not in text
    assert "register-node" not in text
    assert "proxy_ssl_verify on;" in text and "proxy_ssl_name localhost;" in text
    open_spec = ProxySpec(8080, "superlink:9093", None, None, None, node_auth=False)
    assert "|register-node|unregister-node)$" in render_server_block(open_spec)
    assert " ssl;" not in render_server_block(open_spec)


def test_config_for_missing_certificates_is_rejected_by_nginx(tmp_path):
    spec = ProxySpec(
        8443, "127.0.0.1:9093", tmp_path / "nope.pem", tmp_path / "nope.key", tmp_path / "ca.pem"
    )
    paths = write_config(spec, tmp_path / "proxy")
    with pytest.raises(ProxyError, match=r"nginx rejected .*nope\.pem"):
        check_config(paths)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"listen_port": 0}, "not in 1..65535"),
        ({"upstream": "superlink"}, "HOST:PORT"),
        ({"server_key": None}, "both the proxy's certificate and key"),
        ({"upstream_ca": None}, "needs TLS on both sides"),
        ({"max_body_mb": 0}, "at least 1"),
    ],
)
def test_spec_errors_are_clear(tmp_path, kwargs, message):
    base = {
        "listen_port": 8443,
        "upstream": "127.0.0.1:9093",
        "server_cert": tmp_path / "s.pem",
        "server_key": tmp_path / "s.key",
        "upstream_ca": tmp_path / "ca.pem",
    }
    with pytest.raises(ProxyError, match=message):
        ProxySpec(**{**base, **kwargs})


def test_missing_nginx_names_the_fix(monkeypatch):
    monkeypatch.setattr(fleet_proxy.shutil, "which", lambda *a, **k: None)
    with pytest.raises(ProxyError, match=r"apt-get install -y nginx.*\.ci/nginx\.sh"):
        nginx_binary()
