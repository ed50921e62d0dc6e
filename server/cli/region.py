"""CLI verbs for ML engineers and operators: init, up, down, status, region run, demo."""

from __future__ import annotations

# A verb imports what only it needs (Flower, torch, SQLAlchemy, ...) inside its body, when it
# runs: `fedgate --help` loads none of it (tests/test_cli_startup.py).
import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fedgate.atomic_file import write_atomic
from fedgate.errors import UsageError
from fedgate.server.cli.common import (
    FEDERATION_FILE,
    ConfigOpt,
    HomeOpt,
    console,
    friendly,
    resolve,
    resolve_home,
    summary_table,
    write_report,
)
from fedgate.server.launch.config import (
    DEFAULT_FEDERATION_TOML,
    ConfigError,
    RegionConfig,
    validate_region,
)
from fedgate.server.launch.processes import ProcessTable


@friendly
def init_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="Where to write it.")] = Path(
        "federation.toml"
    ),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write the default federation config (regions eu and us) to a file to edit."""
    if config.exists() and not force:
        raise UsageError(f"{config} exists; pass --force to overwrite it")
    write_atomic(config, DEFAULT_FEDERATION_TOML)
    console.print(f"wrote {config}; start it with `fedgate up --config {config}`")


InsecureOpt = Annotated[
    bool,
    typer.Option(
        "--insecure",
        help="Experiments only: no TLS, no SuperNode authentication (prints a warning).",
    ),
]


@friendly
def up_cmd(home: HomeOpt = None, config: ConfigOpt = None, insecure: InsecureOpt = False) -> None:
    """Start per region a SuperLink (TLS, node authentication), its fleet-only proxy and its
    SuperNodes, as local loopback processes."""
    from fedgate.server.launch.topology import up

    home, fed = resolve(home, config)
    home.mkdir(parents=True, exist_ok=True)
    if config is not None:
        write_atomic(home / FEDERATION_FILE, Path(config).read_bytes())
    elif not (home / FEDERATION_FILE).exists():
        write_atomic(home / FEDERATION_FILE, DEFAULT_FEDERATION_TOML)
    up(fed, home, echo=console.print, insecure=insecure)
    console.print(f"up; stop with `fedgate down --home {home}`")


@friendly
def down_cmd(home: HomeOpt = None) -> None:
    """Stop exactly the processes `fedgate up` started under this home."""
    from fedgate.server.launch.topology import down

    home = resolve_home(home)
    stopped = down(home)
    console.print(f"stopped {len(stopped)} process(es)" if stopped else "nothing was running")


@friendly
def status_cmd(
    home: HomeOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Health per region (SuperLink, fleet proxy, SuperNodes online), every process fedgate
    started -- SuperLinks, executors and their ServerApps, proxies, SuperNodes, workers --
    alive or dead (a dead one with its last log lines), each region's last artifact and its
    gate state, and the global versions with their lineage."""
    from concurrent.futures import ThreadPoolExecutor

    from fedgate.server.launch.topology import region_health

    home, fed = resolve(home, config)
    table = ProcessTable(home)
    procs = table.status()
    if not procs:
        if as_json:
            import json

            from fedgate.server.launch.chain_status import chain_status

            console.print_json(json.dumps({"regions": [], "processes": [],
                                           **chain_status(home, fed)}))  # fmt: skip
            return
        console.print(f"nothing started under {home}")
        print_chain_status(home, fed)
        return
    with ThreadPoolExecutor(max_workers=max(1, len(fed.regions))) as pool:
        health = list(pool.map(lambda r: region_health(home, r), fed.regions))
    if as_json:
        import json

        rows = [{**dataclasses.asdict(h), "online": h.online} for h in health]
        procs_out = [{"name": p.process.name, "pid": p.process.pid, "alive": p.alive,
                      "children": list(p.children), "log": p.process.log,
                      "last_log": list(p.last_log)} for p in procs]  # fmt: skip
        from fedgate.server.launch.chain_status import chain_status

        console.print_json(json.dumps({"regions": rows, "processes": procs_out,
                                       **chain_status(home, fed)}))  # fmt: skip
        return
    ok, bad = "[green]up[/]", "[red]down[/]"
    regions = Table(title=f"fedgate regions in {home}")
    for col in ("region", "SuperLink", "executor", "proxy", "nodes online", "not online"):
        regions.add_column(col, overflow="fold")
    alive_names = {p.process.name for p in procs if p.alive}
    for h in health:
        missing = [f"{name} ({status})" for name, status in h.nodes if status != "online"]
        executor = f"executor-{h.region}" in alive_names
        regions.add_row(
            h.region, ok if h.superlink else bad, ok if executor else bad,
            ok if h.proxy else bad, f"{h.online}/{h.expected}",
            ", ".join(missing) or (h.error or "-"),
        )  # fmt: skip
    console.print(regions)
    listing = Table(title="processes")
    for col in ("name", "pid", "state", "log / last lines"):
        listing.add_column(col, overflow="fold")
    dead = 0
    for p in procs:
        if p.alive:
            state = "[green]running[/]"
            detail = "\n".join([p.process.log, *(f"runs {c}" for c in p.children)])
        else:
            dead += 1
            state = "[red]dead[/]"
            detail = "\n".join([p.process.log, *(f"[dim]{line[:160]}[/]" for line in p.last_log)])
        listing.add_row(p.process.name, str(p.process.pid), state, detail)
    console.print(listing)
    if dead:
        console.print(
            f"[yellow]{dead} process(es) dead; restart with `fedgate down --home {home}` then "
            f"`fedgate up --home {home}`[/]"
        )
    print_chain_status(home, fed)


