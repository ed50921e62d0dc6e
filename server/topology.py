"""The local topology: one SuperLink per region and its SuperNodes, as loopback processes."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from fedgate.clients.device import node_config_arg
from fedgate.server.audit.keys import ensure_region_key
from fedgate.server.config import FederationConfig, RegionConfig
from fedgate.server.fleet_proxy import check_config, healthy, start_command, write_config
from fedgate.server.local_devices import device_dir, enroll_region_devices
from fedgate.server.node_auth import NodeAuthError, NodeKey, list_nodes, register_node
from fedgate.server.processes import (
    ManagedProcess,
    ProcessTable,
    TopologyError,
    alive,
    port_free,
    port_open,
    wait_until,
)
from fedgate.server.transport import HOST, INSECURE_WARNING, Transport, load_transport


def region_dir(home: Path, region: str) -> Path:
    return Path(home) / "regions" / region


def _bin(name: str) -> str:
    """A console script of this environment (next to the running interpreter)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def node_config(fed: FederationConfig, region: RegionConfig, index: int, home: Path) -> str:
    """The SuperNode's ``--node-config``: profile, data shard, device identity, attack."""
    items: dict[str, str | int] = {
        "profile": region.nodes[index],
        "partition-id": index,
        "num-partitions": len(region.nodes),
        "region": region.name,
        "device-dir": str(device_dir(home, region.name, index).resolve()),
    }
    if index in region.attacks:
        items["attack"] = region.attacks[index]
    return node_config_arg(items)


@dataclass(frozen=True)
class RegionEndpoints:
    region: str
    superlink: str


def endpoints(region: RegionConfig) -> RegionEndpoints:
    return RegionEndpoints(region.name, f"{HOST}:{region.superlink_port}")


def _check_ports(fed: FederationConfig) -> None:
    for r in fed.regions:
        ports = [r.superlink_port, r.fleet_port]
        ports += [r.node_runtime_port(i) for i in range(len(r.nodes))]
        busy = [p for p in ports if not port_free(p)]
        if busy:
            raise TopologyError(
                f"region {r.name}: port(s) {busy} already in use on {HOST} "
                f"(another `fedgate up`? run `fedgate down`, or change `port` in the config)"
            )


