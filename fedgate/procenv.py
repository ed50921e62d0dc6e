"""The environment and loopback checks of the Flower processes fedgate starts.

Shared by the server's launcher and a device joining its region (``fedgate client join``):
standard library only, so a device needs nothing of the server for it.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

# Quiet, offline, never installing dependencies at run time.
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.25",
    "RAY_DISABLE_USAGE_STATS": "1",
    "PYTHONUNBUFFERED": "1",
}


def flower_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus ``FLOWER_ENV``, with this interpreter's scripts first
    on PATH (Flower starts helpers such as ``flower-superexec`` by name)."""
    scripts = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return {**os.environ, **FLOWER_ENV, "PATH": f"{scripts}{os.pathsep}{path}", **(extra or {})}


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