def print_chain_status(home: Path, fed: Any) -> None:
    """The global tier: each region's last artifact and gate state, the global versions."""
    from fedgate.server.launch.chain_status import global_versions, region_gate

    colour = {"approved": "green", "refused": "red", "pending": "yellow", "none": "dim"}
    gate = Table(title="approval gate (last artifact per region)")
    for col in ("region", "artifact", "run", "val acc", "gate", "waiting"):
        gate.add_column(col, overflow="fold")
    for g in (region_gate(home, r.name, r.db or None) for r in fed.regions):
        acc = "-" if g.val_acc is None else f"{g.val_acc:.3f}"
        gate.add_row(g.region, g.artifact[:12] or "-", g.run_id or "-", acc,
                     f"[{colour.get(g.state, 'white')}]{g.state}[/]",
                     ", ".join(p[:12] for p in g.pending) or "-")  # fmt: skip
    console.print(gate)
    versions = global_versions(home)
    if not versions:
        console.print("no global version yet (`fedgate cycle` or `fedgate coordinator merge`)")
        return
    listing = Table(title=f"global versions (current: v{versions[0].version})")
    for col in ("version", "from", "rule", "weights", "lineage (region share artifact)"):
        listing.add_column(col, overflow="fold")
    for v in versions:
        lineage = "\n".join(f"{e['region']} {e['share']:.2f} {e['weights'][:12]}"
                            for e in v.lineage)  # fmt: skip
        if v.verified != "ok":
            lineage = f"[red]NOT VERIFIED: {v.verified}[/]"
        listing.add_row(f"v{v.version}", f"v{v.base_version}", v.rule, v.weights[:12], lineage)
    console.print(listing)


def overridden(region: RegionConfig, node_count: int | None = None, **changes: Any) -> RegionConfig:
    """``region`` with the CLI's overrides applied and checked by the config's own rules;
    ``node_count``: the devices a simulated run has."""
    changes = {k: v for k, v in changes.items() if v is not None}
    new = dataclasses.replace(region, **changes)
    validate_region(new, "command line", node_count)
    return new


def _start_point(home: Path, reg: RegionConfig, resume: str | None, init_from: str | None):
    """Where a run starts: fresh, after a run's last recorded round (``--resume``), or from a
    given model (``--init-from``); says which."""
    from fedgate.server.launch.run_records import StartPoint, init_point, resume_point

    if resume and init_from:
        raise ConfigError("--resume and --init-from exclude each other")
    if resume:
        start = resume_point(home, reg, resume, reg.rounds)
        console.print(f"resuming run {resume} at round {start.first_round}/{reg.rounds} "
                      f"from model {start.init_model[:12]}…")  # fmt: skip
        return start
    if init_from:
        start = init_point(home, reg, init_from)
        console.print(f"warm start from model {start.init_model[:12]}… ({init_from})")
        return start
    return StartPoint()


