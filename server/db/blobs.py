"""Content-addressed file store: weights and other artifacts named by their SHA-256.

Layout: ``<root>/<sha[:2]>/<sha>``, written atomically; the database keeps only digests
and paths. Model weights go in as safetensors (never pickle).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedgate.atomic_file import READ_ONLY, write_atomic
from fedgate.errors import VerificationError
from fedgate.formats import is_hex64


class BlobError(VerificationError, ValueError):
    """A blob is missing, its digest is malformed, or its content does not match it."""


class BlobStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, sha: str) -> Path:
        if not is_hex64(sha):
            raise BlobError(f"not a SHA-256 hex digest: {sha!r}")
        return self.root / sha[:2] / sha

    def has(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def put(self, data: bytes) -> str:
        """Store ``data``; returns its SHA-256 (idempotent)."""
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if target.is_file():
            return sha
        write_atomic(target, data, mode=READ_ONLY)
        return sha

    def get(self, sha: str) -> bytes:
        """The bytes stored under ``sha``, after checking they still hash to it."""
        try:
            data = self.path(sha).read_bytes()
        except FileNotFoundError:
            raise BlobError(f"no blob {sha}") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha:
            raise BlobError(f"blob {sha} is corrupt (content hashes to {actual})")
        return data

    def put_tensors(
        self, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
    ) -> str:
        """Store named arrays as one safetensors file; returns its SHA-256."""
        # heavy import (safetensors): only for model blobs
        from safetensors.numpy import save

        arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        return self.put(save(arrays, metadata=dict(metadata) if metadata else None))

    def get_tensors(self, sha: str) -> dict[str, np.ndarray]:
        # heavy import (safetensors): only for model blobs
        from safetensors.numpy import load

        return load(self.get(sha))
