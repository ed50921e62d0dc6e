"""One device of ``scale.py``'s deployment rows, joined the way a real device joins.

A real device enrolls over the network with a one-time token (``fedgate region
enroll-token``, ``enroll_over_network``) and runs ``fedgate client join``: one process, its
SuperNode in the main thread and fedgate's ClientApp worker in a thread
(``fedgate/clients/join.py``). Its peak RSS is the device figure of the memory goal. The
region's other nodes are ``fedgate up``'s local SuperNodes, served by the region's shared
(forking) ClientApp worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from fedgate.clients.enroll_client import enroll_over_network
from fedgate.procenv import flower_env
from fedgate.server.launch.config import RegionConfig
from fedgate.server.launch.processes import free_port_block, wait_until
from fedgate.server.launch.topology import region_health

FEDGATE = str(Path(sys.executable).parent / "fedgate")
STOP_WAIT = 30.0  # seconds a joined device gets to leave after SIGTERM


def join_device(home: Path, region: RegionConfig, partition: int, partitions: int,
                profile: str = "phone") -> subprocess.Popen:  # fmt: skip
    """Enroll a new device with a network token from the region under ``home`` and start
    ``fedgate client join`` for it (own session, output in ``<home>/joined-device.log``)."""
    operator = flower_env({"FEDGATE_HOME": str(home)})
    token = subprocess.run(
        [FEDGATE, "region", "enroll-token", "--region", region.name,
         "--url", f"https://127.0.0.1:{region.enroll_port}"],
        env=operator, capture_output=True, text=True, timeout=120, check=True,
    ).stdout.split()[0]  # fmt: skip
    device = home / "joined-device"
    enroll_over_network(token, profile, device)
    cmd = [FEDGATE, "client", "join", "--device-dir", str(device),
           "--runtime-port", str(free_port_block(1)), "--partition-id", str(partition),
           "--num-partitions", str(partitions), "--status-every", "30"]  # fmt: skip
    with (home / "joined-device.log").open("ab") as log:
        return subprocess.Popen(cmd, env=operator, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip


def wait_online(home: Path, region: RegionConfig, nodes: int, device: subprocess.Popen,
                timeout: float) -> None:  # fmt: skip
    """Until the region's SuperLink counts ``nodes`` online (the joined device among them)."""
    wait_until(lambda: region_health(home, region).online >= nodes, timeout,
               f"{nodes} nodes online", str(home / "joined-device.log"), device.pid)  # fmt: skip


def stop_device(device: subprocess.Popen) -> None:
    """SIGTERM, as its owner would stop it; its session is killed if it has not left."""
    with contextlib.suppress(ProcessLookupError):
        device.send_signal(signal.SIGTERM)
    try:
        device.wait(STOP_WAIT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(device.pid, signal.SIGKILL)
        device.wait()
