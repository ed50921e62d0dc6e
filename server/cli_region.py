"""CLI verbs for ML engineers and operators: init, up, down, status, region run, demo."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedgate.server.config import (
    DEFAULT_FEDERATION_TOML,
    ConfigError,
    FederationConfig,
    RegionConfig,
    default_federation,
    load_federation,
    validate_region,
)
from fedgate.server.processes import ProcessTable, TopologyError

console = Console()
err = Console(stderr=True, soft_wrap=True)

FEDERATION_FILE = "federation.toml"

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="State directory (default: $FEDGATE_HOME or ~/.fedgate)."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Federation TOML (default: <home>/federation.toml, else built-in)."
    ),
]


def default_home() -> Path:
    return Path(os.environ.get("FEDGATE_HOME") or Path.home() / ".fedgate")


def resolve(home: Path | None, config: Path | None) -> tuple[Path, FederationConfig]:
    """The home directory and the federation config a verb works on."""
    home = (home or default_home()).resolve()
    if config is not None:
        return home, load_federation(config)
    if (home / FEDERATION_FILE).is_file():
        return home, load_federation(home / FEDERATION_FILE)
    return home, default_federation()


def _expected_errors() -> tuple[type[Exception], ...]:
    """The failures ``friendly`` reports as one line. Called only when a verb raises (an
    ``except`` clause evaluates its expression then), so start-up imports none of them."""
    # heavy import: loaded only when a verb that runs fails
    from fedgate.server.db.engine import DatabaseError
    from fedgate.server.enrollment import EnrollmentError
    from fedgate.server.fleet_proxy import ProxyError
    from fedgate.server.node_auth import NodeAuthError
    from fedgate.server.pki import PkiError
    from fedgate.server.runner import RunFailedError

    return (ConfigError, TopologyError, RunFailedError, PkiError, ProxyError, NodeAuthError,
            EnrollmentError, DatabaseError)  # fmt: skip


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn fedgate's expected failures into one red line and exit code 1 (or 130 on Ctrl-C)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:  # first: Ctrl-C never waits for _expected_errors' imports
            err.print("[yellow]interrupted; everything fedgate started has been stopped[/]")
            raise typer.Exit(130) from None
        except _expected_errors() as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}")  # reasons may hold [...]
            raise typer.Exit(1) from None

    return wrapper


def init_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="Where to write it.")] = Path(
        "federation.toml"
    ),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write the default federation config (regions eu and us) to a file to edit."""
    if config.exists() and not force:
        err.print(f"[bold red]error:[/] {config} exists; pass --force to overwrite it")
        raise typer.Exit(1)
    config.write_text(DEFAULT_FEDERATION_TOML)
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
    from fedgate.server.topology import up

    home, fed = resolve(home, config)
    home.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (home / FEDERATION_FILE).write_text(Path(config).read_text())
    elif not (home / FEDERATION_FILE).exists():
        (home / FEDERATION_FILE).write_text(DEFAULT_FEDERATION_TOML)
    up(fed, home, echo=console.print, insecure=insecure)
    console.print(f"up; stop with `fedgate down --home {home}`")


@friendly
def down_cmd(home: HomeOpt = None) -> None:
    """Stop exactly the processes `fedgate up` started under this home."""
    from fedgate.server.topology import down

    home = (home or default_home()).resolve()
    stopped = down(home)
    console.print(f"stopped {len(stopped)} process(es)" if stopped else "nothing was running")


