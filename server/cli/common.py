"""What the verb modules share: the consoles, the ``--home``/``--config`` options, the one-line
error wrapper and the run summary they print."""

from __future__ import annotations

# A verb imports what only it needs (Flower, torch, SQLAlchemy, ...) inside its body, when it
# runs: `fedgate --help` loads none of it (tests/test_cli_startup.py).
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedgate.home import default_home
from fedgate.server.launch.config import FEDERATION_FILE, ConfigError, resolve
from fedgate.server.launch.processes import TopologyError

__all__ = ["FEDERATION_FILE", "default_home", "resolve"]  # re-exported for the verb modules

console = Console()
err = Console(stderr=True, soft_wrap=True)

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


def _expected_errors() -> tuple[type[Exception], ...]:
    """The failures ``friendly`` reports as one line. Called only when a verb raises (an
    ``except`` clause evaluates its expression then), so start-up imports none of them."""
    # heavy import: loaded only when a verb that runs fails
    from fedgate.server.db.engine import DatabaseError
    from fedgate.server.launch.fleet_proxy import ProxyError
    from fedgate.server.launch.runner import RunFailedError
    from fedgate.server.trust.enrollment import EnrollmentError
    from fedgate.server.trust.node_auth import NodeAuthError
    from fedgate.server.trust.pki import PkiError

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


def write_report(out_dir: Path, home: Path, mlflow: bool | str) -> None:
    """The run's plot (and, when asked, its MLflow record), also after a failed run; a
    report that cannot be written is a warning, never the run's outcome."""
    from fedgate.server.region.run_report import finalize_report

    try:
        report = finalize_report(out_dir, home, mlflow)
    except Exception as exc:
        err.print(f"[yellow]warning: the run's report was not written completely: {exc}[/]")
        return
    console.print(f"plot: {report['plot']}")
    if report["mlflow_run_id"]:
        console.print(f"MLflow run {report['mlflow_run_id']} (store: {mlflow_store(home, mlflow)})")


def mlflow_store(home: Path, mlflow: bool | str) -> str:
    from fedgate.server.region.run_report import default_tracking_uri

    return mlflow if isinstance(mlflow, str) else default_tracking_uri(home)
