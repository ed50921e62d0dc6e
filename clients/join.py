"""``fedgate client join``: one device's SuperNode and its warm ClientApp executor, together.

The SuperNode (Flower's ``flower-supernode``, process isolation) connects to the region's
fleet address with TLS and the device's registered node key; this process then serves the
SuperNode's runtime API with fedgate's long-lived ClientApp worker (``clients/worker.py``),
so torch is imported once, not per message. Ctrl-C or SIGTERM stops both.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from fedgate.clients.identity import read_enrollment
from fedgate.clients.node_key import NODE_KEY_FILE, NODE_PUB_FILE, NodeKey, supernode_flags
from fedgate.errors import UnavailableError
from fedgate.procenv import flower_env, port_open


class JoinError(UnavailableError, RuntimeError):
    """The device cannot join: not enrolled, no node key, or its SuperNode did not start."""


@dataclass(frozen=True)
class JoinSpec:
    """Everything one device needs to take part in its region's training."""

    device_dir: Path
    superlink: str  # the region's fleet (device-facing) address HOST:PORT
    root_certificates: Path | None  # region CA; None only with --insecure
    runtime_port: int = 9094
    data_dir: Path | None = None
    partition_id: int = 0
    num_partitions: int = 1

    def node_config(self) -> str:
        enrollment = read_enrollment(self.device_dir)
        if enrollment is None:
            raise JoinError(f"{self.device_dir} is not enrolled; run `fedgate client enroll`")
        items = {
            "device-dir": str(self.device_dir.resolve()),
            "region": enrollment.region,
            "profile": enrollment.profile or "phone",
            "partition-id": self.partition_id,
            "num-partitions": self.num_partitions,
        }
        if self.data_dir is not None:
            items["data-dir"] = str(self.data_dir.resolve())
        return " ".join(
            f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in items.items()
        )

    def supernode_command(self) -> list[str]:
        if self.root_certificates is None:
            transport = ["--insecure"]
        else:
            node = NodeKey(self.device_dir / NODE_KEY_FILE, self.device_dir / NODE_PUB_FILE)
            if not node.private_path.is_file():
                raise JoinError(
                    f"no node key at {node.private_path}; enroll with `fedgate client enroll`"
                )
            transport = supernode_flags(self.root_certificates, node)
        script = Path(sys.executable).parent / "flower-supernode"
        return [
            str(script) if script.exists() else "flower-supernode",
            *transport,
            "--superlink", self.superlink,
            "--isolation", "process",
            "--host", "127.0.0.1",
            "--port", str(self.runtime_port),
            "--node-config", self.node_config(),
        ]  # fmt: skip


def join(spec: JoinSpec, echo=print, startup_timeout: float = 60.0) -> int:
    """Run the device until interrupted; returns the SuperNode's exit status."""
    # heavy import (Flower, torch): only once the device joins
    from fedgate.clients.worker import ClientAppWorker, warm_up

    command = spec.supernode_command()
    flwr_home = spec.device_dir / "flwr-home"
    log = spec.device_dir / "supernode.log"
    with log.open("ab") as fh:
        node = subprocess.Popen(
            command, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=flower_env({"FLWR_HOME": str(flwr_home)}), start_new_session=True,
        )  # fmt: skip
    worker = ClientAppWorker(f"127.0.0.1:{spec.runtime_port}")

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        worker.stopping = True

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        deadline = time.monotonic() + startup_timeout
        while not port_open(spec.runtime_port):
            if node.poll() is not None or time.monotonic() > deadline:
                raise JoinError(f"the SuperNode did not start (exit {node.poll()}); read {log}")
            time.sleep(0.2)
        warm_up()
        echo(f"joined {spec.superlink} as {spec.device_dir}; SuperNode log: {log}")
        while not worker.stopping and node.poll() is None:
            worker.serve_once()
        if node.poll() is not None:
            echo(f"the SuperNode exited with status {node.returncode}; read {log}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()
    return node.returncode or 0
