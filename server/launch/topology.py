"""The topology: one SuperLink per region and its SuperNodes, started where a ``Layout`` puts them.

``up`` renders the host description (``fedgate.server.launch.hosts``) as processes: by
default every host is this machine (127.0.0.1); with a network-namespace layout each host's
processes run in its namespace (``Host.wrap``) at its own address, the region's devices
reaching its fleet proxy by name (``fedgate.server.launch.netns`` builds the network).
Seams for other services of a region host (an enrollment service): ``bring_up_region``
starts the region host's services in order; add a ``start_<service>(table, region,
transport, host)`` beside ``start_proxy`` and call it there.
"""

from __future__ import annotations

import shlex
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fedgate.clients.device import node_config_arg
from fedgate.procenv import port_open
from fedgate.server.launch.config import ConfigError, FederationConfig, RegionConfig
from fedgate.server.launch.fleet_proxy import check_config, healthy, start_command, write_config
from fedgate.server.launch.hosts import Host, Layout
from fedgate.server.launch.local_devices import device_dir, enroll_region_devices
from fedgate.server.launch.processes import (
    ManagedProcess,
    ProcessTable,
    TopologyError,
    alive,
    died,
    port_free,
    wait_until,
)
from fedgate.server.launch.superlink_runs import active_runs, stop_link_run
from fedgate.server.launch.transport import HOST, INSECURE_WARNING, Transport, load_transport
from fedgate.server.trust.node_auth import NodeAuthError, NodeKey, list_nodes, register_node


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


def endpoints(region: RegionConfig, transport: Transport | None = None) -> RegionEndpoints:
    address = HOST if transport is None else transport.server_address(region.name)
    return RegionEndpoints(region.name, f"{address}:{region.superlink_port}")


def _server(transport: Transport, region: RegionConfig) -> Host:
    return Host("local") if transport.layout is None else transport.layout.server(region.name)


def _device(transport: Transport, region: RegionConfig, index: int) -> Host:
    if transport.layout is None:
        return Host("local")
    return transport.layout.region(region.name).device(index)


def _check_ports(fed: FederationConfig) -> None:
    for r in fed.regions:
        ports = [r.superlink_port, r.fleet_port, r.enroll_port]
        ports += [r.node_runtime_port(i) for i in range(len(r.nodes))]
        busy = [p for p in ports if not port_free(p)]
        if busy:  # the user's choice of ports, not a failed service: usage (exit 1)
            raise ConfigError(
                f"region {r.name}: port(s) {busy} already in use on {HOST} "
                f"(another `fedgate up`? run `fedgate down`, or change `port` in the config)"
            )


# Flower's SuperLink, run through the busy-timeout adaptation (a seam the tests replace).
SUPERLINK_LAUNCHER = (sys.executable, "-m", "fedgate.server.launch.superlink_main")


