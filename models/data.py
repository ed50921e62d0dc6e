"""Datasets: scikit-learn's bundled digits, regional splits, Dirichlet non-IID shards, user data.

Every split is a pure function of (regions, seed, alpha, ...), so a SuperNode, the regional
ServerApp and the tests all derive the same shards without shipping data around.

Layout of the digits data (1,797 real 8x8 images):
- a common **test** split (``TEST_FRACTION``), never trained on: regions and the
  coordinator only report accuracy on it;
- a public **transfer** split (``TRANSFER_FRACTION`` of all digits, stratified, drawn from
  what the test split leaves with its own random stream): the coordinator distils students on
  it (``models/distill.py``), so it is held out from every region for any set of regions and
  never holds device data;
- the rest is dealt to the regions (disjoint, stratified); inside each region a held-out
  **validation** split for the regional server and a **training pool** that is partitioned
  across the region's devices with a Dirichlet(alpha) label skew.

The test split is the same as before the transfer split existed; the regions' validation
splits and device pools are drawn as before from what is left, so they are smaller (the
pools lose about a quarter) and not the same examples.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

TEST_FRACTION = 0.2
TRANSFER_FRACTION = 0.2  # of all digits (a quarter of what the test split leaves)
_TRANSFER_STREAM = 0x7472616E  # the transfer split's own random stream beside ``seed``
VALIDATION_FRACTION = 0.15
NUM_CLASSES = 10
NUM_FEATURES = 64


@dataclass(frozen=True)
class Dataset:
    """Features ``x`` (n, 64) float32 in [0, 1] and labels ``y`` (n,) int64."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or self.x.shape[1] != NUM_FEATURES:
            raise ValueError(f"x must have shape (n, {NUM_FEATURES}), got {self.x.shape}")
        if self.y.shape != (self.x.shape[0],):
            raise ValueError(f"y must have shape ({self.x.shape[0]},), got {self.y.shape}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, idx: np.ndarray) -> Dataset:
        return Dataset(self.x[idx], self.y[idx])


class DataLoader(Protocol):
    """What a device needs to train: anything returning its local ``Dataset``."""

    def load(self) -> Dataset: ...


DIGITS_FILE = ("datasets", "data", "digits.csv.gz")
"""Where scikit-learn ships the digits (``load_digits`` reads the same file)."""


def digits_file() -> Path:
    """scikit-learn's bundled ``digits.csv.gz``, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root).joinpath(*DIGITS_FILE)
        if path.is_file():
            return path
    raise FileNotFoundError("scikit-learn's digits.csv.gz not found: is scikit-learn installed?")


@lru_cache(maxsize=1)
def load_digits_dataset() -> Dataset:
    """All 1,797 digits as float32 features scaled to [0, 1].

    Read straight from scikit-learn's bundled CSV (64 pixel columns, then the label), as
    ``sklearn.datasets.load_digits`` does, without importing scikit-learn and SciPy: that
    import costs a device process about 77 MiB and 2-3 s.
    """
    table = np.loadtxt(digits_file(), delimiter=",")
    x = (table[:, :-1] / 16.0).astype(np.float32)
    y = table[:, -1].astype(np.int64)
    return Dataset(x, y)


def _stratified_split(y: np.ndarray, fraction: float, rng: np.random.Generator):
    """Indices (held, rest) with ``fraction`` of every class held out."""
    held: list[np.ndarray] = []
    rest: list[np.ndarray] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = round(len(idx) * fraction)
        held.append(idx[:k])
        rest.append(idx[k:])
    return np.sort(np.concatenate(held)), np.sort(np.concatenate(rest))


@lru_cache(maxsize=64)
def _region_indices(
    regions: tuple[str, ...], seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    data = load_digits_dataset()
    rng = np.random.default_rng(seed)
    _, pool = _stratified_split(data.y, TEST_FRACTION, rng)
    pool = np.setdiff1d(pool, _transfer_indices(seed), assume_unique=True)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    # Deal the pool's indices to regions class by class so every region sees every class.
    per_region: dict[str, list[np.ndarray]] = {r: [] for r in regions}
    for c in range(NUM_CLASSES):
        idx = rng.permutation(pool[data.y[pool] == c])
        for i, part in enumerate(np.array_split(idx, len(regions))):
            per_region[regions[i]].append(part)
    for r in regions:
        idx = np.sort(np.concatenate(per_region[r]))
        val_local, train_local = _stratified_split(data.y[idx], VALIDATION_FRACTION, rng)
        out[r] = (idx[val_local], idx[train_local])
    return out


@lru_cache(maxsize=8)
def _transfer_indices(seed: int) -> np.ndarray:
    data = load_digits_dataset()
    _, pool = _stratified_split(data.y, TEST_FRACTION, np.random.default_rng(seed))
    share = TRANSFER_FRACTION / (1.0 - TEST_FRACTION)
    held, _ = _stratified_split(
        data.y[pool], share, np.random.default_rng([seed, _TRANSFER_STREAM])
    )
    out = pool[held]
    out.setflags(write=False)
    return out


def _check_region(region: str, regions: tuple[str, ...]) -> None:
    if region not in regions:
        raise ValueError(f"unknown region {region!r}; known regions: {', '.join(regions)}")


def common_test_split(seed: int = 0) -> Dataset:
    """The common test split shared by all regions and the global coordinator."""
    data = load_digits_dataset()
    held, _ = _stratified_split(data.y, TEST_FRACTION, np.random.default_rng(seed))
    return data.take(held)


def transfer_split(seed: int = 0) -> Dataset:
    """The public transfer split the coordinator distils on: disjoint from the common test
    split and from every region's validation split and pool, whatever the regions."""
    return load_digits_dataset().take(_transfer_indices(seed))


def region_validation(region: str, regions: tuple[str, ...], seed: int = 0) -> Dataset:
    """The region's held-out validation split (used by its server for centralized eval)."""
    regions = tuple(regions)
    _check_region(region, regions)
    return load_digits_dataset().take(_region_indices(regions, seed)[region][0])


def region_pool(region: str, regions: tuple[str, ...], seed: int = 0) -> Dataset:
    """The region's training pool, before it is split across devices."""
    regions = tuple(regions)
    _check_region(region, regions)
    return load_digits_dataset().take(_region_indices(regions, seed)[region][1])


def dirichlet_partition(
    labels: np.ndarray,
    num_partitions: int,
    alpha: float,
    seed: int = 0,
    min_size: int = 2,
) -> list[np.ndarray]:
    """Split indices of ``labels`` into ``num_partitions`` label-skewed shards.

    For each class, the share given to each partition is drawn from Dirichlet(alpha):
    small alpha (0.1) gives each device a few dominant classes, large alpha is near IID.
    Draws are repeated (deterministically) until every shard has ``min_size`` examples.
    """
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if num_partitions * min_size > len(labels):
        raise ValueError(
            f"cannot give {num_partitions} partitions {min_size} examples each "
            f"from {len(labels)} examples"
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(1000):
        shards: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for p, part in enumerate(np.split(idx, cuts)):
                shards[p].append(part)
        out = [np.sort(np.concatenate(s)) for s in shards]
        if min(len(s) for s in out) >= min_size:
            return out
    raise ValueError(f"no Dirichlet(alpha={alpha}) draw gave every partition {min_size} examples")


def device_shard(
    region: str,
    regions: tuple[str, ...],
    partition_id: int,
    num_partitions: int,
    alpha: float = 0.5,
    seed: int = 0,
) -> Dataset:
    """The shard of the region's pool owned by device ``partition_id``."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in [0, {num_partitions}), got {partition_id}")
    pool = region_pool(region, regions, seed)
    parts = _region_partition(tuple(regions), region, num_partitions, alpha, seed)
    return pool.take(parts[partition_id])


@lru_cache(maxsize=32)
def _region_partition(
    regions: tuple[str, ...], region: str, num_partitions: int, alpha: float, seed: int
) -> tuple[np.ndarray, ...]:
    """The region pool's Dirichlet split, drawn once per process (warm ClientApps and the
    simulation serve many partitions of the same split)."""
    pool = region_pool(region, regions, seed)
    parts = dirichlet_partition(pool.y, num_partitions, alpha, seed=seed)
    for part in parts:
        part.setflags(write=False)
    return tuple(parts)


@dataclass(frozen=True)
class DigitsShardLoader:
    """Loader for the built-in digits shard of one simulated device."""

    region: str
    regions: tuple[str, ...]
    partition_id: int
    num_partitions: int
    alpha: float = 0.5
    seed: int = 0

    def load(self) -> Dataset:
        return device_shard(
            self.region, self.regions, self.partition_id, self.num_partitions, self.alpha, self.seed
        )


@dataclass(frozen=True)
class NpzDirectoryLoader:
    """A user's own data: every ``*.npz`` file in ``path`` holding arrays ``x`` and ``y``.

    ``x`` is (n, 64) or (n, 8, 8) with values in [0, 1] (values above 1 are assumed to be
    0..16 digits intensities or 0..255 pixels and are rescaled); ``y`` holds integer labels
    in [0, 10). Files are read in name order and concatenated.
    """

    path: Path

    def load(self) -> Dataset:
        path = Path(self.path)
        if not path.is_dir():
            raise FileNotFoundError(f"data directory {path} does not exist")
        files = sorted(path.glob("*.npz"))
        if not files:
            raise ValueError(f"no .npz files in {path}")
        xs, ys = [], []
        for f in files:
            with np.load(f, allow_pickle=False) as npz:
                missing = {"x", "y"} - set(npz.files)
                if missing:
                    raise ValueError(f"{f}: missing array(s) {sorted(missing)}")
                x = np.asarray(npz["x"], dtype=np.float32).reshape(len(npz["x"]), -1)
                y = np.asarray(npz["y"])
            if x.shape[1] != NUM_FEATURES:
                raise ValueError(f"{f}: x must have {NUM_FEATURES} features per row, got {x.shape}")
            if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= NUM_CLASSES:
                raise ValueError(f"{f}: y must hold integer labels in [0, {NUM_CLASSES})")
            if len(x) != len(y):
                raise ValueError(f"{f}: x has {len(x)} rows but y has {len(y)}")
            xmax = float(x.max()) if x.size else 0.0
            if xmax > 16.0:
                x = x / 255.0
            elif xmax > 1.0:
                x = x / 16.0
            xs.append(x.astype(np.float32))
            ys.append(y.astype(np.int64))
        return Dataset(np.concatenate(xs), np.concatenate(ys))
