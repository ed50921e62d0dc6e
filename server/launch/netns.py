"""The network-namespace rendering of a host layout: every host its own Linux namespace.

``build(layout)`` makes, for each region, a bridge in this namespace (the operator host,
at ``.254`` of every region's network) and one namespace per host of the region (its
server host, each device host), joined to the bridge by a veth pair, with its own address.
Each namespace's ``/etc/hosts`` (``/etc/netns/<ns>/hosts``, which ``ip netns exec`` mounts)
names the region's server host ``fleet-<region>``. A device host has a route to its own
region's network only, so it cannot reach another region's fleet address (residency at the
network level). ``wan(layout, ...)`` shapes the device links; ``destroy`` removes it all.

Needs root (``CAP_NET_ADMIN``) and iproute2.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from fedgate.errors import UnavailableError
from fedgate.server.launch.hosts import Host, Layout, RegionHosts

NETNS_ETC = Path("/etc/netns")


class NetnsError(UnavailableError):
    """The namespaces or links could not be made (not root, no iproute2, a name taken)."""


def _ip(*args: str, namespace: str | None = None, check: bool = True) -> str:
    cmd = ["ip", *args] if namespace is None else ["ip", "-n", namespace, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def available() -> str:
    """Why namespaces cannot be built here ('' when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    return ""


@dataclass
class Network:
    """What ``build`` made, so that ``destroy`` removes exactly that."""

    namespaces: list[str] = field(default_factory=list)
    bridges: list[str] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)  # host name -> its veth here
    wan: str = ""  # the shaping applied to device links, as said by ``wan``


def _bridge_name(layout: Layout, k: int) -> str:
    prefix = _prefix(layout)
    return f"{prefix}b{k}"[:15]


def _prefix(layout: Layout) -> str:
    """The namespaces' common prefix (``fgp-xxxx`` of ``fgp-xxxx-eu``)."""
    first = next(iter(layout.regions.values())).server.namespace or "fgp"
    return first.rsplit("-", 1)[0]


def _hosts_file(region: RegionHosts) -> str:
    server = region.server
    return f"127.0.0.1 localhost\n{server.address} {' '.join(server.names)}\n"


def build(layout: Layout) -> Network:
    """Make the layout's namespaces, bridges and links; on failure, remove what was made."""
    if why := available():
        raise NetnsError(why)
    net = Network()
    try:
        for k, region in enumerate(layout.regions.values(), start=1):
            _build_region(layout, net, k, region)
    except BaseException:
        destroy(net)
        raise
    return net


def _build_region(layout: Layout, net: Network, k: int, region: RegionHosts) -> None:
    subnet = ipaddress.ip_network(region.subnet)
    bridge = _bridge_name(layout, k)
    _ip("link", "add", bridge, "type", "bridge")
    net.bridges.append(bridge)
    _ip("addr", "add", f"{subnet[254]}/{subnet.prefixlen}", "dev", bridge)
    _ip("link", "set", bridge, "up")
    for j, host in enumerate((region.server, *region.devices)):
        _build_host(net, bridge, f"{_prefix(layout)}{k}h{j}"[:15], host, subnet, region)


def _build_host(
    net: Network,
    bridge: str,
    veth: str,
    host: Host,
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network,
    region: RegionHosts,
) -> None:
    ns = host.namespace
    if ns is None:
        raise NetnsError(f"host {host.name} has no namespace in this layout")
    _ip("netns", "add", ns)
    net.namespaces.append(ns)
    etc = NETNS_ETC / ns
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "hosts").write_text(_hosts_file(region))
    _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    net.links[host.name] = veth
    _ip("link", "set", veth, "master", bridge, "up")
    _ip("link", "set", "lo", "up", namespace=ns)
    _ip("addr", "add", f"{host.address}/{subnet.prefixlen}", "dev", "eth0", namespace=ns)
    _ip("link", "set", "eth0", "up", namespace=ns)


def wan(
    layout: Layout, net: Network, rate: str = "10mbit", delay_ms: int = 25, loss: float = 1.0
) -> str:
    """Shape every device link like a phone's WAN: ``rate`` both ways (tbf) and, where the
    kernel has ``sch_netem``, ``delay_ms`` each way (so twice that round trip) and ``loss``
    percent lost. Returns what was applied."""
    applied = ""
    for region in layout.regions.values():
        for host in region.devices:
            outer = net.links[host.name]
            for dev, ns in ((outer, None), ("eth0", host.namespace)):
                applied = _shape(dev, ns, rate, delay_ms, loss)
    net.wan = applied
    return applied


def _shape(dev: str, ns: str | None, rate: str, delay_ms: int, loss: float) -> str:
    base = ["tc"] if ns is None else ["ip", "netns", "exec", ns, "tc"]
    netem = [*base, "qdisc", "add", "dev", dev, "root", "netem", "delay", f"{delay_ms}ms",
             "loss", f"{loss}%", "rate", rate]  # fmt: skip
    if subprocess.run(netem, capture_output=True, check=False).returncode == 0:
        return f"netem: {rate}, {delay_ms} ms each way ({2 * delay_ms} ms RTT), {loss}% loss"
    tbf = [*base, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "32kbit",
           "latency", "400ms"]  # fmt: skip
    done = subprocess.run(tbf, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetnsError(f"shaping {dev} failed: {done.stderr.strip()}")
    return f"tbf: {rate} only (this kernel has no sch_netem: no added delay or loss)"


def destroy(net: Network) -> None:
    """Remove the namespaces (their veth pairs go with them), bridges and hosts files."""
    for ns in reversed(net.namespaces):
        _ip("netns", "del", ns, check=False)
        shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
    for bridge in reversed(net.bridges):
        _ip("link", "del", bridge, check=False)
    net.namespaces.clear()
    net.bridges.clear()


def run_in(host: Host, cmd: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run ``cmd`` on ``host`` (in its namespace) and return the finished process."""
    return subprocess.run(
        host.wrap(cmd), capture_output=True, text=True, timeout=timeout, check=False
    )
