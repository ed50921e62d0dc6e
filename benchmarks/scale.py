"""Scale figure: round time in one region as the number of clients per round grows.

Two engines run the same regional ServerApp (``fedgate.server.region.app.run_region``: signed
instructions, envelope verification, aggregation, central evaluation, audit DB writes):

* ``simulation``: Flower's simulation engine (Ray) with N virtual clients, every client
  sampled every round (clients-per-round = N). Each virtual client is an enrolled device
  training on a fixed-size sample of the region's digits pool (``--examples``, its own
  ``data-dir``), so the work per client is the same at every N and the growth is the cost
  of more clients. ``--stock-data`` adds rows through ``submit_simulation`` unchanged, whose
  devices split the pool N ways (Dirichlet shards: fewer examples per client as N grows,
  and infeasible once the pool cannot give every client 2 examples).
* ``deployment``: ``fedgate up`` with N real SuperNodes (TLS, node auth, fleet proxy, one
  ClientApp worker per node) and ``flwr run``; the nodes hold Dirichlet shards of the pool.
  One of the N is a device joined as a real one joins (``benchmarks/_joined_device.py``:
  enrolled over the network with a token, ``fedgate client join``: its SuperNode and its
  ClientApp in one process), the other N-1 are ``fedgate up``'s local SuperNodes sharing the
  region's forking ClientApp worker (``--no-device``: all N from ``fedgate up``).

Beside them, in the same run and process tree, plain Flower does the same work
(``benchmarks/_plain_flower.py``): ``flower-sim`` is Flower's ``FedAvg`` ServerApp and a
ClientApp doing the device's local training on the same per-client data, on the same engine
settings; no signing, screening, robust rule or audit. fedgate's simulation child indexes
Flower's in-memory link state by destination node (``server/launch/indexed_linkstate.py``);
plain Flower runs stock, unless ``--flower-indexed`` gives it the same index (like for like on
the engine: what fedgate's own work costs over Flower's). ``vs Flower`` is fedgate's time per
round over plain Flower's at the same N. Peak memory is also reported per role (SuperLink,
ServerApp, one SuperNode, one ClientApp, the joined device's one process; the simulation
child and its Ray workers).

Seconds per round is the steady state: the time between the round records of rounds 1 and
R-1 divided by R-2 (the round loop is pipelined, so that span holds R-2 whole rounds; round
1 also pays start-up: Ray workers, FAB install, imports, and is reported on its own). The
ratio is to the smallest N of the same engine and rule in this run. Every case runs in a
fresh temporary home and everything it started is stopped after.

    python benchmarks/scale.py                                  # 10/100/1000 and 2/4/8
    python benchmarks/scale.py --sim 10,100,1000,5000 --nodes 2,4,8,16 --rounds 3
    python benchmarks/scale.py --limit 2000,5000,10000          # then look for the ceiling
    python benchmarks/scale.py --json benchmarks/results/scale.json --rules robust,mean
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from fedgate.server.launch.config import FederationConfig, RegionConfig, parse_federation
from fedgate.server.launch.processes import ProcessTable, descendants, free_port_block
from fedgate.server.launch.runner import RunFailedError, Submission, follow, submit
from fedgate.server.launch.simulation import (
    enroll_virtual_devices,
    run_child,
    sim_profiles,
    start_simulation,
    submit_simulation,
    write_run_config,
)
from fedgate.server.launch.topology import down, region_dir, up
from fedgate.strategies.rules import REGION_DEFAULT

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _joined_device import join_device, stop_device, wait_online
from _plain_deploy import start_plain, submit_plain_run
from _plain_flower import read_rounds, simulate_plain

RULES = {
    "mean": ("mean", 0, ""),
    "robust": (REGION_DEFAULT.aggregator, REGION_DEFAULT.f, REGION_DEFAULT.pre),
    "fedavg": ("mean", 0, ""),  # plain Flower's rows (the config's rule is not used there)
}
# fedgate's engine -> plain Flower's rows beside it
FLOWER_OF = {"simulation": "flower-sim", "deployment": "flower-deploy"}


@dataclasses.dataclass
class Row:
    """One measured case."""

    engine: str  # simulation | flower-sim | simulation-stock | deployment | flower-deploy
    rule: str  # mean | robust | fedavg (plain Flower)
    clients: int
    rounds: int
    status: str = "ok"  # ok | failed | infeasible
    seconds_per_round: float | None = None
    first_round_s: float | None = None
    wall_s: float = 0.0
    peak_rss_mib: float | None = None
    all_accepted: bool = False
    ratio: float | None = None
    vs_flower: float | None = None
    roles_mib: dict[str, float] = dataclasses.field(default_factory=dict)
    note: str = ""


# -- configuration ---------------------------------------------------------------------------


def federation(
    clients: int, rule: str, rounds: int, timeout: float, port: int, joined: int = 0
) -> FederationConfig:
    """One region ``eu``: all ``clients`` sampled every round; as many SuperNodes, ``joined``
    of them devices that join over the network (``joined-devices``)."""
    aggregator, f, pre = RULES[rule]
    nodes = json.dumps(list(sim_profiles(clients))[: clients - joined])
    text = f"""
