"""The ML engineer's run verbs: ``fedgate runs``, ``region stop``, ``region attach``."""

from __future__ import annotations

# A verb imports what only it needs (Flower, torch, SQLAlchemy, ...) inside its body, when it
# runs: `fedgate --help` loads none of it (tests/test_cli_startup.py).
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fedgate.server.cli.common import (
    ConfigOpt,
    HomeOpt,
    console,
    friendly,
    resolve,
    summary_table,
)
from fedgate.server.launch.config import ConfigError, FederationConfig, RegionConfig

RegionOpt = Annotated[str, typer.Option("--region", "-r", help="The run's region, e.g. eu.")]
RunArg = Annotated[str, typer.Argument(help="The run id (see `fedgate runs`).")]


def run_rows(home: Path, fed: FederationConfig, region: str | None) -> list[dict[str, Any]]:
    """Every recorded run of the chosen regions, newest first: id, state, rounds, final
    accuracy, who launched it, when, and what it started from."""
    from fedgate.server.launch.run_records import region_store

    regions = [fed.region(region)] if region else list(fed.regions)
    rows = []
    for reg in regions:
        db_file = Path(home) / f"region-{reg.name}.db"
        if not reg.db and not db_file.exists():
            continue  # never opened: listing must not create a database
        store = region_store(home, reg)
        for info in store.runs():
            rounds = store.rounds(info.id) if info.rounds else []
            last = rounds[-1].metrics if rounds else {}
            cfg = info.config or {}
            rows.append(
                {
                    "run": info.id, "region": info.region, "state": info.status,
                    "rounds": f"{rounds[-1].round if rounds else 0}/{cfg.get('rounds', '?')}",
                    "val_acc": last.get("val-acc"), "test_acc": last.get("test-acc"),
                    "launched_by": info.launched_by,
                    "started": info.started_at.strftime("%Y-%m-%d %H:%M"),
                    "when": info.started_at.strftime("%m-%d %H:%M"),
                    "finished": info.finished_at.strftime("%H:%M") if info.finished_at else "",
                    "from": _origin(cfg),
                }
            )  # fmt: skip
    return sorted(rows, key=lambda r: r["started"], reverse=True)


def _origin(cfg: dict[str, Any]) -> str:
    if cfg.get("resume-from"):
        return f"resumes {cfg['resume-from']} from round {cfg.get('first-round')}"
    if cfg.get("init-model"):
        return f"model {str(cfg['init-model'])[:12]}…"
    return ""


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@friendly
def runs_cmd(
    region: Annotated[str | None, typer.Option("--region", "-r", help="Only this region.")] = None,
    home: HomeOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Runs per region, newest first: state, rounds done, final accuracy, who, when."""
    home, fed = resolve(home, config)
    rows = run_rows(home, fed, region)
    if as_json:
        console.print_json(json.dumps(rows))
        return
    if not rows:
        console.print(f"no runs recorded under {home}")
        return
    from rich import box

    table = Table(title=f"runs in {home}", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    widths = {"run": 10, "region": 5, "state": 8, "rounds": 6, "val": 5, "test": 5,
              "by": 7, "started": 11}  # fmt: skip
    for col, width in widths.items():
        table.add_column(col, min_width=width, overflow="fold")
    colour = {"finished": "green", "running": "cyan", "failed": "red", "interrupted": "yellow",
              "stopped": "yellow"}  # fmt: skip
    for r in rows:
        state = f"[{colour.get(r['state'], 'white')}]{r['state']}[/]"
        run = r["run"] + (f"\n[dim]{r['from']}[/]" if r["from"] else "")
        table.add_row(run, r["region"], state, r["rounds"], _acc(r["val_acc"]),
                      _acc(r["test_acc"]), r["launched_by"], r["when"])  # fmt: skip
    console.print(table)
    console.print(
        "val: accuracy on the region's validation split; test: on the common test split no "
        "region trains on (last recorded round); --json for everything",
        style="dim",
    )


@friendly
def stop_cmd(
    run: RunArg,
    region: RegionOpt,
    home: HomeOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Stop a pending or running run at its SuperLink and record it stopped: it never starts
    or continues by itself later (resume it deliberately with `region run --resume`)."""
    from fedgate.server.launch.run_records import region_store
    from fedgate.server.launch.runner import launched_by
    from fedgate.server.launch.superlink_runs import link_run, stop_link_run
    from fedgate.server.launch.transport import control_target

    home, fed = resolve(home, config)
    reg = fed.region(region)
    target = control_target(home, reg.name, None, None, False)  # None: SuperLink not running
    at_link = None if target is None else link_run(target, run)
    store = region_store(home, reg)
    info = store.run(run)
    if at_link is None and info is None:
        raise ConfigError(f"region {reg.name} knows no run {run}; see `fedgate runs`")
    if info is None or info.status == "running":  # recorded first: it never starts later
        store.stop_run(run, reg.name, launched_by(), "stopped with `fedgate region stop`")
        console.print(f"run {run} recorded stopped in region {reg.name}'s database")
    else:
        console.print(f"run {run} had already ended ({info.status}); record unchanged")
    stopped = target is not None and stop_link_run(target, run)
    if stopped:
        console.print(f"run {run} stopped at the SuperLink")
    elif target is None:
        console.print(f"[yellow]region {reg.name}'s SuperLink is not running; nothing to stop "
                      "there (a restarted SuperLink stops runs left pending)[/]")  # fmt: skip


def run_out_dir(home: Path, reg: RegionConfig, run: str) -> Path:
    """Where ``run`` writes its progress: from its recorded config, else by its run-id file."""
    from fedgate.server.launch.run_records import region_store
    from fedgate.server.launch.topology import region_dir

    info = region_store(home, reg).run(run)
    if info is not None and info.config.get("out-dir"):
        return Path(info.config["out-dir"])
    for marker in (region_dir(home, reg.name) / "runs").glob("*/run-id"):
        if marker.read_text().strip() == run:
            return marker.parent
    raise ConfigError(f"region {reg.name} knows no run {run}; see `fedgate runs`")


@friendly
def attach_cmd(
    run: RunArg,
    region: RegionOpt,
    home: HomeOpt = None,
    config: ConfigOpt = None,
    timeout: Annotated[float, typer.Option(help="Stop following after this many s.")] = 1800.0,
) -> None:
    """Live view of a running run (its rounds so far, then each new one). Ctrl-C detaches;
    the run goes on."""
    from fedgate.server.launch.runner import attach, follow
    from fedgate.server.region.live_view import RunBoard

    home, fed = resolve(home, config)
    reg = fed.region(region)
    sub = attach(home, reg, run, run_out_dir(home, reg, run))
    console.print(f"attached to run {run} of region {reg.name} ({sub.out_dir}); Ctrl-C detaches")
    try:
        with RunBoard({reg.name: reg.rounds}, console) as board:
            done = follow([sub], lambda s, e: board.on_event(s.region, e), timeout,
                          detach_on_interrupt=True)  # fmt: skip
    except KeyboardInterrupt:
        console.print(f"detached; run {run} goes on")
        raise typer.Exit(0) from None
    console.print(summary_table(done, f"region {reg.name}: run {run}"))


def register(app: typer.Typer, region_app: typer.Typer) -> None:
    app.command("runs")(runs_cmd)
    region_app.command("stop")(stop_cmd)
    region_app.command("attach")(attach_cmd)
