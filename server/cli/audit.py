"""``fedgate audit``: the auditor's read-only verbs (verify, runs, rounds, show, export; the
Merkle proofs: checkpoint, prove, consistency, check-proof).

Databases are opened read-only (SQLite ``mode=ro``, PostgreSQL read-only transactions). The
views (runs, rounds, show) show what the audit chain states and flag, in red, every mirror-table
row that disagrees with it. Exit status (``fedgate.errors``): 0 fine, 1 bad input (option,
file, key, run id), 2 verification failed (with ``--strict``: also a log not yet final, or a
table that disagrees with the chain), 3 the database is unavailable.
"""

from __future__ import annotations

# A verb imports what only it needs (Flower, torch, SQLAlchemy, ...) inside its body, when it
# runs: `fedgate --help` loads none of it (tests/test_cli_startup.py).
import dataclasses
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from fedgate.errors import UsageError, VerificationError
from fedgate.home import resolve_home
from fedgate.server.cli.common import friendly

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
    Path | None,
    typer.Option(
        "--home",
        help="fedgate home: databases, keys, blobs (default: $FEDGATE_HOME or ~/.fedgate).",
    ),
]
RegionOpt = Annotated[
    str | None, typer.Option("--region", envvar="FEDGATE_REGION", help="Region name.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
RunOpt = Annotated[str, typer.Option("--run", help="Run id.")]
StrictViewOpt = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="Exit 2 when a table disagrees with the audit chain or the chain does not verify.",
    ),
]

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _engine(db: str | None, home: Path, region: str | None) -> Engine:
    # heavy import: loaded only when a verb runs
    from fedgate.server.db.engine import DatabaseError, resolve_url
    from fedgate.server.db.migrate import open_readonly

    try:
        url = resolve_url(db, home, region)
    except DatabaseError:
        raise UsageError(
            "no database: pass --db URL or --region NAME (or set FEDGATE_DB)"
        ) from None
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
            raise UsageError(
                f"no public keys: pass --pubkeys DIR or FILE{where}, "
                "or --no-signatures to check the chain alone"
            )
        pubkeys = [default]
    keys = load_pubkeys(pubkeys)
    if not keys:
        raise UsageError(f"no .pub files in {', '.join(map(str, pubkeys))}")
    return keys


def _report(report: VerifyReport, source: str, as_json: bool, strict: bool, extra: dict) -> None:
    final = report.status == "ok" and not report.unsigned_tail
    failed = not report.ok or (strict and not final)
    if as_json:
        _print_json({**report.to_dict(), **extra, "source": source, "ok": not failed})
    elif not report.ok:
        first = report.first
        out.print(
            f"[bold red]FAILED[/bold red] {source}: {len(report.problems)} problem(s); "
            f"first: {escape(str(first))}",
            highlight=False,
        )
        for problem in report.problems[:20]:
            out.print(f"  - {problem}", highlight=False, markup=False)
    else:
        sig = "signatures checked" if report.heads_checked else "signatures NOT checked"
        word = "[bold green]OK[/bold green]"
        if report.in_progress:
            style = "red" if strict else "yellow"
            word = f"[bold {style}]IN PROGRESS[/bold {style}]"
        anchors = f", {report.anchors_checked} anchor(s)" if report.anchors_checked else ""
        models = f", {report.models_checked} model blob(s)" if report.models_checked else ""
        if report.requests_checked:
            models += f", {report.requests_checked} actor request(s)"
        out.print(
            f"{word} {source}: chain {report.chain_id}, "
            f"{report.events} events, head seq {report.last_seq}, "
            f"{report.signed_heads} signed heads ({sig}){anchors}{models}",
            highlight=False,
        )
        if report.in_progress:
            out.print(f"run(s) not ended: {', '.join(report.in_progress)}", highlight=False)
        if report.unsigned_tail:
            style = "red" if strict else "yellow"
            out.print(
                f"[{style}]{report.unsigned_tail} event(s) after the last signed head "
                f"(seq {report.last_signed_seq}) are not yet signed[/{style}]"
            )
        if not report.coverage_checked:
            out.print("[yellow]coverage by signed heads NOT checked (--no-signatures)[/yellow]")
        if "checkpoint" in extra:
            out.print(f"checkpoint saved: {extra['checkpoint']} (seq {report.last_signed_seq})")
    if failed:
        first = report.first or f"not final ({report.status}, {report.unsigned_tail} unsigned)"
        raise VerificationError(f"{source}: verification failed: {first}")


