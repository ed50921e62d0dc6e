"""Per-run progress records written by the ServerApp and read by the CLI (JSON lines)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fedgate.strategies.robust_strategy import RoundRecord

PROGRESS_FILE = "progress.jsonl"


class ProgressWriter:
    """Appends one JSON object per event to ``<out_dir>/progress.jsonl`` (no-op without dir)."""

    def __init__(self, out_dir: str | Path | None) -> None:
        self.path = Path(out_dir) / PROGRESS_FILE if out_dir else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, kind: str, **data: Any) -> None:
        if self.path is None:
            return
        line = json.dumps({"kind": kind, "ts": time.time(), **data}, default=float)
        with self.path.open("a") as fh:
            fh.write(line + "\n")
            fh.flush()

    def round(self, record: RoundRecord, model: str = "") -> None:
        self.write(
            "round",
            model=model,
            round=record.round,
            sampled=record.sampled,
            accepted=record.accepted,
            rejected=record.rejected,
            aggregated=record.aggregated,
            note=record.note,
            clients=[asdict(c) for c in record.clients],
            **record.metrics,
        )


def read_progress(out_dir: str | Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """New complete records after byte ``offset``, and the offset to continue from."""
    path = Path(out_dir) / PROGRESS_FILE
    if not path.exists():
        return [], offset
    with path.open("rb") as fh:
        fh.seek(offset)
        chunk = fh.read()
    end = chunk.rfind(b"\n") + 1
    records = [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]
    return records, offset + end
