"""The device-facing address of a region: nginx forwarding only Flower's Fleet API.

Flower 1.41 serves the Fleet API (``/v1/fleet/...``), the unauthenticated Control API
(``/v1/control/...``: start runs, register nodes) and the Runtime API (``/v1/runtime/...``)
on one SuperLink port. Devices must never reach the last two, so they connect to this proxy
instead: it terminates TLS with the region's server certificate, forwards exactly the Fleet
routes a SuperNode calls (POST only, as nginx's normalized path, never the raw request line)
to the SuperLink over TLS again (verified against the region CA), answers ``GET /health``
from the SuperLink, and refuses everything else with 403.
With SuperNode authentication on, Fleet self-registration (``register-node``,
``unregister-node``) is refused as well: node keys are registered by the operator.

nginx runs as a managed foreground process with its own prefix, pid, logs and temp paths
under a state directory, on a given port, as root or as an ordinary user.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedgate.atomic_file import write_atomic
from fedgate.errors import UnavailableError

# Fleet routes a SuperNode calls (flwr.supernode.fleet_http_client in Flower 1.41).
FLEET_ROUTES = (
    "activate-node",
    "deactivate-node",
    "send-node-heartbeat",
    "pull-messages",
    "push-messages",
    "get-run",
    "get-fab",
    "push-object",
    "pull-object",
    "confirm-message-received",
)
# Only SuperNodes without an authentication key register themselves through the Fleet API.
SELF_REGISTRATION_ROUTES = ("register-node", "unregister-node")
HEALTH_PATH = "/health"
REFUSAL = "refused: this address serves only the Flower Fleet API"
CONF_NAME = "nginx.conf"


class ProxyError(UnavailableError, RuntimeError):
    """nginx is missing, its configuration is invalid, or the proxy is unhealthy."""


@dataclass(frozen=True)
class ProxySpec:
    """One region's fleet-only proxy.

    ``server_cert``/``server_key``: what devices see (``None`` only with ``--insecure``:
    plain HTTP). ``upstream_ca``: the CA the SuperLink's certificate must chain to, checked
    for ``upstream_name`` (``None``: the SuperLink speaks plain HTTP, ``--insecure``).
    """

    listen_port: int
    upstream: str
    server_cert: Path | None
    server_key: Path | None
    upstream_ca: Path | None
    upstream_name: str = "localhost"
    listen_host: str = "127.0.0.1"
    node_auth: bool = True
    max_body_mb: int = 1024

    def __post_init__(self) -> None:
        if not 1 <= self.listen_port <= 65535:
            raise ProxyError(f"proxy port {self.listen_port} is not in 1..65535")
        if (self.server_cert is None) != (self.server_key is None):
            raise ProxyError("give both the proxy's certificate and key, or neither")
        host, _, port = self.upstream.rpartition(":")
        if not host or not port.isdigit():
            raise ProxyError(f"upstream {self.upstream!r} must be HOST:PORT")
        if self.node_auth and (self.server_cert is None or self.upstream_ca is None):
            raise ProxyError("SuperNode authentication needs TLS on both sides of the proxy")
        if self.max_body_mb < 1:
            raise ProxyError("max_body_mb must be at least 1")

    @property
    def tls(self) -> bool:
        return self.server_cert is not None

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"


@dataclass(frozen=True)
class ProxyPaths:
    """Everything one managed nginx writes, under its own state directory."""

    state_dir: Path

    @property
    def conf(self) -> Path:
        return self.state_dir / CONF_NAME

    @property
    def pid(self) -> Path:
        return self.state_dir / "nginx.pid"

    @property
    def error_log(self) -> Path:
        return self.state_dir / "logs" / "error.log"

    @property
    def access_log(self) -> Path:
        return self.state_dir / "logs" / "access.log"

    @property
    def temp(self) -> Path:
        return self.state_dir / "temp"


def _q(value: object) -> str:
    """An nginx double-quoted string (paths may contain spaces)."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def allowed_routes(node_auth: bool) -> tuple[str, ...]:
    """The ``/v1/fleet/<route>`` names the proxy forwards."""
    return FLEET_ROUTES if node_auth else FLEET_ROUTES + SELF_REGISTRATION_ROUTES


