"""Run a region's enrollment service: its settings from a fedgate home, HTTPS with uvicorn.

The service presents the region's server certificate (``<home>/regions/<r>/tls/server.pem``,
issued by the region CA, the one a device pins from its token) and reaches the SuperLink's
operator address to register node keys. ``fedgate up`` starts it as ``enroll-<region>``;
``fedgate region enrollment-service`` runs it in the foreground (compose.yaml does).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from fedgate.crypto import public_bytes, read_public_key
from fedgate.enrollment_wire import EnrollToken, ca_fingerprint
from fedgate.server.audit.keys import region_pub_path
from fedgate.server.trust.enroll_service import (
    DEFAULT_BURST,
    DEFAULT_RATE,
    RELEASE_ROOT,
    ServiceSettings,
    ca_der,
    create_app,
)
from fedgate.server.trust.enrollment import EnrollmentError, region_registry
from fedgate.server.trust.node_auth import ControlTarget
from fedgate.server.trust.pki import region_tls


def service_url(host: str, port: int) -> str:
    return f"https://{host}:{port}"


def service_settings(
    home: Path,
    region: str,
    *,
    fleet_address: str,
    public_url: str,
    superlink: str | None,
    db: str | None = None,
    rate: float = DEFAULT_RATE,
    burst: int = DEFAULT_BURST,
) -> ServiceSettings:
    """The service of ``region`` under ``home``; ``superlink``: its operator address (node
    keys are registered there, trusting the region CA), None for a fleet without TLS."""
    tls = region_tls(home, region)
    if not tls.exists():
        raise EnrollmentError(
            f"region {region} has no TLS material under {tls.directory}; run `fedgate region "
            f"init --region {region}` (or `fedgate up`) first"
        )
    registry = region_registry(home, region, db, create=False)
    control = None if superlink is None else ControlTarget(superlink, tls.ca_cert)
    return ServiceSettings(
        registry=registry,
        ca_pem=tls.ca_cert.read_bytes(),
        region_server_key=public_bytes(read_public_key(region_pub_path(home, region))),
        fleet_address=fleet_address,
        public_url=public_url,
        control=control,
        # the operator's copy for this region, else the home's own release repository
        release_roots=(
            Path(home) / "regions" / region / RELEASE_ROOT,
            Path(home) / "release" / "metadata",  # release.keys.release_dir (release uses trust)
        ),
        rate=rate,
        burst=burst,
    )


def network_token(home: Path, region: str, url: str, secret: str, expires_at: float) -> str:
    """The one string a device owner is given: ``url``, the region CA's pin, the region,
    the expiry and the one-time ``secret``."""
    pem = region_tls(home, region).ca_cert
    if not pem.is_file():
        raise EnrollmentError(f"no region CA at {pem}: the region has no TLS set up")
    pin = ca_fingerprint(ca_der(pem.read_bytes()))
    return EnrollToken(url, pin, region, expires_at, secret).encode()


def serve(
    settings: ServiceSettings, home: Path, host: str, port: int, *, log_level: str = "warning"
) -> None:
    """Serve the service on ``host:port`` with the region's server certificate until stopped
    (SIGINT/SIGTERM: uvicorn shuts down gracefully)."""
    import uvicorn

    tls = region_tls(home, settings.region)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        ssl_certfile=str(tls.server_cert),
        ssl_keyfile=str(tls.server_key),
        ssl_version=ssl.PROTOCOL_TLS_SERVER,
        log_level=log_level,
        ws="none",  # HTTP only
        timeout_keep_alive=5,
        limit_concurrency=256,
        h11_max_incomplete_event_size=16 * 1024,
    )


def service_healthy(port: int, ca: Path, host: str = "127.0.0.1") -> bool:
    """Whether the service answers ``/health`` over TLS trusting the region CA."""
    import httpx

    try:
        res = httpx.get(f"{service_url(host, port)}/health", verify=ssl.create_default_context(
            cafile=str(ca)), timeout=2.0)  # fmt: skip
    except httpx.HTTPError:
        return False
    return res.status_code == 200
