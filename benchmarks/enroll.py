"""Enrollment benchmark: devices enrolled per second through the region enrollment service.

The service runs as its own process (``fedgate region enrollment-service``, HTTPS with the
region's certificate, as ``fedgate up`` starts it) on SQLite and on PostgreSQL (a throwaway
cluster, fsync on). Each device runs the whole device side (``enroll_over_network``: pin
the CA, challenge, proof of possession, keys written 0600), sequentially and from 16
concurrent clients (there the network half only: pin, challenge, proof, answer checked, no
files, so the figure is the service's; the whole device side concurrently is reported
beside it; the CPU time the service, PostgreSQL and the clients spent per device in the
concurrent run is reported too: on a busy machine it moves far less than the rates). The
baseline, measured in the same run on the same database, is the
operator-local enrollment (``DatabaseDeviceRegistry.enroll`` called directly): the ratio
says what the network, TLS and proof of possession cost. No SuperLink: node keys are not
registered (that is one Control API call per device on top). Goal: 1,000 devices in < 60 s.

    python benchmarks/enroll.py [--devices 1000] [--sequential 200] [--clients 16]
                                [--backends sqlite,postgresql] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from enroll_kit import setup_region

from fedgate.clients.enroll_client import enroll_over_network, request_enrollment
from fedgate.crypto import generate_key, public_bytes
from fedgate.enrollment_wire import parse_token
from fedgate.procenv import flower_env
from fedgate.server.db.pgcluster import PgCluster
from fedgate.server.launch.processes import free_port_block, stop_trees, wait_until
from fedgate.server.trust.enroll_run import network_token, service_healthy
from fedgate.server.trust.enrollment import region_registry
from fedgate.server.trust.pki import region_tls

GOAL_DEVICES, GOAL_SECONDS = 1_000, 60.0


def _baseline(home: Path, db: str | None, n: int) -> float:
    """Operator-local enrollments per second (token issued and spent, straight on the DB)."""
    with region_registry(home, "eu", db, create=False) as registry:
        keys = [public_bytes(generate_key()) for _ in range(n)]
        t0 = time.perf_counter()
        for key in keys:
            registry.enroll(registry.issue_token(600), key, profile="pi")
        return n / (time.perf_counter() - t0)


def _tokens(home: Path, db: str | None, url: str, n: int) -> list[str]:
    with region_registry(home, "eu", db, create=False) as registry:
        expiry = time.time() + 3600
        return [network_token(home, "eu", url, registry.issue_token(3600), expiry)
                for _ in range(n)]  # fmt: skip


def _enroll_all(tokens: list[str], devices: Path, clients: int, write: bool = True) -> float:
    """Devices enrolled per second; ``write``: the whole device side (keys and anchors
    written, fsync'd), else the network half only (what the service sustains)."""

    def one(i: int) -> None:
        if write:
            enroll_over_network(tokens[i], "pi", devices / f"d{i}")
        else:
            request_enrollment(parse_token(tokens[i]), "pi", devices / f"d{i}")

    t0 = time.perf_counter()
    if clients == 1:
        for i in range(len(tokens)):
            one(i)
    else:
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(len(tokens))))
    return len(tokens) / (time.perf_counter() - t0)


def _cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) of process ``pid`` and of its children it has reaped (a
    PostgreSQL postmaster reaps its backends); 0.0 without one."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _postgres_cpu(cluster: PgCluster | None) -> float:
    """CPU seconds the cluster has used so far: the postmaster, the backends it reaped and
    the ones still running."""
    if cluster is None or cluster.root is None:
        return 0.0
    master = int((cluster.data / "postmaster.pid").read_text().split()[0])
    total = _cpu_seconds(master)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == master:  # a live backend: its own time (not yet reaped)
                total += sum(int(f) for f in stat[11:13]) / os.sysconf("SC_CLK_TCK")
    return total