@friendly
def region_run_cmd(
    region: Annotated[str, typer.Option("--region", "-r", help="Region to train, e.g. eu.")],
    engine: Annotated[
        str, typer.Option(help="simulation (Ray, virtual devices) or deployment (`fedgate up`).")
    ] = "deployment",
    home: HomeOpt = None,
    config: ConfigOpt = None,
    rounds: Annotated[int | None, typer.Option(help="Override the region's rounds.")] = None,
    aggregator: Annotated[str | None, typer.Option(help="Override the aggregation rule.")] = None,
    f: Annotated[int | None, typer.Option(help="Byzantine clients to tolerate.")] = None,
    clients_per_round: Annotated[
        int | None, typer.Option(help="Clients sampled per round.")
    ] = None,
    min_clients: Annotated[int | None, typer.Option(help="Minimum accepted updates.")] = None,
    num_supernodes: Annotated[
        int, typer.Option(help="Virtual devices (simulation engine; default: the region's nodes).")
    ] = 0,
    timeout: Annotated[
        float, typer.Option(help="Stop the run (at its SuperLink) after this many seconds.")
    ] = 1800.0,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            metavar="RUN",
            help="Continue an interrupted, failed or stopped run after its last recorded "
            "round, from that round's stored model.",
        ),
    ] = None,
    mlflow: Annotated[
        bool, typer.Option("--mlflow", help="Also log per-round metrics and the plot to MLflow.")
    ] = False,
    mlflow_uri: Annotated[
        str | None,
        typer.Option(help="MLflow tracking URI (default: a SQLite store under the home)."),
    ] = None,
    init_from: Annotated[
        str | None,
        typer.Option(
            "--init-from",
            metavar="RUN|DIGEST|global:N",
            help="Warm start: a run's last model, a model digest in the blob store, or a "
            "global version.",
        ),
    ] = None,
    actor_key: Annotated[
        Path | None,
        typer.Option(
            "--actor-key",
            help="Your operator key that signs the launch (default: <home>/keys/operator.key).",
        ),
    ] = None,
) -> None:
    """Run federated training for one region and stream per-round metrics."""
    from fedgate.server.launch.runner import ensure_up, follow, submit
    from fedgate.server.launch.simulation import submit_simulation
    from fedgate.server.region.live_view import RunBoard

    if engine not in ("simulation", "deployment"):
        raise ConfigError(f"unknown engine {engine!r}; use 'simulation' or 'deployment'")
    home, fed = resolve(home, config)
    devices = num_supernodes or len(fed.region(region).nodes)
    sim_devices = devices if engine == "simulation" else None
    reg = overridden(
        fed.region(region), sim_devices, rounds=rounds, aggregator=aggregator, f=f,
        clients_per_round=clients_per_round, min_clients=min_clients,
    )  # fmt: skip
    tracking: bool | str = mlflow_uri or mlflow
    start = _start_point(home, reg, resume, init_from)
    if engine == "deployment":
        ensure_up(home, fed, reg)
        sub = submit(fed, reg, home, extra=start.run_config(), actor_key=actor_key)
        console.print(f"run {sub.run_id} submitted; follow it elsewhere with "
                      f"`fedgate region attach {sub.run_id} --region {reg.name}`")  # fmt: skip
    else:
        # overridden() checked that clients-per-round (>= min-clients) fits these devices
        sub = submit_simulation(fed, reg, home, devices)
    console.print(f"{engine} run of region {reg.name}: results in {sub.out_dir}")
    try:
        with RunBoard({reg.name: reg.rounds}, console) as board:
            done = follow([sub], lambda s, e: board.on_event(s.region, e), timeout)
    finally:
        write_report(sub.out_dir, home, tracking)
    console.print(summary_table(done, f"region {reg.name} ({engine})"))
    if engine == "simulation":  # where its records are; no accepted update is an error
        from fedgate.server.launch.simulation import finish

        finish(sub, done[reg.name], console.print)


def register(app: typer.Typer, region_app: typer.Typer) -> None:
    """Attach the operator verbs to the root app and ``run`` to ``fedgate region``."""
    app.command("init")(init_cmd)
    app.command("up")(up_cmd)
    app.command("down")(down_cmd)
    app.command("status")(status_cmd)
    region_app.command("run")(region_run_cmd)
