"""The local topology: one SuperLink per region and its SuperNodes, as loopback processes."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from fedgate.server.config import FederationConfig, RegionConfig
from fedgate.server.processes import (
    ManagedProcess,
    ProcessTable,
    TopologyError,
    alive,
    port_free,
    port_open,
    wait_until,
)

HOST = "127.0.0.1"


def region_dir(home: Path, region: str) -> Path:
    return Path(home) / "regions" / region


def _bin(name: str) -> str:
    """A console script of this environment (next to the running interpreter)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def node_config(fed: FederationConfig, region: RegionConfig, index: int, home: Path) -> str:
    """The SuperNode's ``--node-config``: profile, data shard, device identity, attack."""
    from fedgate.server.local_devices import device_dir

    items: dict[str, str | int] = {
        "profile": region.nodes[index],
        "partition-id": index,
        "num-partitions": len(region.nodes),
        "region": region.name,
        "device-dir": str(device_dir(home, region.name, index).resolve()),
    }
    if index in region.attacks:
        items["attack"] = region.attacks[index]
    return " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in items.items())


@dataclass(frozen=True)
class RegionEndpoints:
    region: str
    superlink: str


def endpoints(region: RegionConfig) -> RegionEndpoints:
    return RegionEndpoints(region.name, f"{HOST}:{region.superlink_port}")


def _check_ports(fed: FederationConfig) -> None:
    for r in fed.regions:
        ports = [r.superlink_port]
        ports += [r.node_runtime_port(i) for i in range(len(r.nodes))]
        busy = [p for p in ports if not port_free(p)]
        if busy:
            raise TopologyError(
                f"region {r.name}: port(s) {busy} already in use on {HOST} "
                f"(another `fedgate up`? run `fedgate down`, or change `port` in the config)"
            )


def start_superlink(table: ProcessTable, region: RegionConfig) -> ManagedProcess:
    state = region_dir(table.home, region.name) / "superlink"
    state.mkdir(parents=True, exist_ok=True)
    cmd = [
        _bin("flower-superlink"),
        "--insecure",
        "--isolation", "subprocess",
        "--database", str(state / "state.db"),
        "--host", HOST,
        "--port", str(region.superlink_port),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    return table.start(f"superlink-{region.name}", cmd, {"FLWR_HOME": str(state / "flwr-home")})


def start_supernode(
    table: ProcessTable, fed: FederationConfig, region: RegionConfig, index: int
) -> ManagedProcess:
    """A SuperNode with process isolation; its ClientApps run in the region's worker."""
    state = region_dir(table.home, region.name) / f"node-{index}"
    state.mkdir(parents=True, exist_ok=True)
    return table.start(
        f"supernode-{region.name}-{index}",
        [
            _bin("flower-supernode"),
            "--insecure",
            "--superlink",
            f"{HOST}:{region.superlink_port}",
            "--isolation",
            "process",
            "--host",
            HOST,
            "--port",
            str(region.node_runtime_port(index)),
            "--node-config",
            node_config(fed, region, index, table.home),
        ],
        {"FLWR_HOME": str(state / "flwr-home")},
    )


def start_workers(table: ProcessTable, region: RegionConfig) -> ManagedProcess:
    """One long-lived ClientApp worker process per region, forking a child per SuperNode."""
    cmd = [sys.executable, "-m", "fedgate.clients.worker"]
    for i in range(len(region.nodes)):
        flwr_home = region_dir(table.home, region.name) / f"node-{i}" / "flwr-home"
        log = table.log_dir / f"worker-{region.name}-{i}.log"
        cmd += ["--node", f"{HOST}:{region.node_runtime_port(i)},{flwr_home},{log}"]
    return table.start(f"workers-{region.name}", cmd, {})


def up(
    fed: FederationConfig, home: Path, timeout: float = 60.0, echo=print
) -> list[RegionEndpoints]:
    """Start every region's SuperLink and SuperNodes and wait until they are healthy.

    On any failure, everything started so far is stopped again before the error propagates.
    """
    table = ProcessTable(home)
    if table.running():
        raise TopologyError(
            f"fedgate is already up in {home} ({len(table.running())} processes); "
            "run `fedgate down` first"
        )
    _check_ports(fed)
    from fedgate.server.audit.keys import ensure_region_key
    from fedgate.server.local_devices import enroll_region_devices

    for r in fed.regions:
        ensure_region_key(home, r.name)
        enroll_region_devices(home, r)
    try:
        links = {r.name: start_superlink(table, r) for r in fed.regions}
        for r in fed.regions:
            link = links[r.name]
            wait_until(
                lambda r=r: port_open(r.superlink_port),
                timeout,
                f"SuperLink {r.name}",
                link.log,
                link.pid,
            )
            state = region_dir(home, r.name)
            echo(f"SuperLink {r.name}: {HOST}:{r.superlink_port} (state in {state})")
        nodes = [
            (r, i, start_supernode(table, fed, r, i))
            for r in fed.regions
            for i in range(len(r.nodes))
        ]
        workers = {r.name: start_workers(table, r) for r in fed.regions}
        for r, i, node in nodes:
            wait_until(
                lambda r=r, i=i: port_open(r.node_runtime_port(i)),
                timeout, f"SuperNode {r.name}-{i}", node.log, node.pid,
            )  # fmt: skip
        for name, worker in workers.items():
            if not alive(worker.pid):
                raise TopologyError(f"ClientApp workers of {name} exited; read {worker.log}")
        echo(
            f"{len(nodes)} SuperNodes up: "
            + ", ".join(f"{r.name}-{i} ({r.nodes[i]})" for r, i, *_ in nodes)
        )
    except BaseException:
        table.stop_all()
        raise
    return [endpoints(r) for r in fed.regions]


def down(home: Path) -> list[str]:
    """Stop exactly the processes ``up`` started under ``home``."""
    return ProcessTable(home).stop_all()


def describe(cmd: list[str]) -> str:
    return shlex.join(cmd)
