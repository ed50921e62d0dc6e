"""Hand an approved regional artifact to the coordinator: one bundle directory.

A bundle is what ``server/coordinator/candidates.py`` reads: ``manifest.dsse.json`` (the
artifact envelope), ``approvals/*.json`` (the gate's approval envelopes of this artifact) and
``weights.safetensors`` (the blob the manifest is about). It is assembled in a temporary
directory beside the target and renamed into place, so a coordinator scanning the inbox never
sees half a bundle. The coordinator trusts none of it until it has verified everything.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fedgate.atomic_file import PUBLIC, fsync_dir, write_atomic
from fedgate.server.db.blobs import BlobStore
from fedgate.server.gate.decisions import GateRefused
from fedgate.server.region.artifact import Artifact, artifacts_dir


def approvals_of(home: str | Path, sha: str) -> list[Path]:
    """The approval envelopes the gate wrote for the artifact with weights ``sha``."""
    return sorted(artifacts_dir(home).glob(f"{sha}.approval-*.dsse.json"))


def bundle_name(artifact: Artifact) -> str:
    return f"{artifact.manifest.region}-{artifact.sha256[:16]}"


def export_bundle(
    home: str | Path, artifact: Artifact, inbox: Path, *, unapproved: bool = False
) -> Path:
    """Write a VERIFIED ``artifact``, its approvals and its weights as a bundle under ``inbox``;
    ``GateRefused`` when no approval exists (nothing is written), unless ``unapproved`` (the
    cycle offers every artifact, so that the coordinator records each region's refusal).
    Exporting again replaces the bundle (e.g. with an approval added since)."""
    approvals = approvals_of(home, artifact.sha256)
    if not approvals and not unapproved:
        raise GateRefused(
            f"artifact {artifact.sha256[:16]} of region {artifact.manifest.region} has no "
            f"approval; approve it first (`fedgate gate approve {artifact.sha256[:16]} --key K`)"
        )
    weights = BlobStore(Path(home) / "blobs").get(artifact.sha256)  # checks the digest
    inbox.mkdir(parents=True, exist_ok=True)
    target = inbox / bundle_name(artifact)
    staging = inbox / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    write_atomic(staging / "manifest.dsse.json", artifact.envelope, mode=PUBLIC)
    write_atomic(staging / "weights.safetensors", weights, mode=PUBLIC)
    for path in approvals:
        write_atomic(staging / "approvals" / path.name, path.read_bytes(), mode=PUBLIC)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    fsync_dir(inbox)
    return target
