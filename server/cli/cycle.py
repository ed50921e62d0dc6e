"""``fedgate cycle``: regional runs -> artifacts -> gate -> merge, N times; each cycle's runs
start from the global version the previous one published (``server/launch/cycle.py``)."""

from __future__ import annotations

# A verb imports what only it needs (Flower, torch, SQLAlchemy, ...) inside its body, when it
# runs: `fedgate --help` loads none of it (tests/test_cli_startup.py).
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fedgate.server.cli.common import ConfigOpt, HomeOpt, JsonOpt, console, err, write_report

if TYPE_CHECKING:
    from fedgate.server.launch.cycle import CycleResult


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def cycle_table(cycle: CycleResult) -> Table:
    """One cycle: each region's run, artifact, accuracy and gate verdict, and the global
    version it published with its accuracy on the same common test split."""
    base = f"global v{cycle.base_version}" if cycle.base_version else "a fresh model"
    table = Table(title=f"cycle {cycle.number} (from {base})", title_justify="left")
    for col in ("model", "artifact", "val acc", "test acc", "gate"):
        table.add_column(col, overflow="fold")
    colour = {"approved": "green", "rejected": "red", "pending": "yellow"}
    for r in cycle.regions:
        why = f": {'; '.join(r.failed)}" if r.failed else ""
        table.add_row(
            f"region {r.region}", r.artifact[:12], _acc(r.val_acc), _acc(r.test_acc),
            f"[{colour[r.gate]}]{r.gate}[/]{escape(why)}",
        )  # fmt: skip
    if cycle.version is not None:
        shares = ", ".join(f"{e['region']} {e['share']:.2f}" for e in cycle.lineage)
        table.add_row(f"[bold]global v{cycle.version}[/]", "-", "-",
                      f"[bold]{_acc(cycle.global_test_acc)}[/]", f"merged: {shares}")  # fmt: skip
    return table


def report_cycle(cycle: CycleResult, home: Path) -> None:
    """Print a cycle's table, the coordinator's refusals and, when the gate is waiting for an
    approver, what to type."""
    console.print(cycle_table(cycle))
    for refusal in cycle.refusals:
        err.print(f"[yellow]coordinator refused[/] {escape(refusal)}", highlight=False)
    pending = [r for r in cycle.regions if r.gate == "pending"]
    if pending:
        console.print("the gate waits for an approver; for each artifact that passes:")
        for r in pending:
            console.print(f"  fedgate gate check {r.artifact[:16]} --home {home}", highlight=False)
            console.print(f"  fedgate gate approve {r.artifact[:16]} --key APPROVER.key "
                          f"--home {home}", highlight=False)  # fmt: skip
            console.print(f"  fedgate region artifact export {r.artifact[:16]} --home {home}",
                          highlight=False)  # fmt: skip
        console.print(f"  fedgate coordinator merge --home {home}   (or: fedgate cycle "
                      "--approver-key APPROVER.key)", highlight=False)  # fmt: skip


def cycle_cmd(
    cycles: Annotated[int, typer.Option("--cycles", "-n", min=1, help="Cycles to run.")] = 1,
    approver_key: Annotated[
        Path | None,
        typer.Option(
            "--approver-key",
            help="A registered approver's private key: approve what passes the policy, refuse "
            "the rest with reasons, merge. Without it the cycle stops at the gate.",
        ),
    ] = None,
    home: HomeOpt = None,
    config: ConfigOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds each cycle's runs may take.")] = 1800.0,
    as_json: JsonOpt = False,
) -> None:
    """Run N cycles: every region trains (from the current global version), the gate checks
    each artifact, the coordinator merges the approved ones into the next global version."""
    from fedgate.crypto import load_private_key
    from fedgate.server.launch.config import resolve
    from fedgate.server.launch.cycle import run_cycle
    from fedgate.server.launch.runner import ensure_up
    from fedgate.server.region.live_view import RunBoard

    where, fed = resolve(home, config)
    approver = None if approver_key is None else load_private_key(approver_key)
    for reg in fed.regions:
        ensure_up(where, fed, reg)
    for _ in range(cycles):
        with RunBoard({r.name: r.rounds for r in fed.regions}, err) as board:
            done = run_cycle(
                where, fed, approver, lambda s, e: board.on_event(s.region, e),
                lambda line: err.print(line, highlight=False), timeout,
                after_runs=lambda subs: [write_report(s.out_dir, where, False) for s in subs],
            )  # fmt: skip
        if as_json:
            sys.stdout.write(json.dumps(done.to_json(), sort_keys=True) + "\n")
        else:
            report_cycle(done, where)
        if approver is None:
            return


def register(app: typer.Typer) -> None:
    """Attach ``fedgate cycle`` to the root app."""
    app.command("cycle")(cycle_cmd)
