"""A region's run records as the operator's verbs need them: open the region store, end a
run that nobody will finish, resolve a starting model (``--resume`` / ``--init-from``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedgate.formats import is_hex64
from fedgate.server.audit.keys import ensure_region_key
from fedgate.server.audit.store import Store
from fedgate.server.coordinator.service import load_global
from fedgate.server.db import BlobStore, resolve_url
from fedgate.server.launch.config import ConfigError, RegionConfig


def region_url(home: Path, region: RegionConfig) -> str:
    """The region's database URL: its ``db``, else ``$FEDGATE_DB``, else the home's file."""
    return resolve_url(region.db or None, Path(home), region.name)


def region_store(home: Path, region: RegionConfig):
    """The region's store, its audit chain signed by the region key."""
    return Store.open(region_url(home, region), signer=ensure_region_key(home, region.name))


def mark_ended(home: Path, region: RegionConfig, run_id: int | str, status: str, note: str) -> bool:
    """Finish a run the region database still calls running; False when it is not running."""
    store = region_store(home, region)
    info = store.run(run_id)
    if info is None or info.status != "running":
        return False
    store.finish_run(run_id, status=status, note=note)
    return True


@dataclass(frozen=True)
class StartPoint:
    """Where a run starts: a model digest (empty: fresh), the first round, the run it
    continues (empty unless resumed)."""

    init_model: str = ""
    first_round: int = 1
    resume_from: str = ""
    base_global_version: str = ""  # "global:N" when the model is global version N

    def run_config(self) -> dict[str, str | int]:
        return {"init-model": self.init_model, "first-round": self.first_round,
                "resume-from": self.resume_from,
                "base-global-version": self.base_global_version}  # fmt: skip


def resume_point(home: Path, region: RegionConfig, run_id: str, rounds: int) -> StartPoint:
    """Continue ``run_id`` after its last recorded round, from that round's stored model."""
    store = region_store(home, region)
    info = store.run(run_id)
    if info is None:
        raise ConfigError(f"region {region.name} has no run {run_id}; see `fedgate runs`")
    if info.status in ("running", "finished"):
        raise ConfigError(
            f"run {run_id} is {info.status}; only an interrupted, failed or stopped run can be "
            "resumed (stop a running one with `fedgate region stop` first)"
        )
    last, model = last_model(store, run_id, BlobStore(Path(home) / "blobs"))
    if last >= rounds:
        raise ConfigError(f"run {run_id} already completed round {last} of {rounds}")
    base = str(info.config.get("base-global-version", ""))  # the resumed run's, kept
    return StartPoint(model, last + 1, str(run_id), base)


def last_model(store, run_id: str, blobs) -> tuple[int, str]:
    """A run's last recorded round and the digest of its model, which must be in ``blobs``."""
    models = store.round_models(run_id)
    if not models:
        raise ConfigError(f"run {run_id} recorded no round with a model; start a new run")
    last = max(models)
    if not blobs.has(models[last]):
        raise ConfigError(f"round {last}'s model {models[last][:12]}… is missing from the blobs")
    return last, models[last]


def global_point(home: Path, source: str) -> StartPoint:
    """A start from global version N (``global:N``): its weights, verified under the home's
    coordinator key, copied into the region's blob store; the run's artifact records N."""
    number = source.removeprefix("global:")
    if not number.isdigit() or int(number) < 1:
        raise ConfigError(f"--init-from {source}: give global:N with N >= 1")
    info, weights = load_global(Path(home), int(number))
    sha = BlobStore(Path(home) / "blobs").put(weights)
    assert sha == info.weights_sha256, "load_global returns the bytes it verified"
    return StartPoint(sha, base_global_version=f"global:{info.version}")


def init_point(home: Path, region: RegionConfig, source: str) -> StartPoint:
    """A warm start: ``RUN`` (its final or last recorded model), a model digest, or
    ``global:N`` (a global version, once the coordinator tier exists)."""
    blobs = BlobStore(Path(home) / "blobs")
    if source.startswith("global:"):
        return global_point(home, source)
    if is_hex64(source):
        if not blobs.has(source):
            raise ConfigError(f"--init-from: no model {source[:12]}… in {Path(home) / 'blobs'}")
        return StartPoint(source)
    store = region_store(home, region)
    if store.run(source) is None:
        raise ConfigError(
            f"--init-from {source}: neither a run of region {region.name} nor a 64-hex model "
            "digest; see `fedgate runs`"
        )
    return StartPoint(last_model(store, source, blobs)[1])
