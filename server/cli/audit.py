"""``fedgate audit``: the auditor's read-only verbs (verify, runs, rounds, show, export).

Databases are opened read-only (SQLite ``mode=ro``, PostgreSQL read-only transactions).
Exit status: 0 fine, 1 verification failed, 2 unusable input (database, keys, file).
"""

from __future__ import annotations

# A verb imports what only it needs (Flower, torch, SQLAlchemy, ...) inside its body, when it
# runs: `fedgate --help` loads none of it (tests/test_cli_startup.py).
import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from fedgate.server.audit.verify import VerifyReport

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db", help="Database URL (default: $FEDGATE_DB, else the region's SQLite file)."
    ),
]
HomeOpt = Annotated[
    Path,
    typer.Option("--home", envvar="FEDGATE_HOME", help="fedgate home (databases, keys)."),
]
RegionOpt = Annotated[
    str | None, typer.Option("--region", envvar="FEDGATE_REGION", help="Region name.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
RunOpt = Annotated[str, typer.Option("--run", help="Run id.")]
DEFAULT_HOME = Path(".fedgate")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class _Fail(Exception):
    """An input problem reported as one line with exit status 2."""


def _input_errors() -> tuple[type[Exception], ...]:
    """What ``_errors`` reports with exit status 2; called only when a verb raises."""
    # heavy import: loaded only when a verb that runs fails
    from fedgate.crypto import SignatureError
    from fedgate.server.audit.export import ExportError
    from fedgate.server.audit.store import StoreError
    from fedgate.server.db.engine import DatabaseError

    return (_Fail, DatabaseError, StoreError, ExportError, SignatureError)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except _input_errors() as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        err.print(f"[red]error:[/red] {exc.strerror}: {exc.filename}", highlight=False)
        raise typer.Exit(2) from None


def _engine(db: str | None, home: Path, region: str | None) -> Engine:
    # heavy import: loaded only when a verb runs
    from fedgate.server.db.engine import DatabaseError, resolve_url
    from fedgate.server.db.migrate import open_readonly

    try:
        url = resolve_url(db, home, region)
    except DatabaseError:
        raise _Fail("no database: pass --db URL or --region NAME (or set FEDGATE_DB)") from None
    return open_readonly(url)


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(_plain(obj), indent=2, sort_keys=True) + "\n")


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _keys(pubkeys: list[Path], home: Path, region: str | None, skip: bool) -> dict | None:
    if skip:
        return None
    # heavy import: loaded only when this verb runs
    from fedgate.server.audit.keys import load_pubkeys, region_pub_path

    if not pubkeys:
        default = region_pub_path(home, region) if region else None
        if default is None or not default.is_file():
            where = f" (none at {default})" if default else ""
            raise _Fail(
                f"no public keys: pass --pubkeys DIR or FILE{where}, "
                "or --no-signatures to check the chain alone"
            )
        pubkeys = [default]
    keys = load_pubkeys(pubkeys)
    if not keys:
        raise _Fail(f"no .pub files in {', '.join(map(str, pubkeys))}")
    return keys


def _report(report: VerifyReport, source: str, as_json: bool, strict: bool) -> None:
    failed = not report.ok or (strict and report.unsigned_tail > 0)
    if as_json:
        _print_json({**report.to_dict(), "source": source, "ok": not failed})
    elif not report.ok:
        first = report.first
        out.print(
            f"[bold red]FAILED[/bold red] {source}: {len(report.problems)} problem(s); "
            f"first: {first}",
            highlight=False,
        )
        for problem in report.problems[:20]:
            out.print(f"  - {problem}", highlight=False, markup=False)
    else:
        sig = "signatures checked" if report.heads_checked else "signatures NOT checked"
        out.print(
            f"[bold green]OK[/bold green] {source}: chain {report.chain_id}, "
            f"{report.events} events, head seq {report.last_seq}, "
            f"{report.signed_heads} signed heads ({sig})",
            highlight=False,
        )
        if report.unsigned_tail:
            style = "red" if strict else "yellow"
            out.print(
                f"[{style}]{report.unsigned_tail} event(s) after the last signed head "
                f"(seq {report.last_signed_seq}) are not yet signed[/{style}]"
            )
    if failed:
        raise typer.Exit(1)


def verify(
    db: DbOpt = None,
    home: HomeOpt = DEFAULT_HOME,
    region: RegionOpt = None,
    export: Annotated[
        Path | None,
        typer.Option("--export", help="Verify this export file offline instead of a database."),
    ] = None,
    pubkeys: Annotated[
        list[Path] | None,
        typer.Option(
            "--pubkeys",
            help="Trusted public key file, or directory of .pub files (repeatable); "
            "default: the region server's key.",
        ),
    ] = None,
    no_signatures: Annotated[
        bool, typer.Option("--no-signatures", help="Check the hash chain only.")
    ] = False,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Also fail when events after the last signed head exist."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Recompute the hash chain and check every signed head; name the first bad event."""
    # heavy import: loaded only when this verb runs
    from fedgate.server.audit.export import verify_export
    from fedgate.server.audit.verify import verify_database

    with _errors():
        keys = _keys(list(pubkeys or []), home, region, no_signatures)
        if export is not None:
            report, source = verify_export(export, keys), str(export)
        else:
            engine = _engine(db, home, region)
            report = verify_database(engine, keys)
            source = engine.url.render_as_string(hide_password=True)
    _report(report, source, as_json, strict)


def runs(
    db: DbOpt = None,
    home: HomeOpt = DEFAULT_HOME,
    region: RegionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List training runs."""
    from fedgate.server.audit.store import Store  # heavy import: loaded only when this verb runs

    with _errors():
        items = Store(_engine(db, home, region)).runs()
    if as_json:
        _print_json(items)
        return
    table = Table(title="runs")
    for col in ("run", "region", "launched by", "status", "started", "finished", "rounds"):
        table.add_column(col)
    for r in items:
        table.add_row(
            r.id,
            r.region,
            r.launched_by,
            r.status,
            _when(r.started_at),
            _when(r.finished_at),
            str(r.rounds),
        )
    out.print(table)


def rounds(
    run: RunOpt,
    db: DbOpt = None,
    home: HomeOpt = DEFAULT_HOME,
    region: RegionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the rounds of one run."""
    from fedgate.server.audit.store import Store  # heavy import: loaded only when this verb runs

    with _errors():
        items = Store(_engine(db, home, region)).rounds(run)
    if as_json:
        _print_json(items)
        return
    table = Table(title=f"run {run}: rounds")
    for col in ("round", "sampled", "accepted", "rejected", "aggregated", "metrics", "note"):
        table.add_column(col)
    for r in items:
        metrics = " ".join(f"{k}={_num(v)}" for k, v in r.metrics.items())
        table.add_row(
            str(r.round),
            str(r.sampled),
            str(r.accepted),
            str(r.rejected),
            "yes" if r.aggregated else "no",
            metrics,
            r.note,
        )
    out.print(table)


def show(
    run: RunOpt,
    round_no: Annotated[int, typer.Option("--round", help="Round number.")],
    db: DbOpt = None,
    home: HomeOpt = DEFAULT_HOME,
    region: RegionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one round: every client's fate, with reasons and aggregator scores."""
    from fedgate.server.audit.store import Store  # heavy import: loaded only when this verb runs

    with _errors():
        info, updates = Store(_engine(db, home, region)).round_detail(run, round_no)
    if as_json:
        _print_json({"round": info, "clients": updates})
        return
    metrics = " ".join(f"{k}={_num(v)}" for k, v in info.metrics.items())
    out.print(
        f"run {info.run_id} round {info.round}: sampled {info.sampled}, accepted "
        f"{info.accepted}, rejected {info.rejected}, aggregated "
        f"{'yes' if info.aggregated else 'no'} {metrics} {info.note}",
        highlight=False,
    )
    table = Table(title="clients")
    for col in (
        "node",
        "device",
        "verdict",
        "reason",
        "detail",
        "examples",
        "fate",
        "score",
        "weight",
    ):
        folds = col in ("device", "detail")
        table.add_column(col, overflow="fold" if folds else "ellipsis", no_wrap=not folds)
    for u in updates:
        style = "green" if u.verdict == "accepted" else "red"
        table.add_row(
            u.node_id,
            u.device_id[:16],
            f"[{style}]{u.verdict}[/{style}]",
            u.reason,
            u.detail,
            str(u.num_examples),
            u.fate,
            _num(u.score),
            _num(u.weight),
        )
    out.print(table)


def export(
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")
    ] = None,
    db: DbOpt = None,
    home: HomeOpt = DEFAULT_HOME,
    region: RegionOpt = None,
) -> None:
    """Export the audit chain with its signed heads, for offline verification."""
    # heavy import: loaded only when this verb runs
    from fedgate.server.audit.export import FORMATS, export_chain

    with _errors():
        if fmt not in FORMATS:
            raise _Fail(f"unknown format {fmt!r} (jsonl or csv)")
        engine = _engine(db, home, region)
        if output is None:
            export_chain(engine, sys.stdout, fmt)
            return
        tmp = output.with_name(output.name + ".tmp")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            count = export_chain(engine, fh, fmt)
        os.replace(tmp, output)
    err.print(f"exported {count} events to {output}", highlight=False)


def register(app: typer.Typer) -> None:
    """Attach the ``audit`` sub-app to ``app``."""
    audit = typer.Typer(
        help="Auditor's verbs: verify the chain, list runs and rounds, show a round, export.",
        no_args_is_help=True,
    )
    audit.command("verify")(verify)
    audit.command("runs")(runs)
    audit.command("rounds")(rounds)
    audit.command("show")(show)
    audit.command("export")(export)
    app.add_typer(audit, name="audit")