[federation]
name = "scale"
seed = 0
alpha = 0.5
[regions.eu]
rounds = {rounds}
clients-per-round = {clients}
min-clients = {clients}
aggregator = "{aggregator}"
f = {f}
pre = "{pre}"
round-timeout = {timeout}
port = {port}
nodes = {nodes}
joined-devices = {str(joined > 0).lower()}
"""
    return parse_federation(tomllib.loads(text), "scale benchmark")


# -- the simulation engine with fixed-size client data -----------------------------------------


def write_client_data(home: Path, fed: FederationConfig, clients: int, examples: int) -> Path:
    """``<home>/client-data/<i>/data.npz``: ``examples`` digits per client, drawn (seeded by
    the client id, without replacement) from the region's training pool."""
    from fedgate.models.data import region_pool

    pool = region_pool("eu", fed.region_names, fed.seed)
    root = home / "client-data"
    for i in range(clients):
        idx = np.random.default_rng([fed.seed, i]).choice(len(pool), examples, replace=False)
        (root / str(i)).mkdir(parents=True)
        np.savez(root / str(i) / "data.npz", x=pool.x[idx], y=pool.y[idx])
    return root


def simulate_fixed(config: dict[str, Any], clients: int, data_root: Path) -> int:
    """Child process: the region's ServerApp and ``clients`` virtual devices, each device
    ``sim-<i>`` with its own ``data-dir`` (else as ``fedgate.server.launch.simulation.run_child``,
    which also turns an engine failure into a ``failed`` record and a non-zero exit)."""
    return run_child(config, clients, data_root=data_root)


def submit_fixed(
    fed: FederationConfig, region: RegionConfig, home: Path, clients: int, examples: int
) -> Submission:
    """Start ``simulate_fixed`` in its own session; ``follow`` tracks it like any run."""
    out_dir = region_dir(home, region.name) / "runs" / f"scale-{clients}"
    out_dir.mkdir(parents=True)
    enroll_virtual_devices(home, region, out_dir, clients)
    data_root = write_client_data(home, fed, clients, examples)
    config_path = write_run_config(fed, region, home, out_dir)
    child = [__file__, "--child", str(config_path), "--child-clients", str(clients),
             "--child-data", str(data_root)]  # fmt: skip
    return start_simulation(region, home, out_dir, child)


# -- measuring ---------------------------------------------------------------------------------


ROLES = (  # (role, what its command line holds), first match wins
    ("device", ("client join",)),  # a joined device: its SuperNode and ClientApp, one process
    ("superlink", ("superlink_main", "flower-superlink")),
    ("serverapp", ("flwr-serverapp", "--child")),
    ("supernode", ("flower-supernode",)),
    ("clientapp", ("fedgate.clients.worker", "flwr-clientapp")),
    ("ray-worker", ("ray::", "default_worker.py")),
)


def role_of(cmdline: str) -> str:
    return next((role for role, marks in ROLES if any(m in cmdline for m in marks)), "other")