def start_superlink(
    table: ProcessTable, region: RegionConfig, transport: Transport
) -> ManagedProcess:
    """Flower's SuperLink (through ``fedgate.server.launch.superlink_main``: a busy timeout that
    holds under load) with process isolation: its executor is a process of our own."""
    state = region_dir(table.home, region.name) / "superlink"
    state.mkdir(parents=True, exist_ok=True)
    cmd = [
        *SUPERLINK_LAUNCHER,
        *transport.superlink_flags(region.name),
        "--isolation", "process",
        "--database", str(state / "state.db"),
        "--host", transport.server_address(region.name),
        "--port", str(region.superlink_port),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    host = _server(transport, region)
    return table.start(
        f"superlink-{region.name}", host.wrap(cmd), {"FLWR_HOME": str(state / "flwr-home")}
    )


def start_executor(
    table: ProcessTable, region: RegionConfig, transport: Transport, superlink: ManagedProcess
) -> ManagedProcess:
    """The region's SuperExec: launches the ServerApp of each run the SuperLink schedules.
    It is watched like every other process (``fedgate status``) and exits with its
    SuperLink (``--parent-pid``)."""
    state = region_dir(table.home, region.name) / "superlink"
    ca = transport.ca(region.name)
    tls = ["--insecure"] if ca is None else ["--root-certificates", str(ca)]
    cmd = [
        _bin("flower-superexec"), *tls,
        "--runtime-api-address", f"{transport.server_address(region.name)}:{region.superlink_port}",
        "--parent-pid", str(superlink.pid),
    ]  # fmt: skip
    host = _server(transport, region)
    return table.start(
        f"executor-{region.name}", host.wrap(cmd), {"FLWR_HOME": str(state / "flwr-home")}
    )


def start_proxy(table: ProcessTable, region: RegionConfig, transport: Transport):
    """The region's fleet-only nginx: the one address its SuperNodes are given."""
    spec = transport.proxy(region)
    paths = write_config(spec, region_dir(table.home, region.name) / "proxy")
    host = _server(transport, region)
    check_config(paths, wrap=host.wrap)
    return spec, table.start(f"proxy-{region.name}", host.wrap(start_command(paths)), {})


def start_enroll_service(
    table: ProcessTable, region: RegionConfig, transport: Transport
) -> ManagedProcess:
    """The region's enrollment service (``fedgate region enrollment-service``): HTTPS with the
    region's certificate; it registers enrolled devices' node keys at the operator address."""
    address = transport.server_address(region.name)  # on the region's server host
    cmd = [
        _bin("fedgate"), "region", "enrollment-service",
        "--region", region.name,
        "--home", str(table.home),
        "--host", address,
        "--port", str(region.enroll_port),
        "--fleet-address", f"{transport.fleet_address(region.name)}:{region.fleet_port}",
        *(["--db", region.db] if region.db else []),
        "--superlink", f"{address}:{region.superlink_port}",
    ]  # fmt: skip
    return table.start(f"enroll-{region.name}", _server(transport, region).wrap(cmd), {})


def register_node_keys(
    home: Path, region: RegionConfig, transport: Transport, device_ids: list[str]
) -> list[NodeKey | None]:
    """Each SuperNode's authentication key, registered with the region's SuperLink under its
    device id (idempotent; registrations persist in the SuperLink's state). The SuperLink's
    nodes are listed once: keys it already holds (those the enrollment service registered)
    are not registered again."""
    keys = [transport.node_key(device_dir(home, region.name, i), f"{region.name}-{i}")
            for i in range(len(device_ids))]  # fmt: skip
    if not any(keys):
        return keys
    target = transport.control(region)
    registered = {n.fingerprint for n in list_nodes(target) if n.status != "unregistered"}
    for key, device_id in zip(keys, device_ids, strict=True):
        if key is not None and key.fingerprint not in registered:
            register_node(target, key, name=device_id)  # an unregistered key: a clear error
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
        "--host", HOST,  # its ClientApp worker runs on the same host: loopback
        "--port", str(region.node_runtime_port(index)),
        "--node-config", node_config(fed, region, index, table.home),
    ]  # fmt: skip
    host = _device(transport, region, index)
    return table.start(
        f"supernode-{region.name}-{index}", host.wrap(cmd), {"FLWR_HOME": str(state / "flwr-home")}
    )


def start_workers(
    table: ProcessTable, region: RegionConfig, transport: Transport | None = None
) -> list[ManagedProcess]:
    """Long-lived ClientApp worker processes, one per device host (on one machine: one
    for the whole region), each forking a child per SuperNode of its host."""
    groups: dict[Host, list[int]] = {}
    for i in range(len(region.nodes)):
        host = Host("local") if transport is None else _device(transport, region, i)
        groups.setdefault(host, []).append(i)
    started = []
    for n, (host, nodes) in enumerate(groups.items()):
        cmd = [sys.executable, "-m", "fedgate.clients.worker"]
        for i in nodes:
            flwr_home = region_dir(table.home, region.name) / f"node-{i}" / "flwr-home"
            log = table.log_dir / f"worker-{region.name}-{i}.log"
            cmd += ["--node", f"{HOST}:{region.node_runtime_port(i)},{flwr_home},{log}"]
        name = f"workers-{region.name}" + ("" if len(groups) == 1 else f"-{n}")
        started.append(table.start(name, host.wrap(cmd), {}))
    return started


def online_nodes(region: RegionConfig, transport: Transport) -> int:
    """How many SuperNodes the region's SuperLink currently counts as online."""
    try:
        return sum(n.status == "online" for n in list_nodes(transport.control(region)))
    except NodeAuthError:
        return 0


class Progress:
    """``up``'s progress lines: which region, what became ready, seconds since start."""

    def __init__(self, echo) -> None:
        self.echo = echo
        self.t0 = time.monotonic()
        self.lock = threading.Lock()

    def __call__(self, region: str, message: str) -> None:
        with self.lock:
            self.echo(f"[{time.monotonic() - self.t0:5.1f} s] {region}: {message}")


