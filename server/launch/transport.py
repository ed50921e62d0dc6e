"""How a local topology's processes talk: TLS, SuperNode authentication, fleet-only proxy.

Secure by default: every SuperLink serves TLS with its region's certificate
(``fedgate.server.trust.pki``) and accepts only SuperNodes whose keys were registered
(``fedgate.server.trust.node_auth``); SuperNodes reach it only through the region's fleet-only
proxy (``fedgate.server.launch.fleet_proxy``), while run submission and node registration use the
SuperLink's own, operator-only address. ``--insecure`` drops TLS and node authentication
(the proxy stays, still fleet-only) and is recorded under the home so later verbs match it.

Ports of a region with base port P: P the SuperLink (operator only), P+1 the proxy (the one
address devices get), P+2 the enrollment service (HTTPS, devices enroll there), P+10+i
SuperNode i's runtime API (loopback, for its ClientApp worker).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fedgate.atomic_file import write_atomic
from fedgate.clients.node_key import ensure_node_key, supernode_flags
from fedgate.server.launch.config import ConfigError, RegionConfig, resolve
from fedgate.server.launch.fleet_proxy import ProxySpec
from fedgate.server.launch.hosts import LOCAL, Layout
from fedgate.server.launch.processes import ProcessTable
from fedgate.server.trust.node_auth import (
    ControlTarget,
    NodeKey,
    superlink_auth_flags,
)
from fedgate.server.trust.pki import ensure_region_pki, region_tls, superlink_tls_flags

HOST = LOCAL
TRANSPORT_FILE = "transport.json"
INSECURE_WARNING = (
    "warning: --insecure: no TLS and no SuperNode authentication; anything that can reach "
    "these ports can join the federation. For experiments only."
)


@dataclass(frozen=True)
class Transport:
    """The transport mode of one fedgate home, and where its hosts are (``layout``; None:
    every process on this machine at 127.0.0.1, ``fedgate.server.launch.hosts``)."""

    home: Path
    insecure: bool = False
    layout: Layout | None = None

    def server_address(self, region: str) -> str:
        """Where the region's SuperLink and proxy listen and the operator reaches them."""
        return HOST if self.layout is None else self.layout.server(region).address

    def fleet_address(self, region: str) -> str:
        """The name (or address) devices reach the region's fleet proxy by."""
        return HOST if self.layout is None else self.layout.server(region).reach

    def ca(self, region: str) -> Path | None:
        return None if self.insecure else region_tls(self.home, region).ca_cert

    def prepare_region(self, region: str) -> None:
        """Make (or renew) the region's certificates, for the names its hosts are reached
        by; nothing to do when insecure."""
        if not self.insecure:
            names = () if self.layout is None else self.layout.region(region).tls_names
            ensure_region_pki(self.home, region, names)

    def superlink_flags(self, region: str) -> list[str]:
        if self.insecure:
            return ["--insecure"]
        return [*superlink_tls_flags(region_tls(self.home, region)), *superlink_auth_flags()]

    def control(self, region: RegionConfig) -> ControlTarget:
        """The operator-only address: Control API (runs, node registration)."""
        address = self.server_address(region.name)
        return ControlTarget(f"{address}:{region.superlink_port}", self.ca(region.name))

    def proxy(self, region: RegionConfig) -> ProxySpec:
        address = self.server_address(region.name)
        upstream = f"{address}:{region.superlink_port}"
        if self.insecure:
            return ProxySpec(region.fleet_port, upstream, None, None, None, node_auth=False,
                             listen_host=address)  # fmt: skip
        tls = region_tls(self.home, region.name)
        # the DNS name the certificate is checked for (nginx checks names, not IP addresses)
        name = "localhost" if address == HOST else self.fleet_address(region.name)
        return ProxySpec(region.fleet_port, upstream, tls.server_cert, tls.server_key,
                         tls.ca_cert, upstream_name=name, listen_host=address)  # fmt: skip

    def node_key(self, device_dir: Path, comment: str) -> NodeKey | None:
        """The SuperNode's authentication key (made on first use); None when insecure."""
        return None if self.insecure else ensure_node_key(device_dir, comment=comment)

    def supernode_flags(self, region: RegionConfig, node: NodeKey | None) -> list[str]:
        """How a SuperNode reaches its region: through the proxy, with TLS and its key."""
        target = ["--superlink", f"{self.fleet_address(region.name)}:{region.fleet_port}"]
        ca = self.ca(region.name)
        if ca is None or node is None:
            return ["--insecure", *target]
        return [*supernode_flags(ca, node), *target]

    def save(self) -> None:
        path = self.home / "run" / TRANSPORT_FILE
        doc: dict = {"insecure": self.insecure}
        if self.layout is not None:
            doc["layout"] = self.layout.to_dict()
        write_atomic(path, json.dumps(doc))


def load_transport(home: Path) -> Transport:
    """The mode (and host layout) ``fedgate up`` recorded under ``home`` (secure and local
    when nothing was recorded)."""
    path = Path(home) / "run" / TRANSPORT_FILE
    doc = json.loads(path.read_text()) if path.exists() else {}
    layout = Layout.from_dict(doc["layout"]) if doc.get("layout") else None
    return Transport(Path(home), bool(doc.get("insecure")), layout)


def control_target(
    home: Path, region: str, superlink: str | None, root_certificates: Path | None, insecure: bool
) -> ControlTarget | None:
    """Where the region's Control API is: explicit, else the local topology if it runs."""
    if superlink:
        if insecure:
            return ControlTarget(superlink, None)
        ca = root_certificates or home / "regions" / region / "tls" / "ca.pem"
        return ControlTarget(superlink, ca)
    running = {p.name for p in ProcessTable(home).running()}
    if f"superlink-{region}" not in running:
        return None
    try:
        _, fed = resolve(home, None)
        return load_transport(home).control(fed.region(region))
    except ConfigError:
        return None


def local_service_url(home: Path, region: str) -> str | None:
    """The enrollment service ``fedgate up`` runs for ``region`` under ``home``, if it runs."""
    running = {p.name for p in ProcessTable(home).running()}
    if f"enroll-{region}" not in running:
        return None
    try:
        _, fed = resolve(home, None)
        return f"https://{HOST}:{fed.region(region).enroll_port}"
    except ConfigError:
        return None
