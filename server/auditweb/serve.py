"""Run the web view with uvicorn: loopback by default, a token required on any other address."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from fedgate.errors import UnavailableError, UsageError
from fedgate.server.auditweb.sources import Source


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, port: int, token: str | None) -> None:
    """Refuse a port out of range, and an address other than loopback without a token."""
    if not 1 <= port <= 65535:
        raise UsageError(f"--port must be between 1 and 65535, got {port}")
    if token is not None and len(token) < 16:
        raise UsageError("--token must be at least 16 characters")
    if not is_loopback(host) and token is None:
        raise UsageError(
            f"--host {host} is not loopback: the audit log would be open to the network; "
            "pass --token (or $FEDGATE_AUDIT_TOKEN)"
        )


def serve_forever(
    sources: list[Source],
    *,
    host: str = "127.0.0.1",
    port: int = 8787,
    token: str | None = None,
    ttl: float = 60.0,
    say: Callable[[str], None] = print,
) -> None:
    """Serve until Ctrl-C."""
    import uvicorn  # heavy import: only when serving

    from fedgate.server.auditweb.app import create_app

    check_bind(host, port, token)
    app = create_app(sources, token=token, ttl=ttl)
    names = ", ".join(s.label for s in sources)
    shown = f"[{host}]" if ":" in host else host
    say(f"serving {names} read-only at http://{shown}:{port}/"
        + (" (token required)" if token else "") + "; Ctrl-C stops")  # fmt: skip
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            server_header=False, ws="none")  # fmt: skip
    server = uvicorn.Server(config)
    try:
        server.run()
    except OSError as exc:
        raise UnavailableError(f"cannot listen on {shown}:{port}: {exc.strerror}") from None
    if not server.started:
        raise UnavailableError(f"cannot listen on {shown}:{port} (in use?)")