@friendly
def verify(
    db: DbOpt = None,
    home: HomeOpt = None,
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
        typer.Option(
            "--strict",
            help="Also fail while a run is in progress or events after the last signed head exist.",
        ),
    ] = False,
    since: Annotated[
        Path | None,
        typer.Option(
            "--since",
            help="Your checkpoint file: the log must extend it (same chain, "
            "its head present and signed).",
        ),
    ] = None,
    save_checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--save-checkpoint",
            help="After a passing verification, save the last "
            "signed head here (for a later --since).",
        ),
    ] = None,
    witness_dir: Annotated[
        Path | None,
        typer.Option(
            "--witness-dir",
            help="The region's witness mirror "
            "($FEDGATE_AUDIT_WITNESS_DIR): every head in it must be in the log.",
        ),
    ] = None,
    blobs: Annotated[
        Path | None,
        typer.Option(
            "--blobs",
            help="Blob store to check the model digests against "
            "(default for a database: <home>/blobs).",
        ),
    ] = None,
    no_blobs: Annotated[
        bool, typer.Option("--no-blobs", help="Do not check the model blobs the log names.")
    ] = False,
    coordinator: Annotated[
        bool,
        typer.Option(
            "--coordinator",
            help="Verify the global coordinator's chain (default database <home>/coordinator.db, "
            "key <home>/keys/coordinator.pub) and every global version's weights and statement.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Recompute the hash chain, check every signed head, that every event lies under one
    (or belongs to a run in progress), the anchors and the model blobs; name the first bad
    event."""
    # heavy import: loaded only when this verb runs
    from fedgate.server.audit.anchors import load_checkpoint, read_witness, write_checkpoint
    from fedgate.server.audit.export import verify_export
    from fedgate.server.audit.verify import check_models, verify_database

    home = resolve_home(home)
    if coordinator:
        _verify_coordinator(db, home, list(pubkeys or []), no_signatures, strict, as_json)
        return
    keys = _keys(list(pubkeys or []), home, region, no_signatures)
    anchors = [load_checkpoint(since)] if since is not None else []
    if witness_dir is not None:
        anchors += read_witness(witness_dir)
    if export is not None:
        report, source = verify_export(export, keys, anchors=anchors), str(export)
    else:
        engine = _engine(db, home, region)
        report = verify_database(engine, keys, anchors=anchors)
        source = engine.url.render_as_string(hide_password=True)
        blobs = blobs or home / "blobs"
    if blobs is not None and not no_blobs:
        check_models(report, blobs)
    extra: dict[str, Any] = {}
    if save_checkpoint is not None and report.ok:
        if report.last_head is None:
            raise UsageError("nothing to checkpoint: the log has no valid signed head")
        write_checkpoint(save_checkpoint, report.chain_id, report.last_head)
        extra["checkpoint"] = str(save_checkpoint)
    _report(report, source, as_json, strict, extra)


def _verify_coordinator(
    db: str | None,
    home: Path,
    pubkeys: list[Path],
    no_signatures: bool,
    strict: bool,
    as_json: bool,
) -> None:
    """``verify --coordinator``: the coordinator's chain, then each global version's blobs."""
    # heavy import: loaded only when this verb runs
    from fedgate.server.audit.keys import coordinator_pub_path, load_pubkeys
    from fedgate.server.coordinator.versions import verify_coordinator
    from fedgate.server.db.engine import coordinator_url
    from fedgate.server.db.migrate import open_readonly

    keys = None
    if not no_signatures:
        paths = pubkeys or [coordinator_pub_path(home)]
        if not pubkeys and not paths[0].is_file():
            raise UsageError(f"no coordinator public key at {paths[0]}: pass --pubkeys FILE")
        keys = load_pubkeys(paths)
    engine = open_readonly(db or coordinator_url(home))
    report, checked = verify_coordinator(engine, home / "coordinator" / "blobs", keys)
    source = engine.url.render_as_string(hide_password=True)
    _report(report, source, as_json, strict, {"global_versions_checked": checked})


def _open_views(db: str | None, home: Path | None, region: str | None, strict: bool) -> Any:
    """The store (mirror tables) and the chain's view of it; warns (fails, ``strict``) when the
    chain itself does not verify."""
    # heavy import: loaded only when this verb runs
    from fedgate.server.audit.store import Store
    from fedgate.server.audit.verify import verify_database
    from fedgate.server.audit.views import read_view

    engine = _engine(db, resolve_home(home), region)
    report = verify_database(engine, None, require_signed=False, checkpoints=False)
    if not report.ok:
        message = f"the audit chain does not verify (first: {report.first}); run `audit verify`"
        if strict:
            raise VerificationError(message)
        err.print(f"[bold red]warning:[/] {escape(message)}", highlight=False)
    return Store(engine), read_view(engine)


def _disagreements(found: list[str], strict: bool) -> None:
    """Print every table row that disagrees with the chain, in red; ``strict``: fail."""
    for line in found:
        err.print(f"[red]disagrees: {escape(line)}[/red]", highlight=False)
    if found:
        err.print(
            f"[bold red]{len(found)} table value(s) disagree with the audit chain; shown above: "
            "the chain's[/bold red]",
            highlight=False,
        )
        if strict:
            raise VerificationError(f"{len(found)} table value(s) disagree with the audit chain")


@friendly
def runs(
    db: DbOpt = None,
    home: HomeOpt = None,
    region: RegionOpt = None,
    strict: StrictViewOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """List training runs (as the audit chain states them)."""
    from fedgate.server.audit.views import runs_disagreements  # heavy import: only this verb

    store, view = _open_views(db, home, region, strict)
    items = list(view.runs.values())
    if as_json:
        _print_json(items)
    else:
        _print_runs(view, items)
    _disagreements(runs_disagreements(view, store), strict)


@friendly
def rounds(
    run: RunOpt,
    db: DbOpt = None,
    home: HomeOpt = None,
    region: RegionOpt = None,
    strict: StrictViewOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """List the rounds of one run (as the audit chain states them)."""
    from fedgate.server.audit.views import rounds_disagreements  # heavy import: only this verb

    store, view = _open_views(db, home, region, strict)
    items = view.run_rounds(run)
    if as_json:
        _print_json(items)
    else:
        _print_rounds(view, run, items, store.round_models(run))
    _disagreements(rounds_disagreements(view, store, run), strict)


@friendly
def show(
    run: RunOpt,
    round_no: Annotated[int, typer.Option("--round", help="Round number.")],
    db: DbOpt = None,
    home: HomeOpt = None,
    region: RegionOpt = None,
    strict: StrictViewOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Show one round: every client's fate, with reasons and aggregator scores (as the audit
    chain states them)."""
    from fedgate.server.audit.views import round_disagreements  # heavy import: only this verb

    store, view = _open_views(db, home, region, strict)
    info, updates = view.round_detail(run, round_no)
    if as_json:
        _print_json({"round": info, "clients": updates})
    else:
        _print_round(info, updates, store.round_models(run).get(round_no, ""))
    _disagreements(round_disagreements(view, store, run, round_no), strict)


def _config_digest(config: dict) -> str:
    from fedgate.server.audit.actors import config_digest  # heavy import: only when printing

    return config_digest(config) if config else ""


def _print_runs(view: Any, items: list[Any]) -> None:
    from fedgate.server.cli.audit_tables import legend, num, records  # only when printing

    rows = []
    by_run = view.rounds_by_run()
    for r in items:
        acc = [x.metrics.get("val-acc") for x in by_run[r.id]]
        final = next((a for a in reversed(acc) if a is not None), None)
        rows.append([escape(r.id), escape(r.region), escape(r.launched_by), escape(r.status),
                     _when(r.started_at), _when(r.finished_at), str(r.rounds), num(final),
                     _config_digest(r.config)])  # fmt: skip
    cols = ("run", "region", "launched by", "status", "started", "finished", "rounds",
            "val-acc", "config")  # fmt: skip
    records(out, "runs", cols, rows)
    legend(out, ["val-acc", "config"])


def _print_rounds(view: Any, run: str, items: list[Any], models: dict[int, str]) -> None:
    from fedgate.server.cli.audit_tables import config_lines, legend, num, records

    info = view.runs[run]
    out.print(f"run {escape(run)} of region {escape(info.region)}, launched by "
              f"{escape(info.launched_by)} {_when(info.started_at)}, {escape(info.status)}",
              highlight=False)  # fmt: skip
    config_lines(out, info.config, _config_digest(info.config))
    transport = any(r.transport_errors for r in items)  # a column only when there are any
    names = sorted({k for r in items for k in r.metrics})
    rows = []
    for r in items:
        rows.append([str(r.round), str(r.sampled), str(r.accepted), str(r.rejected),
                     *((str(r.transport_errors),) * transport),
                     "yes" if r.aggregated else "no", *(num(r.metrics.get(k)) for k in names),
                     escape(r.note), models.get(r.round, "")])  # fmt: skip
    cols = ("round", "sampled", "accepted", "rejected", *(("transport errors",) * transport),
            "aggregated", *names, "choice", "model")  # fmt: skip
    records(out, f"run {run}: rounds", cols, rows)
    legend(out, [n for n in ("val-acc", "val-loss") if n in names] + ["choice", "model"])


def _print_round(info: Any, updates: list[Any], model: str) -> None:
    from fedgate.server.cli.audit_tables import legend, num, records  # only when printing

    metrics = " ".join(f"{k}={_num(v)}" for k, v in info.metrics.items())
    out.print(
        f"run {escape(info.run_id)} round {info.round}: sampled {info.sampled}, accepted "
        f"{info.accepted}, rejected {info.rejected}, transport errors "
        f"{info.transport_errors}, aggregated {'yes' if info.aggregated else 'no'}; "
        f"{escape(metrics)}\nchoice: {escape(info.note)}\nmodel: {model or '(not recorded)'}",
        highlight=False,
    )
    rows = []
    for u in updates:
        style = "green" if u.verdict == "accepted" else "red"
        device = escape(u.device_id) if u.device_id else (
            f"[yellow]{escape(u.claimed_device_id)} (claimed)[/yellow]"
            if u.claimed_device_id else "")  # fmt: skip
        rows.append([escape(u.node_id), device, f"[{style}]{u.verdict}[/{style}]",
                     escape(u.reason), escape(u.detail), str(u.num_examples), escape(u.fate),
                     num(u.score), num(u.weight), escape(u.digest)])  # fmt: skip
    cols = ("node", "device", "verdict", "reason", "detail", "examples", "fate", "score",
            "weight", "digest")  # fmt: skip
    records(out, "clients", cols, rows)
    legend(out, ["device", "verdict", "fate", "score", "weight", "digest"])


@friendly
def export(
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")
    ] = None,
    db: DbOpt = None,
    home: HomeOpt = None,
    region: RegionOpt = None,
) -> None:
    """Export the audit chain (the events themselves) with its signed heads, for offline
    verification."""
    # heavy import: loaded only when this verb runs
    from fedgate.atomic_file import open_atomic
    from fedgate.server.audit.export import FORMATS, export_chain

    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r} (jsonl or csv)")
    engine = _engine(db, resolve_home(home), region)
    if output is None:
        export_chain(engine, sys.stdout, fmt)
        return
    with open_atomic(output) as fh:
        count = export_chain(engine, fh, fmt)
    err.print(f"exported {count} events to {output}", highlight=False)