class RssSampler(threading.Thread):
    """Peak resident memory (MiB) of some processes and all their descendants (every 0.5 s):
    ``peak`` of the whole tree, and ``roles`` the peak of any one process of each role."""

    def __init__(self, roots: list[int]) -> None:
        super().__init__(daemon=True)
        self.roots, self.peak, self.stop = roots, 0.0, threading.Event()
        self.roles: dict[str, float] = {}
        self._cmd: dict[int, str] = {}

    def _role(self, pid: int) -> str:
        if pid not in self._cmd:
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                return "other"
            self._cmd[pid] = role_of(raw.replace(b"\0", b" ").decode(errors="replace"))
        return self._cmd[pid]

    def _tree_rss(self) -> float:
        children: dict[int, list[int]] = {}
        rss: dict[int, int] = {}
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(stat[1]), []).append(int(entry))
                rss[int(entry)] = int(stat[21]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, IndexError, ValueError):
                continue
        total, todo, seen = 0, list(self.roots), set()
        while todo:
            pid = todo.pop()
            if pid not in seen:
                seen.add(pid)
                mib = rss.get(pid, 0) / 2**20
                total += rss.get(pid, 0)
                role = self._role(pid)
                self.roles[role] = max(self.roles.get(role, 0.0), round(mib, 1))
                todo += children.get(pid, [])
        return total / 2**20

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.peak = max(self.peak, self._tree_rss())


def peak_of(pid: int) -> float | None:
    """A live process's own peak resident memory (VmHWM, MiB); None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    line = next((x for x in status.splitlines() if x.startswith("VmHWM:")), None)
    return round(int(line.split()[1]) / 1024, 1) if line else None


def measure(sub: Submission, row: Row, timeout: float, more: tuple[int, ...] = ()) -> Row:
    """Follow ``sub`` to the end and fill ``row`` from its round records; peak memory
    counts the run's process tree, every process ``fedgate up`` started and ``more``."""
    topology = [p.pid for p in ProcessTable(sub.home).load()]
    sampler = RssSampler([sub.proc.pid, *topology, *more])
    sampler.start()
    t0 = time.monotonic()
    try:
        follow([sub], lambda s, e: None, timeout)
    except RunFailedError as exc:
        row.status, row.note = "failed", str(exc)
    finally:
        sampler.stop.set()
        row.wall_s = time.monotonic() - t0
        row.peak_rss_mib = round(sampler.peak, 1)
        row.roles_mib = dict(sampler.roles)
    ts = {e["round"]: e["ts"] for e in sub.events if e["kind"] == "round"}
    initial = next((e["ts"] for e in sub.events if e["kind"] == "initial"), None)
    rounds = [e for e in sub.events if e["kind"] == "round"]
    row.all_accepted = bool(rounds) and all(e["accepted"] == e["sampled"] for e in rounds)
    steady_state(row, ts, initial)
    if row.status == "ok" and not row.all_accepted:
        row.note = "not every sampled client was accepted in every round"
    return row


def steady_state(row: Row, ts: dict[int, float], initial: float | None) -> None:
    """``row``'s round-1 and steady-state seconds per round from round timestamps."""
    if initial is not None and 1 in ts:
        row.first_round_s = ts[1] - initial
    if row.rounds - 1 in ts and 1 in ts and row.rounds >= 3:
        row.seconds_per_round = (ts[row.rounds - 1] - ts[1]) / (row.rounds - 2)


def submit_plain(
    fed: FederationConfig,
    region: RegionConfig,
    home: Path,
    clients: int,
    examples: int,
    indexed: bool = False,
) -> Submission:
    """Plain Flower's simulation of the same run (``_plain_flower.simulate_plain``)."""
    out_dir = region_dir(home, region.name) / "runs" / f"plain-{clients}"
    out_dir.mkdir(parents=True)
    data_root = write_client_data(home, fed, clients, examples)
    config_path = write_run_config(fed, region, home, out_dir)
    child = [__file__, "--child-plain", str(config_path), "--child-clients", str(clients),
             "--child-data", str(data_root), *(["--child-indexed"] if indexed else [])]  # fmt: skip
    return start_simulation(region, home, out_dir, child)


def measure_plain(sub: Submission, row: Row, timeout: float) -> Row:
    """Wait for plain Flower's child and fill ``row`` from its ``rounds.jsonl``."""
    sampler = RssSampler([sub.proc.pid])
    sampler.start()
    t0 = time.monotonic()
    try:
        code = sub.proc.wait(timeout)
    except Exception:
        code = None
        sub.proc.kill()
        sub.proc.wait()
    finally:
        sampler.stop.set()
        row.wall_s = time.monotonic() - t0
        row.peak_rss_mib = round(sampler.peak, 1)
        row.roles_mib = dict(sampler.roles)
    ts = read_rounds(sub.out_dir)
    row.all_accepted = all(r in ts for r in range(1, row.rounds + 1))
    if code != 0 or not row.all_accepted:
        row.status, row.note = "failed", f"exit {code}, rounds {sorted(ts)}; read {sub.log}"
    steady_state(row, ts, ts.get(0))
    return row


