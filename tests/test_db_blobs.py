"""Content-addressed blob store."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fedgate.server.db import BlobError, BlobStore


def test_put_get_and_idempotence(tmp_path) -> None:
    store = BlobStore(tmp_path / "blobs")
    sha = store.put(b"weights")
    assert sha == hashlib.sha256(b"weights").hexdigest()
    assert store.put(b"weights") == sha and store.has(sha)
    assert store.path(sha) == tmp_path / "blobs" / sha[:2] / sha
    assert store.get(sha) == b"weights"


def test_corruption_and_bad_digests(tmp_path) -> None:
    store = BlobStore(tmp_path)
    sha = store.put(b"weights")
    path = store.path(sha)
    path.chmod(0o644)
    path.write_bytes(b"w3ights")
    with pytest.raises(BlobError, match="corrupt"):
        store.get(sha)
    with pytest.raises(BlobError, match="no blob"):
        store.get("0" * 64)
    with pytest.raises(BlobError, match="not a SHA-256"):
        store.path("../../etc/passwd")


def test_tensors_round_trip(tmp_path) -> None:
    store = BlobStore(tmp_path)
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
    sha = store.put_tensors(arrays, {"model": "cnn"})
    assert store.put_tensors(arrays, {"model": "cnn"}) == sha  # deterministic encoding
    back = store.get_tensors(sha)
    assert set(back) == {"w", "b"}
    np.testing.assert_array_equal(back["w"], arrays["w"])