def stop_stale_runs(home: Path, region: RegionConfig, transport: Transport) -> list[int]:
    """Stop the runs a restarted SuperLink still holds as pending or running from an earlier
    session (nobody follows them; they must never start by themselves), and mark any the
    region database still calls running as interrupted."""
    # heavy import (the region database): only `up` needs it, not `status`
    from fedgate.server.launch.run_records import mark_ended

    target = transport.control(region)
    stale = [r.run_id for r in active_runs(target)]
    for run_id in stale:
        stop_link_run(target, run_id)
    if stale:
        for run_id in stale:
            mark_ended(
                home,
                region,
                run_id,
                "interrupted",
                "left active by an earlier session; stopped when the topology came up",
            )
    return stale


def stale_sessions(region: RegionConfig, transport: Transport, device_ids: list[str]) -> int:
    """How many of the region's devices the SuperLink still holds online although none of
    their SuperNodes runs yet (left by a SuperLink or SuperNodes that were killed)."""
    try:
        listed = list_nodes(transport.control(region))
    except NodeAuthError:
        return 0
    names = set(device_ids)
    return sum(n.status == "online" and n.name in names for n in listed)


def _enroll_devices(
    table: ProcessTable,
    r: RegionConfig,
    transport: Transport,
    device_ids: list[str] | None,
    timeout: float,
    say: Progress,
) -> tuple[list[str], list[NodeKey | None]]:
    """The region's enrollment service started and answering, its devices enrolled through
    it (``device_ids`` None) and their node keys registered: the device ids and keys."""
    enroll = None if transport.insecure else start_enroll_service(table, r, transport)
    if enroll is not None:
        from fedgate.server.trust.enroll_run import service_healthy, service_url

        ca, address = transport.ca(r.name), transport.server_address(r.name)
        wait_until(lambda: service_healthy(r.enroll_port, ca, address), timeout,
                   f"enrollment service {r.name}", enroll.log, enroll.pid)  # fmt: skip
        url = service_url(address, r.enroll_port)
        say(r.name, f"enrollment service ready at {url}")
        if device_ids is None:
            started = time.monotonic()
            device_ids = enroll_region_devices(table.home, r, service_url=url)
            say(r.name, f"{len(device_ids)} devices enrolled over the network with a token each "
                        f"({time.monotonic() - started:.2f} s)")  # fmt: skip
    else:
        say(r.name, "no enrollment service (insecure: devices cannot enroll over the network)")
    if device_ids is None:
        raise TopologyError(f"region {r.name}: no enrollment service to enroll its devices")
    return device_ids, register_node_keys(table.home, r, transport, device_ids)