def start_superlink(
    table: ProcessTable, region: RegionConfig, transport: Transport
) -> ManagedProcess:
    state = region_dir(table.home, region.name) / "superlink"
    state.mkdir(parents=True, exist_ok=True)
    cmd = [
        _bin("flower-superlink"),
        *transport.superlink_flags(region.name),
        "--isolation", "subprocess",
        "--database", str(state / "state.db"),
        "--host", HOST,
        "--port", str(region.superlink_port),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    return table.start(f"superlink-{region.name}", cmd, {"FLWR_HOME": str(state / "flwr-home")})


def start_proxy(table: ProcessTable, region: RegionConfig, transport: Transport):
    """The region's fleet-only nginx: the one address its SuperNodes are given."""
    spec = transport.proxy(region)
    paths = write_config(spec, region_dir(table.home, region.name) / "proxy")
    check_config(paths)
    return spec, table.start(f"proxy-{region.name}", start_command(paths), {})


def register_node_keys(
    home: Path, region: RegionConfig, transport: Transport, device_ids: list[str]
) -> list[NodeKey | None]:
    """Each SuperNode's authentication key, registered with the region's SuperLink under its
    device id (idempotent; registrations persist in the SuperLink's state)."""
    keys = []
    for index, device_id in enumerate(device_ids):
        key = transport.node_key(device_dir(home, region.name, index), f"{region.name}-{index}")
        if key is not None:
            register_node(transport.control(region), key, name=device_id)
        keys.append(key)
    return keys


def start_supernode(
    table: ProcessTable,
    fed: FederationConfig,
    region: RegionConfig,
    index: int,
    transport: Transport,
    key: NodeKey | None,
) -> ManagedProcess:
    """A SuperNode with process isolation; its ClientApps run in the region's worker."""
    state = region_dir(table.home, region.name) / f"node-{index}"
    state.mkdir(parents=True, exist_ok=True)
    cmd = [
        _bin("flower-supernode"),
        *transport.supernode_flags(region, key),
        "--isolation", "process",
        "--host", HOST,
        "--port", str(region.node_runtime_port(index)),
        "--node-config", node_config(fed, region, index, table.home),
    ]  # fmt: skip
    return table.start(
        f"supernode-{region.name}-{index}", cmd, {"FLWR_HOME": str(state / "flwr-home")}
    )


def start_workers(table: ProcessTable, region: RegionConfig) -> ManagedProcess:
    """One long-lived ClientApp worker process per region, forking a child per SuperNode."""
    cmd = [sys.executable, "-m", "fedgate.clients.worker"]
    for i in range(len(region.nodes)):
        flwr_home = region_dir(table.home, region.name) / f"node-{i}" / "flwr-home"
        log = table.log_dir / f"worker-{region.name}-{i}.log"
        cmd += ["--node", f"{HOST}:{region.node_runtime_port(i)},{flwr_home},{log}"]
    return table.start(f"workers-{region.name}", cmd, {})


def online_nodes(region: RegionConfig, transport: Transport) -> int:
    """How many SuperNodes the region's SuperLink currently counts as online."""
    try:
        return sum(n.status == "online" for n in list_nodes(transport.control(region)))
    except NodeAuthError:
        return 0


def up(
    fed: FederationConfig,
    home: Path,
    timeout: float = 60.0,
    echo=print,
    insecure: bool = False,
) -> list[RegionEndpoints]:
    """Start every region's SuperLink, proxy and SuperNodes and wait until they are healthy.

    Secure unless ``insecure``: see ``fedgate.server.transport``. On any failure,
    everything started so far is stopped again before the error propagates.
    """
    table = ProcessTable(home)
    if table.running():
        raise TopologyError(
            f"fedgate is already up in {home} ({len(table.running())} processes); "
            "run `fedgate down` first"
        )
    _check_ports(fed)
    transport = Transport(Path(home), insecure)
    if insecure:
        echo(f"[yellow]{INSECURE_WARNING}[/yellow]")
    devices = {}
    for r in fed.regions:
        transport.prepare_region(r.name)
        ensure_region_key(home, r.name)
        devices[r.name] = enroll_region_devices(home, r)
    transport.save()
    try:
        links = {r.name: start_superlink(table, r, transport) for r in fed.regions}
        proxies = {}
        for r in fed.regions:
            link = links[r.name]
            wait_until(
                lambda r=r: port_open(r.superlink_port),
                timeout, f"SuperLink {r.name}", link.log, link.pid,
            )  # fmt: skip
            proxies[r.name] = start_proxy(table, r, transport)
            echo(
                f"SuperLink {r.name}: operator address {HOST}:{r.superlink_port}, "
                f"devices via {HOST}:{r.fleet_port} ({'insecure' if insecure else 'TLS'})"
            )
        keys = {
            r.name: register_node_keys(home, r, transport, devices[r.name]) for r in fed.regions
        }
        for r in fed.regions:
            spec, proxy = proxies[r.name]
            wait_until(
                lambda spec=spec, r=r: healthy(spec, transport.ca(r.name)),
                timeout, f"fleet proxy {r.name}", proxy.log, proxy.pid,
            )  # fmt: skip
        nodes = [
            (r, i, start_supernode(table, fed, r, i, transport, keys[r.name][i]))
            for r in fed.regions
            for i in range(len(r.nodes))
        ]
        workers = {r.name: start_workers(table, r) for r in fed.regions}
        for r, i, node in nodes:
            wait_until(
                lambda r=r, i=i: port_open(r.node_runtime_port(i)),
                timeout, f"SuperNode {r.name}-{i}", node.log, node.pid,
            )  # fmt: skip
        for r in fed.regions:
            wait_until(
                lambda r=r: online_nodes(r, transport) >= len(r.nodes),
                timeout, f"all {len(r.nodes)} SuperNodes of {r.name} online",
                str(table.log_dir / f"supernode-{r.name}-0.log"),
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


@dataclass(frozen=True)
class RegionHealth:
    """What ``fedgate status`` reports for one region of a running topology."""

    region: str
    superlink: bool  # operator address answers
    proxy: bool  # the fleet-only proxy answers /health (and reaches the SuperLink)
    expected: int  # SuperNodes in the config
    nodes: tuple[tuple[str, str], ...] = ()  # (registered name or node id, status)
    error: str = ""

    @property
    def online(self) -> int:
        return sum(status == "online" for _, status in self.nodes)


def region_health(home: Path, region: RegionConfig) -> RegionHealth:
    """Probe a region of the topology under ``home``: SuperLink, proxy and node status."""
    transport = load_transport(home)
    link = port_open(region.superlink_port)
    proxy = healthy(transport.proxy(region), transport.ca(region.name)) if link else False
    if not link:
        return RegionHealth(region.name, False, proxy, len(region.nodes), error="SuperLink down")
    try:
        listed = list_nodes(transport.control(region))
    except NodeAuthError as exc:
        return RegionHealth(region.name, True, proxy, len(region.nodes), error=str(exc))
    nodes = tuple(
        (n.name[:16] or str(n.node_id), n.status) for n in listed if n.status != "unregistered"
    )
    return RegionHealth(region.name, True, proxy, len(region.nodes), nodes)


def down(home: Path) -> list[str]:
    """Stop exactly the processes ``up`` started under ``home``."""
    return ProcessTable(home).stop_all()


def describe(cmd: list[str]) -> str:
    return shlex.join(cmd)
