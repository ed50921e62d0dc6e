"""Signed heads kept outside the database, which a verified log must include or extend.

Two sources: the auditor's own checkpoint file (``audit verify --save-checkpoint``, then
``--since``) and a witness directory the region appends every head to as it signs it
(``FEDGATE_AUDIT_WITNESS_DIR``; ``witness.py``). Both hold heads the region key signed, so
someone who can rewrite the database but not reach these files cannot roll the log back or
rewrite it without verification naming the anchor it lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedgate.atomic_file import write_atomic
from fedgate.errors import UsageError
from fedgate.formats import is_hex64
from fedgate.server.audit.chain import HeadRecord

CHECKPOINT_FORMAT = "fedgate.audit.checkpoint.v1"
WITNESS_ENV = "FEDGATE_AUDIT_WITNESS_DIR"
WITNESS_FILE = "audit-heads.jsonl"


class AnchorError(UsageError, ValueError):
    """A checkpoint file or witness directory is missing or unreadable."""


@dataclass(frozen=True)
class Anchor:
    """A signed head of chain ``chain`` held outside the database; ``label`` says where."""

    chain: str
    head: HeadRecord
    label: str


def head_json(chain: str, head: HeadRecord, **extra: str) -> dict[str, Any]:
    """A head as the checkpoint and witness files hold it."""
    return {**extra, "chain": chain, **head.__dict__}


def _head(data: Any, where: str) -> tuple[str, HeadRecord]:
    try:
        chain = data["chain"]
        head = HeadRecord(
            int(data["seq"]), data["head"], data["key"], data["signature"], data["signed_at"]
        )
    except (KeyError, TypeError, ValueError):
        raise AnchorError(f"{where}: not a signed audit head") from None
    texts = (chain, head.head, head.key, head.signature, head.signed_at)
    if not all(isinstance(t, str) for t in texts) or not is_hex64(head.head):
        raise AnchorError(f"{where}: not a signed audit head")
    return chain, head


def write_checkpoint(path: str | Path, chain: str, head: HeadRecord) -> None:
    """Write the auditor's checkpoint: the last signed head a verification accepted."""
    data = head_json(chain, head, format=CHECKPOINT_FORMAT)
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_checkpoint(path: str | Path) -> Anchor:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnchorError(f"no checkpoint file at {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AnchorError(f"{path}: not a readable checkpoint ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise AnchorError(f"{path}: not a fedgate audit checkpoint ({CHECKPOINT_FORMAT})")
    chain, head = _head(data, str(path))
    return Anchor(chain, head, f"checkpoint {path.name}")


def witness_file(directory: str | Path) -> Path:
    return Path(directory) / WITNESS_FILE


def read_witness(directory: str | Path) -> list[Anchor]:
    """Every head the region mirrored into ``directory``, oldest first."""
    path = witness_file(directory)
    if not Path(directory).is_dir():
        raise AnchorError(f"no witness directory at {directory}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise AnchorError(f"no witnessed heads in {directory} (no {WITNESS_FILE})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AnchorError(f"{path}: unreadable ({exc})") from None
    anchors = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError:
            raise AnchorError(f"{path}:{number}: not JSON") from None
        chain, head = _head(data, f"{path}:{number}")
        anchors.append(Anchor(chain, head, f"witnessed head ({WITNESS_FILE}:{number})"))
    return anchors
