"""Helpers for enrollment-service tests and the benchmark: a region set up under a home, and
its enrollment service served over HTTPS on loopback (uvicorn in a thread, no Flower)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fedgate.server.audit.keys import ensure_region_key
from fedgate.server.launch.processes import free_port_block
from fedgate.server.trust.actors import ensure_region_operator
from fedgate.server.trust.enroll_run import network_token, service_settings, service_url
from fedgate.server.trust.enroll_service import ServiceSettings, create_app
from fedgate.server.trust.pki import ensure_region_pki, region_tls


def setup_region(home: Path, region: str, db: str | None = None) -> None:
    """What `fedgate region init` leaves: TLS, region key, first operator."""
    ensure_region_pki(home, region)
    ensure_region_key(home, region)
    ensure_region_operator(home, region, db)


@dataclass
class Served:
    """A running service: its URL and settings (registry included)."""

    url: str
    settings: ServiceSettings
    home: Path

    def token(self, ttl: float = 3600.0, *, region: str | None = None) -> str:
        """A fresh network token for this service."""
        secret = self.settings.registry.issue_token(ttl)
        return network_token(
            self.home, region or self.settings.region, self.url, secret, time.time() + ttl
        )


@contextlib.contextmanager
def serving(
    home: Path,
    region: str = "eu",
    *,
    db: str | None = None,
    superlink: str | None = None,
    fleet: str = "127.0.0.1:1",
    rate: float = 1000.0,
    burst: int = 1000,
    port: int | None = None,
) -> Iterator[Served]:
    """Serve ``region``'s enrollment service on a free loopback port until the block ends."""
    import uvicorn

    port = port or free_port_block(1)
    url = service_url("127.0.0.1", port)
    settings = service_settings(home, region, fleet_address=fleet, public_url=url,
                                superlink=superlink, db=db, rate=rate, burst=burst)  # fmt: skip
    tls = region_tls(home, region)
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="error", ws="none",
        ssl_certfile=str(tls.server_cert), ssl_keyfile=str(tls.server_key),
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"enrollment service did not start on port {port}")
        time.sleep(0.05)
    try:
        yield Served(url, settings, home)
    finally:
        server.should_exit = True
        thread.join(10)
        settings.registry.close()
