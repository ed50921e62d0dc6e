"""Digits splits, the Dirichlet partitioner and the user's own-data loader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedgate.models.data import (
    NUM_CLASSES,
    DigitsShardLoader,
    NpzDirectoryLoader,
    common_test_split,
    device_shard,
    dirichlet_partition,
    load_digits_dataset,
    region_pool,
    region_validation,
    transfer_split,
)

REGIONS = ("eu", "us")


def _indices(data) -> set[bytes]:
    """Rows as bytes: identifies examples across splits (digits has few exact duplicates)."""
    return {row.tobytes() + bytes([label]) for row, label in zip(data.x, data.y, strict=True)}


def test_digits_are_real_images_scaled_to_unit_range() -> None:
    data = load_digits_dataset()
    assert data.x.shape == (1797, 64) and data.x.dtype == np.float32
    assert data.x.min() >= 0.0 and data.x.max() == pytest.approx(1.0)
    assert set(np.unique(data.y)) == set(range(NUM_CLASSES))


def test_digits_equal_scikit_learns_and_load_without_importing_it() -> None:
    from sklearn.datasets import load_digits

    data, bunch = load_digits_dataset(), load_digits()
    assert np.array_equal(data.x, (bunch.data / 16.0).astype(np.float32))
    assert np.array_equal(data.y, bunch.target)
    code = (
        "import sys; from fedgate.models.data import load_digits_dataset as f; f.__wrapped__(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_splits_are_disjoint_and_cover_the_data() -> None:
    test = common_test_split(0)
    parts = [test, transfer_split(0)] + [region_validation(r, REGIONS) for r in REGIONS]
    parts += [region_pool(r, REGIONS) for r in REGIONS]
    assert sum(len(p) for p in parts) == len(load_digits_dataset())
    for i, a in enumerate(parts):
        for b in parts[i + 1 :]:
            shared = _indices(a) & _indices(b)
            assert len(shared) <= 2, "splits must not share examples"  # a few duplicate digits
    for r in REGIONS:
        assert set(np.unique(region_validation(r, REGIONS).y)) == set(range(NUM_CLASSES))


def test_transfer_split_is_held_out_from_every_region_whatever_the_regions() -> None:
    transfer = transfer_split(0)
    assert len(transfer) == 359
    assert set(np.unique(transfer.y)) == set(range(NUM_CLASSES))
    for regions in (("eu",), REGIONS, ("apac", "eu", "us")):
        for r in regions:
            for part in (region_validation(r, regions), region_pool(r, regions)):
                assert len(_indices(part) & _indices(transfer)) <= 2
    assert len(_indices(common_test_split(0)) & _indices(transfer)) <= 2
    assert not np.array_equal(transfer_split(1).x, transfer.x)


def test_partition_is_deterministic_complete_and_disjoint() -> None:
    labels = np.repeat(np.arange(10), 30)
    parts = dirichlet_partition(labels, 6, alpha=0.5, seed=3)
    again = dirichlet_partition(labels, 6, alpha=0.5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    joined = np.sort(np.concatenate(parts))
    assert np.array_equal(joined, np.arange(len(labels)))
    assert min(len(p) for p in parts) >= 2
    other = dirichlet_partition(labels, 6, alpha=0.5, seed=4)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def _label_entropy(labels: np.ndarray) -> float:
    p = np.bincount(labels, minlength=NUM_CLASSES) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def test_smaller_alpha_means_more_label_skew() -> None:
    labels = np.repeat(np.arange(10), 100)
    skewed = dirichlet_partition(labels, 10, alpha=0.1, seed=0)
    near_iid = dirichlet_partition(labels, 10, alpha=100.0, seed=0)
    mean_entropy = lambda parts: np.mean([_label_entropy(labels[p]) for p in parts])  # noqa: E731
    assert mean_entropy(skewed) < mean_entropy(near_iid) - 0.5
    assert mean_entropy(near_iid) > 0.9 * np.log(NUM_CLASSES)


@pytest.mark.parametrize(
    ("args", "message"),
    [((0, 0.5), "num_partitions"), ((3, 0.0), "alpha"), ((500, 0.5), "cannot give")],
)
def test_partition_rejects_bad_arguments(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dirichlet_partition(np.repeat(np.arange(10), 10), *args)


def test_device_shards_partition_the_region_pool() -> None:
    shards = [device_shard("eu", REGIONS, i, 5, alpha=0.5) for i in range(5)]
    assert sum(len(s) for s in shards) == len(region_pool("eu", REGIONS))
    loader = DigitsShardLoader("eu", REGIONS, 2, 5, 0.5, 0)
    assert np.array_equal(loader.load().y, shards[2].y)
    with pytest.raises(ValueError, match="partition_id"):
        device_shard("eu", REGIONS, 5, 5)
    with pytest.raises(ValueError, match="unknown region"):
        device_shard("apac", REGIONS, 0, 5)


def test_npz_loader_reads_and_rescales_user_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x8 = rng.integers(0, 17, size=(12, 8, 8))  # 0..16 intensities like sklearn's digits
    np.savez(tmp_path / "a.npz", x=x8, y=np.arange(12) % 10)
    np.savez(tmp_path / "b.npz", x=rng.random((3, 64)), y=np.array([1, 2, 3]))
    data = NpzDirectoryLoader(tmp_path).load()
    assert data.x.shape == (15, 64) and data.x.dtype == np.float32
    assert data.x.max() <= 1.0
    assert list(data.y[-3:]) == [1, 2, 3]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((2, 64))}, "missing"),
        ({"x": np.zeros((2, 10)), "y": np.zeros(2, int)}, "64 features"),
        ({"x": np.zeros((2, 64)), "y": np.array([0, 10])}, "labels"),
        ({"x": np.zeros((3, 64)), "y": np.zeros(2, int)}, "rows"),
    ],
)
def test_npz_loader_names_what_is_wrong(tmp_path: Path, arrays: dict, message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        NpzDirectoryLoader(tmp_path).load()


def test_npz_loader_needs_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        NpzDirectoryLoader(tmp_path / "nope").load()
    with pytest.raises(ValueError, match=r"no \.npz"):
        NpzDirectoryLoader(tmp_path).load()