def render_server_block(spec: ProxySpec) -> str:
    """The ``http``-level part (upstream + server): also what compose mounts into nginx."""
    scheme = "https" if spec.upstream_ca is not None else "http"
    routes = "|".join(allowed_routes(spec.node_auth))
    listen = f"{spec.listen_host}:{spec.listen_port}" + (" ssl" if spec.tls else "")
    tls = ""
    if spec.tls:
        tls = (
            f"    ssl_certificate {_q(spec.server_cert)};\n"
            f"    ssl_certificate_key {_q(spec.server_key)};\n"
            "    ssl_protocols TLSv1.2 TLSv1.3;\n"
            "    ssl_session_cache shared:fedgate_fleet:1m;\n"
        )
    upstream_tls = ""
    if spec.upstream_ca is not None:
        upstream_tls = (
            "        proxy_ssl_verify on;\n"
            f"        proxy_ssl_trusted_certificate {_q(spec.upstream_ca)};\n"
            f"        proxy_ssl_name {spec.upstream_name};\n"
            "        proxy_ssl_server_name on;\n"
            "        proxy_ssl_session_reuse on;\n"
        )
    forward = (
        f"        proxy_pass {scheme}://fedgate_superlink$uri;\n"
        "        proxy_http_version 1.1;\n"
        '        proxy_set_header Connection "";\n'
        "        proxy_set_header Host $host;\n"
        "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "        proxy_set_header X-Forwarded-Proto $scheme;\n"
        f"{upstream_tls}"
    )
    return (
        "# Generated by fedgate (fedgate.server.launch.fleet_proxy): "
        "the device-facing address of a\n"
        "# region. Only the Flower Fleet API is forwarded; Control and Runtime APIs are refused.\n"
        "upstream fedgate_superlink {\n"
        f"    server {spec.upstream};\n"
        "    keepalive 16;\n"
        "}\n"
        "\n"
        "server {\n"
        f"    listen {listen};\n"
        "    server_name _;\n"
        f"{tls}"
        f"    client_max_body_size {spec.max_body_mb}m;\n"
        "    proxy_request_buffering off;\n"
        "    proxy_buffering off;\n"
        "    proxy_read_timeout 300s;\n"
        "    proxy_send_timeout 300s;\n"
        "\n"
        f"    location ~ ^/v1/fleet/({routes})$ {{\n"
        "        limit_except POST { deny all; }\n"
        f"{forward}"
        "    }\n"
        "\n"
        f"    location = {HEALTH_PATH} {{\n"
        "        limit_except GET { deny all; }\n"
        f"{forward}"
        "    }\n"
        "\n"
        "    location / {\n"
        "        default_type text/plain;\n"
        f'        return 403 "{REFUSAL}\\n";\n'
        "    }\n"
        "}\n"
    )


def _worker_user() -> str:
    """As root, nginx's workers drop to ``nobody`` (and its group); otherwise no directive."""
    if os.geteuid() != 0:
        return ""
    try:
        user = pwd.getpwnam("nobody")
        group = grp.getgrgid(user.pw_gid).gr_name
    except KeyError:
        return ""
    return f"user {user.pw_name} {group};\n"


def _indent(text: str) -> str:
    return "".join(f"    {line}\n" if line else "\n" for line in text.splitlines())


def render_main_config(spec: ProxySpec, paths: ProxyPaths) -> str:
    """A complete ``nginx.conf`` for a managed foreground nginx under ``paths.state_dir``."""
    temp = paths.temp
    return (
        f"{_worker_user()}"
        "daemon off;\n"
        "master_process on;\n"
        "worker_processes 1;\n"
        f"pid {_q(paths.pid)};\n"
        f"error_log {_q(paths.error_log)} warn;\n"
        "events {\n    worker_connections 512;\n}\n"
        "http {\n"
        "    server_tokens off;\n"
        f"    access_log {_q(paths.access_log)};\n"
        f"    client_body_temp_path {_q(temp / 'client_body')};\n"
        f"    proxy_temp_path {_q(temp / 'proxy')};\n"
        f"    fastcgi_temp_path {_q(temp / 'fastcgi')};\n"
        f"    uwsgi_temp_path {_q(temp / 'uwsgi')};\n"
        f"    scgi_temp_path {_q(temp / 'scgi')};\n" + _indent(render_server_block(spec)) + "}\n"
    )


def write_config(spec: ProxySpec, state_dir: Path) -> ProxyPaths:
    """Write ``nginx.conf`` and create the directories nginx needs; returns the paths."""
    paths = ProxyPaths(Path(state_dir).resolve())
    for directory in (paths.state_dir, paths.error_log.parent, paths.temp):
        directory.mkdir(parents=True, exist_ok=True)
    write_atomic(paths.conf, render_main_config(spec, paths))
    return paths


def nginx_binary() -> str:
    """The nginx executable (PATH, then /usr/sbin); ``ProxyError`` with the fix if absent."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise ProxyError(
            "nginx not found: install it (`apt-get install -y nginx`, or run .ci/nginx.sh); "
            "fedgate uses it as the fleet-only proxy in front of each SuperLink"
        )
    return found


def start_command(paths: ProxyPaths, nginx: str | None = None) -> list[str]:
    """The foreground nginx command line (stop it with SIGTERM or SIGQUIT)."""
    return [
        nginx or nginx_binary(),
        "-p", str(paths.state_dir),
        "-c", str(paths.conf),
        "-e", str(paths.error_log),
    ]  # fmt: skip


def check_config(
    paths: ProxyPaths,
    nginx: str | None = None,
    timeout: float = 30.0,
    wrap: Callable[[list[str]], list[str]] | None = None,
) -> None:
    """``nginx -t`` on the written config (run through ``wrap``: on the proxy's host);
    ``ProxyError`` with nginx's own words if invalid."""
    cmd = [*start_command(paths, nginx), "-t", "-q"]
    cmd = cmd if wrap is None else wrap(cmd)
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProxyError(f"cannot run {cmd[0]}: {exc}") from None
    if res.returncode != 0:
        raise ProxyError(f"nginx rejected {paths.conf}: {(res.stderr or res.stdout).strip()}")


def health_url(spec: ProxySpec, host: str | None = None) -> str:
    scheme = "https" if spec.tls else "http"
    return f"{scheme}://{host or spec.listen_host}:{spec.listen_port}{HEALTH_PATH}"


def healthy(
    spec: ProxySpec, ca: Path | None, host: str | None = None, timeout: float = 2.0
) -> bool:
    """Whether the proxy answers ``GET /health`` with 200, i.e. nginx and the SuperLink are up.

    With TLS the proxy's certificate is verified against ``ca`` for the name or address used.
    """
    context = None
    if spec.tls:
        if ca is None:
            raise ProxyError("a TLS proxy's health check needs the region CA file")
        context = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(health_url(spec, host), timeout=timeout, context=context) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False