def serverapp_running(procs: list) -> bool:
    """Whether a ``flwr-serverapp`` runs under any of ``procs`` (plain Flower's SuperLink
    starts one per run)."""
    for pid in [d for p in procs for d in descendants(p.pid)]:
        try:
            if b"flwr-serverapp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def measure_plain_deployed(
    fed: FederationConfig, region: RegionConfig, home: Path, row: Row, timeout: float
) -> Row:
    """Plain Flower on the deployment engine (``_plain_deploy``): start it, submit the run,
    wait for its last round's record; memory of every process it started."""
    out_dir = region_dir(home, region.name) / "runs" / f"plain-{row.clients}"
    out_dir.mkdir(parents=True)
    config = json.loads(write_run_config(fed, region, home, out_dir).read_text())
    t0 = time.monotonic()
    port = start_plain(home, row.clients, list(region.nodes), max(120.0, 10.0 * row.clients))
    sampler = RssSampler([p.pid for p in ProcessTable(home).load()])
    sampler.start()
    try:
        submit_plain_run(home, port, config, out_dir, row.clients)
        deadline = time.monotonic() + timeout
        seen = False  # the SuperLink's ServerApp process: once it is gone, no round follows
        while row.rounds not in read_rounds(out_dir) and time.monotonic() < deadline:
            running = serverapp_running(ProcessTable(home).load())
            if seen and not running:
                row.note = "the ServerApp exited before the last round"
                break
            seen = seen or running
            time.sleep(0.5)
    finally:
        sampler.stop.set()
        row.wall_s = time.monotonic() - t0
        row.peak_rss_mib = round(sampler.peak, 1)
        row.roles_mib = dict(sampler.roles)
    ts = read_rounds(out_dir)
    row.all_accepted = all(r in ts for r in range(1, row.rounds + 1))
    if not row.all_accepted:
        row.status = "failed"
        row.note = f"{row.note or 'timed out'}: rounds {sorted(ts)}; logs in {home}"
    steady_state(row, ts, ts.get(0))
    return row


def infeasible(engine: str, clients: int, fed: FederationConfig) -> str:
    """Why the stock data split cannot serve ``clients`` virtual devices ('' if it can)."""
    if engine != "simulation-stock":
        return ""
    from fedgate.models.data import dirichlet_partition, region_pool

    pool = region_pool("eu", fed.region_names, fed.seed)
    try:
        dirichlet_partition(pool.y, clients, fed.alpha, seed=fed.seed)
    except ValueError as exc:
        return f"data split: {exc}"
    return ""


def run_case(engine: str, clients: int, rule: str, args: argparse.Namespace) -> Row:
    """One case in a fresh home; everything it started is stopped before returning."""
    row = Row(engine, rule, clients, args.rounds)
    port = free_port_block(clients + 16) if engine == "deployment" else 20000
    joined = int(engine == "deployment" and not args.no_device)
    try:
        fed = federation(clients, rule, args.rounds, args.round_timeout, port, joined)
    except ValueError as exc:  # e.g. the robust rule needs more clients than this
        row.status, row.note = "infeasible", str(exc)
        return row
    if why := infeasible(engine, clients, fed):
        row.status, row.note = "infeasible", why
        return row
    eu = fed.region("eu")
    home = Path(tempfile.mkdtemp(prefix=f"fedgate-scale-{engine}-{clients}-"))
    device, more = None, ()
    try:
        if engine == "simulation":
            sub = submit_fixed(fed, eu, home, clients, args.examples)
        elif engine == "flower-sim":
            sub = submit_plain(fed, eu, home, clients, args.examples, args.flower_indexed)
            measure_plain(sub, row, args.run_timeout)
            return row
        elif engine == "flower-deploy":
            measure_plain_deployed(fed, eu, home, row, args.run_timeout)
        elif engine == "simulation-stock":
            sub = submit_simulation(fed, eu, home, clients)
        else:
            up(fed, home, timeout=max(120.0, 10.0 * clients), echo=lambda *_: None)
            if joined:
                device = join_device(home, eu, clients - 1, clients)
                more = (device.pid,)
                wait_online(home, eu, clients, device, timeout=max(120.0, 10.0 * clients))
            sub = submit(fed, eu, home)
        if engine != "flower-deploy":
            measure(sub, row, args.run_timeout, more)
        if device is not None and (hwm := peak_of(device.pid)):  # exact, not sampled
            row.roles_mib["device"] = max(row.roles_mib.get("device", 0.0), hwm)
    except Exception as exc:  # a case that cannot even start is a measured failure too
        row.status, row.note = "failed", f"{type(exc).__name__}: {exc}"
    finally:
        if device is not None:
            stop_device(device)
        down(home)  # no-op unless `fedgate up` started processes under this home
        ProcessTable(home).stop_all()  # plain Flower's deployment (no-op for the others)
        if row.status == "ok" or not args.keep_failed:
            shutil.rmtree(home, ignore_errors=True)
        else:
            row.note += f" (home kept: {home})"
    return row


