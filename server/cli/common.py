"""What the verb modules share: the consoles, the ``--home``/``--config`` options, the one CLI
error handler (``cli_errors``/``friendly``) and the run summary they print."""

from __future__ import annotations

# A verb imports what only it needs (Flower, torch, SQLAlchemy, ...) inside its body, when it
# runs: `fedgate --help` loads none of it (tests/test_cli_startup.py).
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedgate.errors import EXIT_INTERRUPTED, EXIT_UNAVAILABLE, EXIT_USAGE, FedgateError
from fedgate.home import resolve_home
from fedgate.server.launch.config import FEDERATION_FILE, resolve

__all__ = ["FEDERATION_FILE", "resolve", "resolve_home"]  # re-exported for the verb modules

console = Console()
err = Console(stderr=True, soft_wrap=True)

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="State directory (default: $FEDGATE_HOME or ~/.fedgate)."),
]
RegionOpt = Annotated[str, typer.Option("--region", "-r", help="Compliance region, e.g. eu.")]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db", help="Region database URL (default: $FEDGATE_DB, else <home>/region-<region>.db)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ActorKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--actor-key",
        help="Your operator key that signs the request (default: <home>/keys/operator.key).",
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Federation TOML (default: <home>/federation.toml, else built-in)."
    ),
]


def operator_registry(home: Path | None, region: str, db: str | None, key: Path | None = None):
    """The registry of a region already set up under the home (never created here), acting
    with ``key``'s operator key (None: the home's ``keys/operator.key``)."""
    # heavy import: loaded only when a verb runs
    from fedgate.server.trust.actors import load_actor_key
    from fedgate.server.trust.enrollment import check_region_name, region_registry

    actor_key = None if key is None else load_actor_key(key)
    where, region = resolve_home(home), check_region_name(region)
    return region_registry(where, region, db, create=False, actor_key=actor_key)


def _database_exit(exc: Exception) -> int | None:
    """The exit code of an SQLAlchemy error (None: not one): a database that cannot be reached
    or is locked is unavailable (3), anything else (a file that is not a database, a bad
    schema) is the input's fault (1). Called only when a verb raises."""
    from sqlalchemy.exc import OperationalError, SQLAlchemyError  # heavy: only when a verb fails

    if not isinstance(exc, SQLAlchemyError):
        return None
    return EXIT_UNAVAILABLE if isinstance(exc, OperationalError) else EXIT_USAGE


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)  # reasons may hold [...]
    raise typer.Exit(code) from None


@contextmanager
def cli_errors() -> Iterator[None]:
    """The one CLI error handler: an expected failure becomes one red ``error:`` line and the
    exit status documented in ``fedgate.errors`` (1 usage or configuration, 2 verification
    failed, 3 a service unavailable, 130 Ctrl-C); only a bug shows a traceback."""
    try:
        yield
    except KeyboardInterrupt:  # first: Ctrl-C never waits for an import
        err.print("[yellow]interrupted; everything fedgate started has been stopped[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except FedgateError as exc:
        _fail(str(exc), exc.exit_code)
    except OSError as exc:  # a file or directory the user named (missing, unreadable, exists)
        where = f": {exc.filename}" if exc.filename else ""
        _fail(f"{exc.strerror or exc}{where}", EXIT_USAGE)
    except Exception as exc:
        code = _database_exit(exc)
        if code is None:
            raise
        first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
        _fail(f"database: {first}", code)


GUARDED = "__fedgate_cli_errors__"


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a verb inside ``cli_errors`` (its signature, hence its options, unchanged)."""
    if getattr(fn, GUARDED, False):
        return fn

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with cli_errors():
            return fn(*args, **kwargs)

    setattr(wrapper, GUARDED, True)
    return wrapper


def guard_every_verb(app: typer.Typer) -> None:
    """Put every verb of ``app`` and its sub-apps inside ``cli_errors`` (``friendly``), so no
    verb can miss the one handler."""
    for command in app.registered_commands:
        if command.callback is not None:
            command.callback = friendly(command.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            guard_every_verb(group.typer_instance)


def summary_table(summaries: dict[str, dict[str, Any]], title: str) -> Table:
    """Per region: devices, rounds, accepted and rejected updates, accuracy on the region's
    validation split and on the common test split; why updates were rejected is stacked
    under the table (reason codes stay whole at 80 columns)."""
    table = Table(title=title, caption_justify="left")
    for col in ("region", "devices", "rounds", "accepted", "rejected", "val acc", "test acc"):
        table.add_column(col, justify="left" if col == "region" else "right")
    why = []
    for region, s in summaries.items():
        table.add_row(
            region, str(s.get("devices", "-")), str(s.get("rounds", "-")),
            str(s.get("accepted", "-")), str(s.get("rejected", "-")),
            f"{s['val_acc']:.3f}" if "val_acc" in s else "-",
            f"{s['test_acc']:.3f}" if "test_acc" in s else "-",
        )  # fmt: skip
        reasons = s.get("rejected_by_reason") or {}
        if reasons:
            why.append(f"{region} rejected: " + ", ".join(f"{k} x{v}" for k, v in reasons.items()))
    if why:
        table.caption = "\n".join(why)
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