def bring_up_region(
    table: ProcessTable,
    fed: FederationConfig,
    region: RegionConfig,
    transport: Transport,
    device_ids: list[str] | None,
    timeout: float,
    say: Progress,
) -> None:
    """One region: SuperLink, executor, proxy, enrollment service, device enrollment, node
    keys, SuperNodes and workers, each waited on by its readiness (a port, /health, the
    SuperLink's node list), never a sleep. ``device_ids`` None: the devices enroll over the
    network through the region's enrollment service once it answers (``enroll_region_devices``
    with its URL), as real devices do."""
    r = region
    address = transport.server_address(r.name)
    link = start_superlink(table, r, transport)
    wait_until(lambda: port_open(r.superlink_port, address), timeout, f"SuperLink {r.name}",
               link.log, link.pid)  # fmt: skip
    say(r.name, f"SuperLink ready at {address}:{r.superlink_port} (operator address)")
    stale = stop_stale_runs(table.home, r, transport)
    if stale:
        say(r.name, f"stopped {len(stale)} run(s) an earlier session left pending: {stale}")
    executor = start_executor(table, r, transport, link)
    spec, proxy = start_proxy(table, r, transport)
    try:
        device_ids, keys = _enroll_devices(table, r, transport, device_ids, timeout, say)
    except Exception:
        if not alive(link.pid):  # e.g. another process took its port after the port check
            raise died(f"SuperLink {r.name}", link.log) from None
        raise
    say(r.name, f"{len([k for k in keys if k])} node keys registered")
    stale = stale_sessions(r, transport, device_ids)
    if stale:  # an unclean stop: the SuperLink refuses to activate a node it thinks online
        say(r.name, f"waiting for the SuperLink to expire {stale} node session(s) left by an "
                    "unclean stop (up to a minute: Flower's heartbeat patience)")  # fmt: skip
        wait_until(lambda: not stale_sessions(r, transport, device_ids), timeout,
                   f"stale node sessions of {r.name} to expire", link.log, link.pid)  # fmt: skip
    wait_until(lambda: healthy(spec, transport.ca(r.name)), timeout, f"fleet proxy {r.name}",
               proxy.log, proxy.pid)  # fmt: skip
    say(r.name, f"fleet proxy ready at {transport.fleet_address(r.name)}:{r.fleet_port} "
                f"({'insecure' if transport.insecure else 'TLS'})")  # fmt: skip
    nodes = [start_supernode(table, fed, r, i, transport, keys[i]) for i in range(len(r.nodes))]
    workers = start_workers(table, r, transport)
    for i, node in enumerate(nodes):
        if _device(transport, r, i).namespace is not None:
            continue  # its loopback is its host's own; the node list below tells readiness
        wait_until(lambda i=i: port_open(r.node_runtime_port(i)), timeout,
                   f"SuperNode {r.name}-{i}", node.log, node.pid)  # fmt: skip
    wait_until(lambda: online_nodes(r, transport) >= len(r.nodes), timeout,
               f"all {len(r.nodes)} SuperNodes of {r.name} online",
               str(table.log_dir / f"supernode-{r.name}-0.log"))  # fmt: skip
    for i, node in enumerate(nodes):
        if not alive(node.pid):
            raise TopologyError(f"SuperNode {r.name}-{i} exited after start-up; read {node.log}")
    for proc, what in (*[(w, "ClientApp workers") for w in workers], (executor, "executor")):
        if not alive(proc.pid):
            raise TopologyError(f"{what} of {r.name} exited; read {proc.log}")
    say(
        r.name,
        f"{len(nodes)} SuperNodes online: "
        + ", ".join(f"{r.name}-{i} ({r.nodes[i]})" for i in range(len(nodes))),
    )


def up(
    fed: FederationConfig,
    home: Path,
    timeout: float = 120.0,
    echo=print,
    insecure: bool = False,
    layout: Layout | None = None,
) -> list[RegionEndpoints]:
    """Start every region's SuperLink, executor, proxy and SuperNodes, regions concurrently,
    and wait until each is ready, printing progress per process.

    Secure unless ``insecure``: see ``fedgate.server.launch.transport``. ``layout`` places
    the processes on hosts (default: all on this machine; a network-namespace layout needs
    its network built first, ``fedgate.server.launch.netns``); it is recorded with the
    transport, so later verbs reach the same addresses. On any failure, everything started
    so far is stopped again before the error propagates.
    """
    table = ProcessTable(home)
    if table.running():
        raise TopologyError(
            f"fedgate is already up in {home} ({len(table.running())} processes); "
            "run `fedgate down` first"
        )
    if layout is None or layout.local:
        _check_ports(fed)
    table.stop_all()  # forget (and make sure of) what a previous, dead topology left listed
    transport = Transport(Path(home), insecure, None if layout is None or layout.local else layout)
    if insecure:
        echo(f"[yellow]{INSECURE_WARNING}[/yellow]")
    # heavy imports (database, audit chain): only `up` needs them, not `status`
    from fedgate.server.audit.keys import ensure_region_key
    from fedgate.server.trust.actors import ensure_region_operator

    say = Progress(echo)
    devices: dict[str, list[str] | None] = {}
    for r in fed.regions:
        transport.prepare_region(r.name)
        ensure_region_key(home, r.name)
        ensure_region_operator(home, r.name, r.db or None)  # signs the devices' tokens
        # with TLS the devices enroll over the network once their region's service runs
        devices[r.name] = enroll_region_devices(home, r) if insecure else None
    transport.save()
    say("all", "keys and certificates ready" + (", devices enrolled locally" if insecure else ""))
    errors: list[BaseException] = []

    def region_up(r: RegionConfig) -> None:
        try:
            bring_up_region(table, fed, r, transport, devices[r.name], timeout, say)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=region_up, args=(r,), daemon=True) for r in fed.regions]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    except BaseException:
        table.stop_all()
        raise
    return [endpoints(r, transport) for r in fed.regions]


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
    link = port_open(region.superlink_port, transport.server_address(region.name))
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
