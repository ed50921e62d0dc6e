"""Export the audit chain (JSONL or CSV) and verify an export offline with public keys.

Both formats hold, in order: one ``chain`` record (chain id and recorded head), the
signed ``head`` records, the Merkle ``checkpoint`` records (size in ``seq``, root in ``hash``,
the signed ``note``; not its local time, which nothing signs), then every ``event`` in seq
order. In JSONL the payload is a JSON object; in CSV it is its canonical JSON text.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Engine, select

from fedgate.crypto import canonical_json
from fedgate.errors import UsageError
from fedgate.server.audit.anchors import Anchor
from fedgate.server.audit.chain import HeadRecord
from fedgate.server.audit.checkpoints import StoredCheckpoint, stored_checkpoints
from fedgate.server.audit.log import CHAIN, EVENTS, HEADS, _head
from fedgate.server.audit.verify import ChainVerifier, Keys, VerifyReport

FORMAT = "fedgate.audit.export.v1"
CSV_FIELDS = (
    "record",
    "seq",
    "kind",
    "ts",
    "payload",
    "prev",
    "hash",
    "key",
    "signature",
    "signed_at",
    "chain",
    "format",
    "note",
)
FORMATS = ("jsonl", "csv")


class ExportError(UsageError, ValueError):
    """An export file is unreadable or not in the fedgate export format."""


def export_chain(engine: Engine, out: TextIO, fmt: str = "jsonl", *, batch: int = 20_000) -> int:
    """Write the chain to ``out``; returns the number of events written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (jsonl or csv)")
    writer = csv.DictWriter(out, CSV_FIELDS) if fmt == "csv" else None

    def emit(record: dict[str, Any]) -> None:
        if writer is None:
            out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        else:
            writer.writerow(record)

    if writer is not None:
        writer.writeheader()
    count = 0
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            state = conn.execute(select(CHAIN.c.chain_id, CHAIN.c.seq, CHAIN.c.head)).one()
            emit(
                {
                    "record": "chain",
                    "format": FORMAT,
                    "chain": state.chain_id,
                    "seq": state.seq,
                    "hash": state.head,
                }
            )
            for row in conn.execute(select(HEADS).order_by(HEADS.c.seq, HEADS.c.id)):
                h = _head(row)
                emit(
                    {
                        "record": "head",
                        "seq": h.seq,
                        "hash": h.head,
                        "key": h.key,
                        "signature": h.signature,
                        "signed_at": h.signed_at,
                    }
                )
            for c in stored_checkpoints(conn):
                # no signed_at: nothing signs it, so an export holds only what verification checks
                emit({"record": "checkpoint", "seq": c.size, "hash": c.root, "key": c.key,
                      "note": c.note})  # fmt: skip
            result = conn.execution_options(yield_per=batch).execute(
                select(EVENTS).order_by(EVENTS.c.seq)
            )
            for r in result:
                payload: Any = r.payload if writer is not None else json.loads(r.payload)
                emit(
                    {
                        "record": "event",
                        "seq": r.seq,
                        "kind": r.kind,
                        "ts": r.ts,
                        "payload": payload,
                        "prev": r.prev,
                        "hash": r.hash,
                    }
                )
                count += 1
    return count


@dataclass(frozen=True)
class _Line:
    number: int
    record: dict[str, Any]


def _records(path: Path) -> Iterator[_Line]:
    try:
        yield from _parse(path)
    except UnicodeDecodeError as exc:
        raise ExportError(f"{path}: not UTF-8 ({exc.reason})") from None
    except csv.Error as exc:
        raise ExportError(f"{path}: malformed CSV ({exc})") from None


def _parse(path: Path) -> Iterator[_Line]:
    with path.open(newline="", encoding="utf-8") as fh:
        first = fh.readline()
        fh.seek(0)
        if first.startswith("record,"):
            for n, row in enumerate(csv.DictReader(fh), start=2):
                yield _Line(n, dict(row))
            return
        for n, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    yield _Line(n, json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ExportError(f"{path}:{n}: not JSON ({exc.msg})") from None


def _int(line: _Line, key: str) -> int:
    try:
        return int(line.record[key])
    except (KeyError, TypeError, ValueError):
        raise ExportError(f"line {line.number}: bad or missing {key!r}") from None


def _str(line: _Line, key: str) -> str:
    value = line.record.get(key)
    if not isinstance(value, str):
        raise ExportError(f"line {line.number}: bad or missing {key!r}")
    return value


def verify_export(
    path: str | Path,
    keys: Keys | None,
    *,
    anchors: Iterable[Anchor] = (),
    require_signed: bool | None = None,
) -> VerifyReport:
    """Verify an export file offline against trusted public ``keys`` (by fingerprint), the
    ``anchors`` it must include, and (``require_signed``) ``coverage.py``'s rules."""
    anchors = list(anchors)
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"no export file at {path}")
    lines = _records(path)
    header = next(lines, None)
    if header is None or header.record.get("record") != "chain":
        raise ExportError(f"{path}: does not start with a chain record (not a fedgate export)")
    if header.record.get("format") != FORMAT:
        raise ExportError(f"{path}: unsupported export format {header.record.get('format')!r}")
    chain = _str(header, "chain")
    heads: list[HeadRecord] = []
    checkpoints: list[StoredCheckpoint] = []
    checker: ChainVerifier | None = None

    def start() -> ChainVerifier:
        return ChainVerifier(chain, heads, keys, anchors=anchors, require_signed=require_signed,
                             checkpoints=checkpoints)  # fmt: skip

    for line in lines:
        kind = line.record.get("record")
        if kind == "checkpoint":
            if checker is not None:
                raise ExportError(f"line {line.number}: checkpoint record after the events")
            fields = (_int(line, "seq"), _str(line, "hash"), _str(line, "key"))
            checkpoints.append(StoredCheckpoint(*fields, _str(line, "note"), signed_at=""))
        elif kind == "head":
            if checker is not None:
                raise ExportError(f"line {line.number}: head record after the events")
            heads.append(
                HeadRecord(
                    _int(line, "seq"),
                    _str(line, "hash"),
                    _str(line, "key"),
                    _str(line, "signature"),
                    _str(line, "signed_at"),
                )
            )
        elif kind == "event":
            if checker is None:
                checker = start()
            payload = line.record.get("payload")
            text = payload if isinstance(payload, str) else _canonical(line, payload)
            checker.feed(
                _int(line, "seq"),
                _str(line, "kind"),
                _str(line, "ts"),
                text,
                _str(line, "prev"),
                _str(line, "hash"),
            )
        else:
            raise ExportError(f"line {line.number}: unknown record {kind!r}")
    if checker is None:
        checker = start()
    return checker.finish(_int(header, "seq"), _str(header, "hash"))


def _canonical(line: _Line, payload: Any) -> str:
    try:
        return canonical_json(payload).decode()
    except Exception as exc:  # rfc8785 raises several types for unencodable values
        raise ExportError(f"line {line.number}: payload cannot be canonicalised ({exc})") from None