def baseline(rows: list[Row], row: Row) -> Row | None:
    """The smallest measured case of ``row``'s engine and rule."""
    same = [r for r in rows if (r.engine, r.rule) == (row.engine, row.rule)
            and r.seconds_per_round and r.status == "ok"]  # fmt: skip
    return min(same, key=lambda r: r.clients) if same else None


def add_ratios(rows: list[Row]) -> None:
    for row in rows:
        base = baseline(rows, row)
        if row.seconds_per_round and base and row.status == "ok":
            row.ratio = row.seconds_per_round / base.seconds_per_round
        flower = next((r for r in rows if r.engine == FLOWER_OF.get(row.engine)
                       and r.clients == row.clients and r.seconds_per_round), None)  # fmt: skip
        if row.seconds_per_round and flower is not None:
            row.vs_flower = row.seconds_per_round / flower.seconds_per_round


def growth(rows: list[Row], row: Row) -> float | None:
    """s/round at N over s/round at N/10 of the same engine and rule (None if not run)."""
    prev = next((r for r in rows if (r.engine, r.rule) == (row.engine, row.rule)
                 and r.clients * 10 == row.clients and r.seconds_per_round), None)  # fmt: skip
    if prev is None or not row.seconds_per_round:
        return None
    return row.seconds_per_round / prev.seconds_per_round


def table(rows: list[Row]) -> str:
    head = (f"{'engine':<17}{'rule':<7}{'clients':>8}{'s/round':>10}{'ratio':>8}{'x/10x':>7}"
            f"{'vs Flower':>10}{'round 1 s':>10}{'wall s':>8}{'peak MiB':>9}  status")  # fmt: skip
    lines = [head]
    for r in rows:
        spr = f"{r.seconds_per_round:.2f}" if r.seconds_per_round else "-"
        ratio = f"{r.ratio:.2f}" if r.ratio else "-"
        grow = growth(rows, r)
        vs = f"{r.vs_flower:.2f}" if r.vs_flower else "-"
        first = f"{r.first_round_s:.1f}" if r.first_round_s else "-"
        rss = f"{r.peak_rss_mib:.0f}" if r.peak_rss_mib else "-"
        status = r.status + (f": {r.note}" if r.note else "")
        lines.append(
            f"{r.engine:<17}{r.rule:<7}{r.clients:>8}{spr:>10}{ratio:>8}"
            f"{f'{grow:.1f}' if grow else '-':>7}{vs:>10}{first:>10}{r.wall_s:>8.0f}{rss:>9}"
            f"  {status}"
        )
    lines += ["", "peak RSS per process (MiB), by role:"]
    for r in rows:
        roles = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r.roles_mib.items()) if v)
        lines.append(f"  {r.engine} {r.rule} {r.clients}: {roles or '-'}")
    lines += [
        "ratio: to the smallest N of the same engine and rule; x/10x: to N/10 (goal 100 -> 1,000",
        "<= 11); vs Flower: fedgate over plain Flower at the same N (goal <= 1.15)",
    ]
    return "\n".join(lines)