def bench(
    home: Path,
    db: str | None,
    devices: int,
    sequential: int,
    clients: int,
    cluster: PgCluster | None = None,
) -> dict:
    setup_region(home, "eu", db)
    port = free_port_block(1)
    cmd = [str(Path(sys.executable).parent / "fedgate"), "region", "enrollment-service",
           "--region", "eu", "--home", str(home), "--port", str(port), "--fleet-address",
           "127.0.0.1:1", "--rate", "100000", "--burst", "100000",
           *(["--db", db] if db else [])]  # fmt: skip
    log = (home / "enroll-service.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=flower_env({}),
                            start_new_session=True)  # fmt: skip
    try:
        ca = region_tls(home, "eu").ca_cert
        wait_until(lambda: service_healthy(port, ca), 60, "enrollment service", log.name, proc.pid)
        url = f"https://127.0.0.1:{port}"
        baseline = _baseline(home, db, sequential)
        seq = _enroll_all(_tokens(home, db, url, sequential), home / "seq", 1)
        tokens = _tokens(home, db, url, devices)
        cpu0 = (_cpu_seconds(proc.pid), _postgres_cpu(cluster), time.process_time())
        conc = _enroll_all(tokens, home / "conc", clients, write=False)
        cpu1 = (_cpu_seconds(proc.pid), _postgres_cpu(cluster), time.process_time())
        whole = _enroll_all(_tokens(home, db, url, sequential), home / "whole", clients)
    finally:
        stop_trees([proc.pid], 5.0)
        log.close()
    return {
        "baseline_local_per_s": baseline,
        "sequential_per_s": seq,
        "concurrent_per_s": conc,  # network half only: what the service sustains
        "concurrent_with_device_writes_per_s": whole,
        "concurrent_clients": clients,
        "devices": devices,
        "seconds_for_devices": devices / conc,
        "ratio_sequential_to_local": seq / baseline,
        "ratio_concurrent_to_sequential": conc / seq,
        # CPU per enrollment in the concurrent run: far less load-dependent than the rates
        "service_cpu_ms_per_device": (cpu1[0] - cpu0[0]) * 1000 / devices,
        "postgres_cpu_ms_per_device": (cpu1[1] - cpu0[1]) * 1000 / devices,
        "clients_cpu_ms_per_device": (cpu1[2] - cpu0[2]) * 1000 / devices,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=GOAL_DEVICES, help="concurrent run")
    parser.add_argument("--sequential", type=int, default=200, help="sequential run")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"python": platform.python_version(), "backends": {}}
    results["load_average_1min_before"] = os.getloadavg()[0]
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        with tempfile.TemporaryDirectory() as tmp:
            if backend == "sqlite":
                r = bench(Path(tmp), None, args.devices, args.sequential, args.clients)
            elif backend == "postgresql":
                with PgCluster(fast=False) as cluster:
                    url = cluster.create_database("bench")
                    r = bench(Path(tmp), url, args.devices, args.sequential, args.clients,
                              cluster)  # fmt: skip
            else:
                parser.error(f"unknown backend {backend!r}")
        r["load_average_1min_after"] = os.getloadavg()[0]
        results["backends"][backend] = r
    ok = True
    print(f"{'backend':<11} {'local/s':>8} {'seq/s':>7} {'x local':>8} "
          f"{f'{args.clients} clients/s':>13} {f'{args.devices} in s':>10} "
          f"{'+writes/s':>10} {'CPU ms/device: service':>22} {'db':>5} {'clients':>7}")  # fmt: skip
    for backend, r in results["backends"].items():
        print(f"{backend:<11} {r['baseline_local_per_s']:>8.1f} {r['sequential_per_s']:>7.1f} "
              f"{r['ratio_sequential_to_local']:>8.2f} {r['concurrent_per_s']:>13.1f} "
              f"{r['seconds_for_devices']:>10.1f} "
              f"{r['concurrent_with_device_writes_per_s']:>10.1f} "
              f"{r['service_cpu_ms_per_device']:>22.1f} {r['postgres_cpu_ms_per_device']:>5.1f} "
              f"{r['clients_cpu_ms_per_device']:>7.1f} "
              f"(load {r['load_average_1min_after']:.1f})")  # fmt: skip
        ok &= r["concurrent_per_s"] * GOAL_SECONDS >= GOAL_DEVICES
    results["goal"] = {"devices": GOAL_DEVICES, "seconds": GOAL_SECONDS, "met": ok}
    print(
        f"goal ({GOAL_DEVICES:,} devices in < {GOAL_SECONDS:.0f} s): {'met' if ok else 'NOT met'}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