CoordinatorOpt = Annotated[
    bool,
    typer.Option(
        "--coordinator",
        help="The global coordinator's log (default database <home>/coordinator.db).",
    ),
]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")]


def _log_engine(db: str | None, home: Path | None, region: str | None, coordinator: bool) -> Any:
    """A read-only engine on a region's log, or (``coordinator``) the coordinator's."""
    if not coordinator:
        return _engine(db, resolve_home(home), region)
    # heavy import: loaded only when a verb runs
    from fedgate.server.db.engine import coordinator_url
    from fedgate.server.db.migrate import open_readonly

    return open_readonly(db or coordinator_url(resolve_home(home)))


def _emit(text: str, output: Path | None, what: str) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    from fedgate.atomic_file import write_atomic  # heavy import: only when a verb runs

    write_atomic(output, text)
    err.print(f"{what} written to {output}", highlight=False)


@friendly
def checkpoint(
    output: OutOpt = None,
    db: DbOpt = None,
    home: HomeOpt = None,
    region: RegionOpt = None,
    coordinator: CoordinatorOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Print the log's latest signed checkpoint (C2SP tlog-checkpoint in a signed note: origin,
    tree size, base64 root hash, Ed25519 signature); keep it (--out) to check later with
    `audit consistency` that the log only grew."""
    from fedgate.server.audit.checkpoints import latest_checkpoint  # heavy: only this verb

    with _log_engine(db, home, region, coordinator).connect() as conn:
        latest = latest_checkpoint(conn)
    if as_json:
        _print_json(latest)
        if output is None:
            return
    _emit(latest.note, output, f"checkpoint (size {latest.size})")


@friendly
def prove(
    event: Annotated[
        int,
        typer.Argument(help="The event's seq (as `audit show --json` and `audit export` list it)."),
    ],
    output: OutOpt = None,
    db: DbOpt = None,
    home: HomeOpt = None,
    region: RegionOpt = None,
    coordinator: CoordinatorOpt = False,
) -> None:
    """Write the inclusion proof of one event against the latest checkpoint: a self-contained
    JSON file (the signed checkpoint, the event's bytes, its index and RFC 9162 audit path) that
    `audit check-proof FILE --pubkey K` verifies with only the public key."""
    # heavy import: loaded only when this verb runs
    from fedgate.server.audit.checkpoints import prove_inclusion
    from fedgate.server.audit.log import AuditLog
    from fedgate.tlog_proofs import dumps

    engine = _log_engine(db, home, region, coordinator)
    chain = AuditLog(engine).chain_id
    with engine.connect() as conn:
        proof = prove_inclusion(conn, chain, event)
    _emit(dumps(proof), output, f"inclusion proof of event {event}")


def _old_checkpoint(conn: Any, spec: str, what: str) -> Any:
    """A checkpoint named on the command line: a tree size (the stored checkpoint at that size)
    or a file holding a signed checkpoint note."""
    # heavy import: loaded only when this verb runs
    from fedgate.server.audit.checkpoints import checkpoint_at, latest_checkpoint

    if spec == "latest":
        return latest_checkpoint(conn)
    if spec.isdigit():
        return checkpoint_at(conn, int(spec))
    path = Path(spec)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{what} {spec!r}: neither a tree size nor a readable file "
                         f"({exc.strerror})") from None  # fmt: skip


@friendly
def consistency(
    old: Annotated[str, typer.Argument(help="Your kept checkpoint file, or a tree size.")],
    new: Annotated[
        str, typer.Argument(help="A checkpoint file, a tree size, or 'latest' (default).")
    ] = "latest",
    output: OutOpt = None,
    db: DbOpt = None,
    home: HomeOpt = None,
    region: RegionOpt = None,
    coordinator: CoordinatorOpt = False,
) -> None:
    """Prove that the log at NEW extends the checkpoint OLD (RFC 9162 consistency proof), in a
    file `audit check-proof` verifies with only the public key; fails (exit 2) naming the
    rewrite when the log's history up to OLD is no longer the one OLD signed."""
    # heavy import: loaded only when this verb runs
    from fedgate.server.audit.checkpoints import prove_consistency
    from fedgate.server.audit.log import AuditLog
    from fedgate.tlog_proofs import dumps

    engine = _log_engine(db, home, region, coordinator)
    chain = AuditLog(engine).chain_id
    with engine.connect() as conn:
        older = _old_checkpoint(conn, old, "OLD")
        newer = _old_checkpoint(conn, new, "NEW")
        proof = prove_consistency(conn, chain, older, newer)
    _emit(dumps(proof), output, "consistency proof")


@friendly
def check_proof(
    file: Annotated[Path, typer.Argument(help="An inclusion or consistency proof file.")],
    pubkey: Annotated[
        Path,
        typer.Option(
            "--pubkey",
            help="The log's public key: a .pub file (hex, e.g. <home>/keys/region-eu.pub) or a "
            "file holding a note verifier key (name+id+base64).",
        ),
    ],
    origin: Annotated[
        str | None,
        typer.Option("--origin", help="Also require this log origin (fedgate/audit/<chain id>)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify a proof file with only the public key (no database): the checkpoint's Ed25519
    signature, and the RFC 9162 inclusion path of the event or the consistency path between
    the two checkpoints."""
    # core only: this verb runs where fedgate's server parts and databases are not
    from fedgate.tlog_proofs import ConsistencyResult, check, read_key

    key, key_origin = read_key(pubkey)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read proof file {file}: {exc.strerror}") from None
    result = check(data, key, origin or key_origin)
    if isinstance(result, ConsistencyResult):
        summary = {"ok": True, "kind": "consistency", "origin": result.new.origin,
                   "old_size": result.old.size, "old_root": result.old.root.hex(),
                   "new_size": result.new.size, "new_root": result.new.root.hex()}  # fmt: skip
        line = (f"OK consistency: log {result.new.origin} at size {result.new.size} extends "
                f"its checkpoint at size {result.old.size}")  # fmt: skip
    else:
        event = result.event
        summary = {"ok": True, "kind": "inclusion", "origin": result.checkpoint.origin,
                   "size": result.checkpoint.size, "root": result.checkpoint.root.hex(),
                   "seq": result.seq, "event": event}  # fmt: skip
        line = (f"OK inclusion: event {result.seq} ({event['kind']}, {event['ts']}) is in log "
                f"{result.checkpoint.origin} at checkpoint size "
                f"{result.checkpoint.size}")  # fmt: skip
    if as_json:
        _print_json(summary)
    else:
        out.print(line, highlight=False, markup=False)


@friendly
def serve(
    home: HomeOpt = None,
    port: Annotated[int, typer.Option("--port", help="TCP port to listen on.")] = 8787,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to bind (default loopback only; another address needs --token).",
        ),
    ] = "127.0.0.1",
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="FEDGATE_AUDIT_TOKEN",
            help="Access token every request must carry (Authorization: Bearer T, or ?token=T "
            "once, which sets a cookie); default $FEDGATE_AUDIT_TOKEN.",
        ),
    ] = None,
    dbs: Annotated[
        list[str] | None,
        typer.Option(
            "--db",
            help="A region kept elsewhere, as REGION=URL (repeatable), e.g. "
            "eu=postgresql+psycopg://auditor@db/eu; the coordinator's as coordinator=URL.",
        ),
    ] = None,
    recheck: Annotated[
        float,
        typer.Option("--recheck", help="Re-verify a chain at most this many seconds apart."),
    ] = 60.0,
) -> None:
    """Serve a read-only web view of the home's audit chains: overview (each chain verified or
    broken at which event), runs, a run's charts, a round's every client, devices, artifacts,
    gate decisions and global versions with their lineage; every page has a JSON twin."""
    # heavy import: loaded only when this verb runs
    from fedgate.server.auditweb.serve import serve_forever
    from fedgate.server.auditweb.sources import discover, parse_db_options

    where = resolve_home(home)
    sources = discover(where, parse_db_options(list(dbs or [])))
    serve_forever(sources, host=host, port=port, token=token, ttl=recheck,
                  say=lambda line: err.print(line, highlight=False, markup=False))  # fmt: skip


@friendly
def report(
    run: RunOpt,
    fmt: Annotated[str, typer.Option("--format", help="html (self-contained) or pdf.")] = "html",
    output: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write here (default: report-<run>.<format>)."),
    ] = None,
    home: HomeOpt = None,
    region: RegionOpt = None,
    dbs: Annotated[
        list[str] | None,
        typer.Option(
            "--db",
            help="A region kept elsewhere, as REGION=URL (repeatable); the "
            "coordinator's as coordinator=URL.",
        ),
    ] = None,
) -> None:
    """Write one run's audit report for the compliance file: its configuration and digest, who
    launched it, charts, every round with every client's fate, artifacts and gate decisions,
    and the chain's status with the signed head it was verified against."""
    # heavy import: loaded only when this verb runs
    from fedgate.server.auditweb.report import FORMATS, write_report
    from fedgate.server.auditweb.sources import discover, parse_db_options

    if fmt not in FORMATS:
        raise UsageError(f"unknown report format {fmt!r} (html or pdf)")
    where = resolve_home(home)
    sources = discover(where, parse_db_options(list(dbs or [])))
    target = output or Path(f"report-{run}.{fmt}")
    data = write_report(sources, run, fmt, target, region)
    chain = data["chain"]
    err.print(f"wrote {target}: run {run} of region {data['source']}, {data['rounds']} round(s); "
              f"chain {chain.status}", highlight=False, markup=False)  # fmt: skip
    if not chain.ok:
        raise VerificationError(f"the report says so: {chain.label} is broken "
                                f"({chain.first_problem})")  # fmt: skip


def register(app: typer.Typer) -> None:
    """Attach the ``audit`` sub-app to ``app``."""
    audit = typer.Typer(
        help="Auditor's verbs: verify the chain, list runs and rounds, show a round, export, "
        "serve a read-only web view, write a report; Merkle checkpoints and proofs an outsider "
        "checks with only the public key.",
        no_args_is_help=True,
    )
    audit.command("verify")(verify)
    audit.command("runs")(runs)
    audit.command("rounds")(rounds)
    audit.command("show")(show)
    audit.command("export")(export)
    audit.command("checkpoint")(checkpoint)
    audit.command("prove")(prove)
    audit.command("consistency")(consistency)
    audit.command("check-proof")(check_proof)
    audit.command("serve")(serve)
    audit.command("report")(report)
    app.add_typer(audit, name="audit")
