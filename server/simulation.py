"""The same region run on Flower's simulation engine (Ray): many virtual devices, one machine.

``submit_simulation`` starts ``python -m fedgate.server.simulation`` in its own process group
(so every Ray process it spawns is stopped with it) and returns a ``Submission`` that
``fedgate.server.runner.follow`` tracks exactly like a deployment run.

A simulated run lives in its own scope, never in the region's: its virtual devices (keys
under ``<run dir>/devices``) are enrolled in the run's own database
``<run dir>/simulation.db``, which also holds its run, rounds and audit chain; the region's
database and registry are not opened.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fedgate.server.config import FederationConfig, RegionConfig
from fedgate.server.processes import flower_env
from fedgate.server.runner import Submission, run_config
from fedgate.server.topology import region_dir

RUN_DB = "simulation.db"  # a simulated run's own database, in its run directory
DEVICES = "devices"  # its virtual devices' directories (signing keys), ditto


def run_db_path(out_dir: Path) -> Path:
    return Path(out_dir).resolve() / RUN_DB


def run_db_url(out_dir: Path) -> str:
    """The SQLite URL of a simulated run's own database."""
    return f"sqlite:///{run_db_path(out_dir)}"


def virtual_device_dir(devices: Path, index: int) -> Path:
    """Virtual device ``index``'s directory (key, enrollment, trust anchor)."""
    return Path(devices) / f"sim-{index}"


def sim_profiles(n: int) -> tuple[str, ...]:
    """Virtual devices alternate phone and pi, like the default SuperNodes."""
    return tuple("phone" if i % 2 == 0 else "pi" for i in range(n))


def enroll_virtual_devices(
    home: Path, region: RegionConfig, out_dir: Path, num_supernodes: int
) -> list[str]:
    """Enroll ``num_supernodes`` fresh virtual devices in the run's own database (the
    region's key signs its audit heads and is the devices' trust anchor), revoking those
    the region config lists as revoked; returns their ids. Keys go under
    ``out_dir/devices``."""
    from fedgate.clients.identity import enroll_identity
    from fedgate.server.enrollment import ENROLL_DIR_TOKEN_TTL, region_anchor, region_registry

    devices = Path(out_dir) / DEVICES
    ids: list[str] = []
    with region_registry(home, region.name, run_db_url(out_dir)) as registry:
        anchor = region_anchor(home, region.name)
        for index, profile in enumerate(sim_profiles(num_supernodes)):

            def register(public_key: bytes, profile: str = profile) -> str:
                token = registry.issue_token(ttl_seconds=ENROLL_DIR_TOKEN_TTL)
                return registry.enroll(token, public_key, profile=profile).device_id

            enrolled = enroll_identity(
                virtual_device_dir(devices, index), region.name, profile, anchor, register,
                force=True,
            )  # fmt: skip
            ids.append(enrolled.enrollment.device_id)
        for index in region.revoked:
            if index < num_supernodes:
                registry.revoke(ids[index], reason="revoked in the region config")
    return ids


def virtual_client_app(devices: Path, data_root: Path | None = None):
    """fedgate's ClientApp, each virtual device acting as its enrolled ``sim-<i>`` device
    under ``devices`` (with ``data_root``: reading its own ``.npz`` data from
    ``data_root/<i>``)."""
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp

    from fedgate.clients import app as real
    from fedgate.clients.device import NODE_CONFIG_KEY

    client_app = ClientApp()

    def as_device(context: Context) -> Context:
        pid = int(context.node_config["partition-id"])
        context.node_config[NODE_CONFIG_KEY] = str(virtual_device_dir(devices, pid))
        context.node_config.setdefault("profile", "phone" if pid % 2 == 0 else "pi")
        if data_root is not None:
            context.node_config["data-dir"] = str(data_root / str(pid))
        return context

    @client_app.train()
    def _train(msg: Message, context: Context) -> Message:
        return real.train(msg, as_device(context))

    @client_app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return real.evaluate_local(msg, as_device(context))

    return client_app


def simulate(config: dict[str, Any], num_supernodes: int, cpus_per_client: float = 1.0) -> None:
    """Run the region's ServerApp and ``num_supernodes`` virtual ClientApps in this process."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedgate.server.app import run_region

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_region(grid, config, context.run_id)

    client_app = virtual_client_app(Path(config["out-dir"]) / DEVICES)

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_supernodes,
        backend_config={
            "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
            "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False},
        },
    )


def submit_simulation(
    fed: FederationConfig, region: RegionConfig, home: Path, num_supernodes: int
) -> Submission:
    """Start a simulated run of ``region`` with ``num_supernodes`` virtual devices."""
    out_dir = (
        region_dir(home, region.name)
        / "runs"
        / (time.strftime("%Y%m%d-%H%M%S") + f"-sim-{time.monotonic_ns() % 10**6}")
    )
    out_dir.mkdir(parents=True)
    enroll_virtual_devices(home, region, out_dir, num_supernodes)
    config_path = write_run_config(fed, region, home, out_dir)
    child = ["-m", "fedgate.server.simulation", "--config", str(config_path),
             "--num-supernodes", str(num_supernodes)]  # fmt: skip
    return start_simulation(region, home, out_dir, child)


def write_run_config(
    fed: FederationConfig, region: RegionConfig, home: Path, out_dir: Path
) -> Path:
    """The run config a simulated run's child process reads, as ``out_dir/run-config.json``;
    its database is the run's own (``out_dir/simulation.db``), never the region's."""
    path = out_dir / "run-config.json"
    config = run_config(fed, region, home, out_dir.resolve())
    config["db"] = run_db_url(out_dir)
    path.write_text(json.dumps(config, indent=2))
    return path


def start_simulation(
    region: RegionConfig, home: Path, out_dir: Path, child_args: list[str]
) -> Submission:
    """Run ``python <child_args>`` (a simulation) in its own session, logging to
    ``out_dir/simulation.log``; ``follow`` tracks it like any run."""
    log = out_dir / "simulation.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, *child_args], stdout=fh, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=flower_env({"RAY_DEDUP_LOGS": "0"}), cwd=out_dir,
            start_new_session=True,
        )  # fmt: skip
    return Submission(region.name, Path(home), out_dir, log, proc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one region on Flower's simulation engine")
    parser.add_argument("--config", required=True, help="run config JSON written by fedgate")
    parser.add_argument("--num-supernodes", type=int, required=True)
    args = parser.parse_args(argv)
    simulate(json.loads(Path(args.config).read_text()), args.num_supernodes)


if __name__ == "__main__":
    main()