def environment() -> str:
    import flwr
    import torch

    load = os.getloadavg()
    aggregator, f, pre = RULES["robust"]
    return (
        f"python {platform.python_version()}, flwr {flwr.__version__}, torch {torch.__version__},"
        f" {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f};"
        f" robust = {aggregator} f={f} pre={pre or '-'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sim", default="10,100,1000", help="virtual clients per case")
    parser.add_argument("--nodes", default="2,4,8", help="real SuperNodes per case")
    parser.add_argument("--limit", default="", help="larger populations to try after --sim, "
                        "in order, until one fails or exceeds --max-round-seconds")  # fmt: skip
    parser.add_argument("--max-round-seconds", type=float, default=600.0)
    parser.add_argument("--stock-data", action="store_true",
                        help="also run --sim through submit_simulation's data split")  # fmt: skip
    parser.add_argument(
        "--rules",
        default="robust",
        help="fedgate rules to run: robust (the region default) and/or mean",
    )
    parser.add_argument("--no-flower", action="store_true", help="skip plain Flower's rows")
    parser.add_argument("--flower-indexed", action="store_true", help="plain Flower's simulation "
                        "with fedgate's link-state index too (default: stock Flower)")  # fmt: skip
    parser.add_argument("--no-device", action="store_true", help="deployment: every node from "
                        "`fedgate up`, none joined with `fedgate client join`")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run (>= 3)")
    parser.add_argument("--examples", type=int, default=32, help="examples per virtual client")
    parser.add_argument("--round-timeout", type=float, default=1800.0)
    parser.add_argument("--run-timeout", type=float, default=7200.0)
    parser.add_argument("--keep-failed", action="store_true", help="keep a failed case's home")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-data", help=argparse.SUPPRESS)
    parser.add_argument("--child-plain", help=argparse.SUPPRESS)
    parser.add_argument("--child-indexed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_plain:
        if args.child_indexed:
            from fedgate.server.launch.indexed_linkstate import index_messages_by_node

            index_messages_by_node()
        config = json.loads(Path(args.child_plain).read_text())
        out = Path(args.child_plain).parent
        return simulate_plain(config, args.child_clients, out, Path(args.child_data))
    if args.child:
        config = json.loads(Path(args.child).read_text())
        return simulate_fixed(config, args.child_clients, Path(args.child_data))
    if args.rounds < 3:
        parser.error("--rounds must be at least 3 (round 1 is start-up, the last is short)")

    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x.strip()]

    rules = [r for r in args.rules.split(",") if r.strip()]
    if unknown := set(rules) - {"mean", "robust"}:
        parser.error(f"--rules: unknown {sorted(unknown)}; choose robust and/or mean")
    plan = []
    for n in ints(args.sim):  # per N, plain Flower then fedgate: both under the same load
        plan += [] if args.no_flower else [("flower-sim", n, "fedavg")]
        plan += [("simulation", n, rule) for rule in rules]
    if args.stock_data:
        plan += [("simulation-stock", n, "mean") for n in ints(args.sim)]
    for n in ints(args.nodes):  # per N, plain Flower then fedgate, as above
        plan += [] if args.no_flower else [("flower-deploy", n, "fedavg")]
        plan += [("deployment", n, rule) for rule in rules]
    flower = "indexed like fedgate's" if args.flower_indexed else "stock"
    print(f"== scale benchmark, {time.strftime('%Y-%m-%d %H:%M')}; {environment()}; "
          f"plain Flower's link state {flower}", flush=True)  # fmt: skip
    rows: list[Row] = []
    for engine, n, rule in plan:
        rows.append(run_case(engine, n, rule, args))
        print(f"   {engine} {rule} {n}: {rows[-1].status}, "
              f"{rows[-1].seconds_per_round or 0:.2f} s/round", flush=True)  # fmt: skip
    for n in ints(args.limit):
        row = run_case("simulation", n, "mean", args)
        rows.append(row)
        print(f"   limit search {n}: {row.status}, {row.seconds_per_round or 0:.2f} s/round",
              flush=True)  # fmt: skip
        too_slow = (row.seconds_per_round or 0) > args.max_round_seconds
        if row.status != "ok" or not row.all_accepted or too_slow:
            break
    add_ratios(rows)
    print(table(rows))
    print(f"== done; load average now {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"environment": environment(), "rows": [dataclasses.asdict(r) for r in rows]}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if all(r.status != "failed" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