@friendly
def status_cmd(
    home: HomeOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Health per region (SuperLink, fleet proxy, SuperNodes online) and every process
    fedgate started -- SuperLinks, executors and their ServerApps, proxies, SuperNodes,
    workers -- alive or dead, a dead one with its last log lines."""
    from concurrent.futures import ThreadPoolExecutor

    from fedgate.server.topology import region_health

    home, fed = resolve(home, config)
    table = ProcessTable(home)
    procs = table.status()
    if not procs:
        console.print(f"nothing started under {home}")
        return
    with ThreadPoolExecutor(max_workers=max(1, len(fed.regions))) as pool:
        health = list(pool.map(lambda r: region_health(home, r), fed.regions))
    if as_json:
        import json

        rows = [{**dataclasses.asdict(h), "online": h.online} for h in health]
        procs_out = [{"name": p.process.name, "pid": p.process.pid, "alive": p.alive,
                      "children": list(p.children), "log": p.process.log,
                      "last_log": list(p.last_log)} for p in procs]  # fmt: skip
        console.print_json(json.dumps({"regions": rows, "processes": procs_out}))
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


def overridden(region: RegionConfig, **changes: Any) -> RegionConfig:
    """``region`` with the CLI's overrides applied and re-validated."""
    changes = {k: v for k, v in changes.items() if v is not None}
    new = dataclasses.replace(region, **changes)
    validate_region(new, "command line")
    return new


def summary_table(summaries: dict[str, dict[str, Any]], title: str) -> Table:
    """Per region: devices, rounds, accepted and rejected updates, accuracy on the region's
    validation split and on the common test split, and why updates were rejected."""
    table = Table(title=title)
    for col in (
        "region",
        "devices",
        "rounds",
        "accepted",
        "rejected",
        "val acc",
        "test",
        "rejected because",
    ):
        table.add_column(col, justify="left" if col in ("region", "rejected because") else "right")
    for region, s in summaries.items():
        reasons = s.get("rejected_by_reason") or {}
        table.add_row(
            region, str(s.get("devices", "-")), str(s.get("rounds", "-")),
            str(s.get("accepted", "-")), str(s.get("rejected", "-")),
            f"{s['val_acc']:.3f}" if "val_acc" in s else "-",
            f"{s['test_acc']:.3f}" if "test_acc" in s else "-",
            "\n".join(f"{k} x{v}" for k, v in reasons.items()) or "-",
        )  # fmt: skip
    return table


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
) -> None:
    """Run federated training for one region and stream per-round metrics."""
    from fedgate.server.live_view import RunBoard
    from fedgate.server.run_records import StartPoint, init_point, resume_point
    from fedgate.server.runner import ensure_up, follow, submit
    from fedgate.server.simulation import submit_simulation

    if engine not in ("simulation", "deployment"):
        raise ConfigError(f"unknown engine {engine!r}; use 'simulation' or 'deployment'")
    home, fed = resolve(home, config)
    reg = overridden(
        fed.region(region), rounds=rounds, aggregator=aggregator, f=f,
        clients_per_round=clients_per_round, min_clients=min_clients,
    )  # fmt: skip
    if resume and init_from:
        raise ConfigError("--resume and --init-from exclude each other")
    tracking: bool | str = mlflow_uri or mlflow
    start = StartPoint()
    if resume:
        start = resume_point(home, reg, resume, reg.rounds)
        console.print(f"resuming run {resume} at round {start.first_round}/{reg.rounds} "
                      f"from model {start.init_model[:12]}…")  # fmt: skip
    elif init_from:
        start = init_point(home, reg, init_from)
        console.print(f"warm start from model {start.init_model[:12]}… ({init_from})")
    if engine == "deployment":
        ensure_up(home, fed, reg)
        sub = submit(fed, reg, home, extra=start.run_config())
        console.print(f"run {sub.run_id} submitted; follow it elsewhere with "
                      f"`fedgate region attach {sub.run_id} --region {reg.name}`")  # fmt: skip
    else:
        n = num_supernodes or len(reg.nodes)
        if n < reg.min_clients:
            raise ConfigError(f"--num-supernodes {n} is below min-clients {reg.min_clients}")
        sub = submit_simulation(fed, reg, home, n)
    console.print(f"{engine} run of region {reg.name}: results in {sub.out_dir}")
    try:
        with RunBoard({reg.name: reg.rounds}, console) as board:
            done = follow([sub], lambda s, e: board.on_event(s.region, e), timeout)
    finally:
        write_report(sub.out_dir, home, tracking)
    console.print(summary_table(done, f"region {reg.name} ({engine})"))
    if engine == "simulation":  # where its records are; no accepted update is an error
        from fedgate.server.simulation import finish

        finish(sub, done[reg.name], console.print)


def write_report(out_dir: Path, home: Path, mlflow: bool | str) -> None:
    """The run's plot (and, when asked, its MLflow record), also after a failed run; a
    report that cannot be written is a warning, never the run's outcome."""
    from fedgate.server.run_report import finalize_report

    try:
        report = finalize_report(out_dir, home, mlflow)
    except Exception as exc:
        err.print(f"[yellow]warning: the run's report was not written completely: {exc}[/]")
        return
    console.print(f"plot: {report['plot']}")
    if report["mlflow_run_id"]:
        console.print(f"MLflow run {report['mlflow_run_id']} (store: {mlflow_store(home, mlflow)})")


def mlflow_store(home: Path, mlflow: bool | str) -> str:
    from fedgate.server.run_report import default_tracking_uri

    return mlflow if isinstance(mlflow, str) else default_tracking_uri(home)


def register(app: typer.Typer, region_app: typer.Typer) -> None:
    """Attach the operator verbs to the root app and ``run`` to ``fedgate region``."""
    from fedgate.server.demo import demo_cmd

    app.command("demo")(demo_cmd)
    app.command("init")(init_cmd)
    app.command("up")(up_cmd)
    app.command("down")(down_cmd)
    app.command("status")(status_cmd)
    region_app.command("run")(region_run_cmd)
