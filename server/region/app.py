"""The regional ServerApp: verified, robust federated training of one region's model.

Its run config is a ``fedgate.server.region.run_spec.RunSpec`` (``[tool.flwr.app.config]`` of
the generated app, or ``--run-config``), read and checked once when the run starts; the keys,
their types, defaults and allowed values are documented there.
Its ``launch-request`` key (not a ``RunSpec`` setting) carries the operator's signed
request naming the digest of the spec's run config (``server/audit/actors.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.exit import add_exit_handler
from safetensors.numpy import save_file

from fedgate.atomic_file import write_atomic
from fedgate.models.data import Dataset, common_test_split, region_validation
from fedgate.models.nets import build_model
from fedgate.models.threads import one_torch_thread
from fedgate.models.train import evaluate, example_losses
from fedgate.server.audit.actors import LAUNCH_REQUEST_KEY, ActorError
from fedgate.server.audit.keys import ensure_region_key
from fedgate.server.audit.store import Store
from fedgate.server.db import BlobStore, resolve_url
from fedgate.server.db.engine import RetryPolicy, retry_policy
from fedgate.server.region.artifact import build_manifest, write_artifact
from fedgate.server.region.executor_watch import ExecutorWatch
from fedgate.server.region.fast_grid import FastPollGrid
from fedgate.server.region.nonces import ReplayGuard, RoundNonces
from fedgate.server.region.progress import ProgressWriter
from fedgate.server.region.run_spec import RunSpec
from fedgate.server.trust.actors import admit_launch
from fedgate.server.trust.enrollment import DatabaseDeviceRegistry
from fedgate.strategies.envelope import signature_screen
from fedgate.strategies.robust_strategy import (
    RobustStrategy,
    RoundRecord,
    RoundSigner,
    Scorer,
    structural_screen,
)
from fedgate.strategies.rules import build_rule

app = ServerApp()


@dataclass(frozen=True)
class RegionContext:
    """Where a region run keeps its state and with which key it signs."""

    region: str
    home: Path
    db_url: str

    @classmethod
    def from_spec(cls, spec: RunSpec) -> RegionContext:
        home = Path(spec.home).resolve()
        return cls(spec.region, home, resolve_url(spec.db or None, home, spec.region))

    def open(self) -> tuple[Store, Any]:
        """The region's store (audit chain signed by the region key) and device registry."""
        store = Store.open(self.db_url, signer=ensure_region_key(self.home, self.region))
        return store, DatabaseDeviceRegistry(store, self.region)


def build_strategy(
    spec: RunSpec,
    run_id: str,
    store: Store,
    registry: Any,
    scorer: Scorer | None = None,
    progress: ProgressWriter | None = None,
):
    """The region's strategy: signed instructions, envelope screening, the configured rule;
    ``scorer`` (the server's validation loss of a candidate model) feeds the ensemble, and
    every federated evaluation is stored, audited and reported to ``progress``."""
    region = spec.region
    nonces = RoundNonces()
    key = store.audit.signer
    assert key is not None, "the region store signs with the region key"

    def opened(server_round: int, details: dict) -> None:
        store.open_round(run_id, server_round, **details)

    def evaluated(server_round: int, metrics: dict[str, float]) -> None:
        store.record_metrics(run_id, server_round, metrics)
        if progress is not None:
            progress.write("evaluated", round=server_round, **metrics)

    return RobustStrategy(
        build_rule(spec.aggregator, spec.f, spec.pre or None),
        clients_per_round=spec.clients_per_round,
        min_clients=spec.min_clients,
        max_examples=spec.max_examples,
        screen=signature_screen(
            registry, region, run_id, nonces, structural_screen, seen=ReplayGuard()
        ),
        signer=RoundSigner(key, region, run_id, nonces),
        on_round_opened=opened,
        on_evaluated=evaluated,
        scorer=scorer,
        wait_timeout=spec.round_timeout,
        seed=spec.seed,
    )


def device_config(spec: RunSpec) -> dict[str, str | int | float]:
    """What every device is told each round, inside its signed instruction: the keys
    ``fedgate.clients.app`` (and a simulated attack) read."""
    return {
        "regions": ",".join(spec.regions),
        "model": spec.model,
        "lr": spec.lr,
        "alpha": spec.alpha,
        "seed": spec.seed,
        "f": spec.f,
        "clients-per-round": spec.clients_per_round,
    }


def rejected_by_reason(rounds: Sequence[RoundRecord]) -> dict[str, int]:
    """How many updates were refused for each reason, over every round."""
    counts: dict[str, int] = {}
    for record in rounds:
        for fate in record.clients:
            if not fate.accepted:
                counts[fate.reason] = counts.get(fate.reason, 0) + 1
    return dict(sorted(counts.items()))


def final_accuracy(final: Mapping[str, Any]) -> tuple[float, float]:
    """(validation, test) accuracy of the last round's evaluation; NaN where it is missing."""
    return float(final.get("val-acc", float("nan"))), float(final.get("test-acc", float("nan")))


def run_summary(
    spec: RunSpec,
    run_id: str,
    rounds: Sequence[RoundRecord],
    final: Mapping[str, Any],
    model_sha: str,
    seconds: float,
) -> dict[str, Any]:
    """The run's summary (``summary.json``, the ``finished`` progress record)."""
    val_acc, test_acc = final_accuracy(final)
    return {
        "region": spec.region,
        "run_id": run_id,
        "rounds": spec.rounds,
        "devices": len({c.node_id for r in rounds for c in r.clients}),
        "accepted": sum(r.accepted for r in rounds),
        "rejected": sum(r.rejected for r in rounds),
        "rejected_by_reason": rejected_by_reason(rounds),
        "val_acc": val_acc,
        "test_acc": test_acc,
        "model_sha256": model_sha,
        "first_round": spec.first_round,
        "init_model": spec.init_model,
        "resumed_from": spec.resume_from,
        "seconds": seconds,
    }


@dataclass
class RegionModel:
    """The region's model and the data the server judges it on: the region's validation
    split (the aggregators' scorer) and the common test split nothing in training sees."""

    model: torch.nn.Module
    validation: Dataset
    test: Dataset

    @classmethod
    def for_spec(cls, spec: RunSpec, blobs: BlobStore) -> RegionModel:
        """Fresh from ``spec.seed``, or the stored ``spec.init_model``."""
        model = build_model(spec.model, seed=spec.seed)
        if spec.init_model:
            model.load_state_dict(_tensors(blobs.get_tensors(spec.init_model)))
        validation = region_validation(spec.region, spec.regions, spec.seed)
        return cls(model, validation, common_test_split(spec.seed))

    def losses(self, arrays: ArrayRecord) -> np.ndarray:
        """The aggregators' scorer: a candidate model's loss on each validation example."""
        with one_torch_thread():
            self.model.load_state_dict(arrays.to_torch_state_dict())
            return example_losses(self.model, self.validation)

    def losses_of_vector(self, vector: np.ndarray) -> np.ndarray:
        """``losses`` of the model given as one flat float32 vector, in the order of the
        model's state dict (the order of the ArrayRecords the strategy flattens)."""
        state = self.model.state_dict()  # the model's own tensors (views, no copy)
        total = sum(tensor.numel() for tensor in state.values())
        if total != len(vector):
            raise ValueError(f"a vector of {len(vector)} values for a model of {total}")
        flat = torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float32))
        with one_torch_thread():
            with torch.no_grad():  # what load_state_dict does, without its per-call checks
                pos = 0
                for tensor in state.values():
                    size = tensor.numel()
                    tensor.copy_(flat[pos : pos + size].view(tensor.shape))
                    pos += size
            return example_losses(self.model, self.validation)

    def scorer(self) -> Scorer:
        """The strategy's scorer: ``losses``, with ``losses_of_vector`` as its flat form."""
        fn = self.losses

        def scorer(arrays: ArrayRecord) -> np.ndarray:
            return fn(arrays)

        scorer.of_vector = self.losses_of_vector  # type: ignore[attr-defined]
        # the validation split itself, for filters that probe a candidate model with it
        # (the trigger scan and the trigger repair)
        scorer.data = (self.validation.x, self.validation.y)  # type: ignore[attr-defined]
        return scorer

    def metrics(self, arrays: ArrayRecord) -> dict[str, float]:
        """A round's model evaluated on the validation and the common test split."""
        with one_torch_thread():
            self.model.load_state_dict(arrays.to_torch_state_dict())
            stats = evaluate(self.model, self.validation)
            held_out = evaluate(self.model, self.test)
        return {"val-loss": stats.loss, "val-acc": stats.accuracy, "test-acc": held_out.accuracy}


@dataclass
class RoundLog:
    """Records each round's evaluated model: its blob, the store's round row, progress."""

    run_id: str
    store: Store
    blobs: BlobStore
    progress: ProgressWriter
    first_round: int

    def evaluated(
        self,
        server_round: int,
        record: RoundRecord | None,
        arrays: ArrayRecord,
        metrics: dict[str, float],
    ) -> None:
        if record is not None:
            record.metrics.update(metrics)
            sha = self.blobs.put_tensors({k: v.numpy() for k, v in arrays.items()})
            self.store.record_round(self.run_id, record, model_sha256=sha)
            self.progress.round(record, model=sha)
        elif server_round == self.first_round - 1:  # the starting model
            self.store.record_metrics(self.run_id, 0, metrics)
            self.progress.write("initial", **metrics)


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """A blob's named arrays as the torch state dict ``load_state_dict`` takes."""
    return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}


def _save_model(out_dir: Path, home: Path, arrays: ArrayRecord) -> str:
    """Write the regional model as safetensors, content-addressed; returns its SHA-256."""
    tensors = {k: v.numpy() for k, v in arrays.items()}
    sha = BlobStore(home / "blobs").put_tensors(tensors)
    save_file(tensors, str(out_dir / "model.safetensors"))
    return sha


@dataclass
class RunEnd:
    """Records, once, how a run ended early: ``failed`` (an error) or ``interrupted``."""

    store: Store
    run_id: str
    progress: ProgressWriter
    watch: ExecutorWatch = field(default_factory=lambda: ExecutorWatch(None, None))
    done: bool = False

    def failed(self, status: str, error: str) -> None:
        if self.done:
            return
        self.done = True
        try:  # the database may be what failed: try briefly, the progress record still lands
            with retry_policy(RetryPolicy(budget=3.0)):
                self.store.finish_run(self.run_id, status=status, note=error[:500])
        except Exception as exc:
            error = f"{error}; marking the run {status} in the database failed too: {exc}"
        self.progress.write("failed", status=status, error=error)

    def interrupted(self) -> None:
        if self.watch.executor_died():  # what the launcher's follower records too
            self.failed(
                "failed",
                "failed: the region's executor (flower-superexec) that started this ServerApp "
                "died; restart the topology with `fedgate down` then `fedgate up`",
            )
            return
        self.failed(
            "interrupted",
            "interrupted: the ServerApp was stopped by a signal (its SuperLink went away, "
            "or the run was stopped)",
        )


def run_region(grid: Grid, run_config: Mapping[str, Any], run_id: int | str) -> dict:
    """Train one region for ``rounds`` rounds; returns (and writes) the run summary."""
    spec = RunSpec.from_run_config(run_config)
    run_id = str(run_id)
    where = RegionContext.from_spec(spec)
    default_out = where.home / "regions" / where.region / "runs" / run_id
    out_dir = Path(spec.out_dir or default_out)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = ProgressWriter(out_dir)
    store, registry = where.open()
    earlier = store.run(run_id)
    if earlier is not None and earlier.status == "stopped":
        progress.write("failed", status="stopped", error=f"run {run_id} was stopped before it "
                       "started; it is not started now")  # fmt: skip
        return {}
    try:  # who launched it: the operator whose signed request names this run's config
        launch = admit_launch(
            store, where.region, spec.to_run_config(),
            str(run_config.get(LAUNCH_REQUEST_KEY, "") or ""), spec.launched_by,
        )  # fmt: skip
    except ActorError as exc:
        progress.write("failed", status="refused", error=str(exc))
        return {}
    store.record_run(run_id, where.region, launch.launched_by, launch.config, launch.request)
    end = RunEnd(store, run_id, progress, ExecutorWatch.of_this_process())
    # Flower stops a ServerApp whose SuperExec/SuperLink went away with a signal, then
    # force-exits 5 s later, before any ``except`` below could run: record that first.
    add_exit_handler(end.interrupted, run_before_force_exit=True)
    try:
        summary = _train(grid, spec, run_id, store, registry, progress, out_dir, where.home)
    except BaseException as exc:
        end.failed("failed", f"{type(exc).__name__}: {exc}")
        raise
    end.done = True
    store.finish_run(run_id, status="finished", note=json.dumps(summary["rejected_by_reason"]))
    write_atomic(out_dir / "summary.json", json.dumps(summary, indent=2))
    progress.write("finished", **summary)
    return summary


def _train(
    grid: Grid,
    spec: RunSpec,
    run_id: str,
    store: Store,
    registry: Any,
    progress: ProgressWriter,
    out_dir: Path,
    home: Path,
) -> dict[str, Any]:
    """Run the rounds (Flower's grid), record every evaluation, save the final model."""
    blobs = BlobStore(home / "blobs")
    judged = RegionModel.for_spec(spec, blobs)
    strategy = build_strategy(spec, run_id, store, registry, judged.scorer(), progress)
    log = RoundLog(run_id, store, blobs, progress, spec.first_round)
    # the gate compares the result with the global model the run started from
    base_val_acc = (
        evaluate(judged.model, judged.validation).accuracy if spec.base_global_version else None
    )
    central_eval = _central_eval(judged, strategy, log)
    train_config = ConfigRecord(device_config(spec))
    progress.write("started", region=spec.region, run_id=run_id, config=spec.to_run_config(),
                   init_model=spec.init_model, first_round=spec.first_round)  # fmt: skip
    t0 = time.monotonic()
    result = strategy.start(
        grid=FastPollGrid(grid),
        initial_arrays=ArrayRecord(judged.model.state_dict()),
        num_rounds=spec.rounds,
        timeout=spec.round_timeout,
        train_config=train_config,
        evaluate_config=ConfigRecord(dict(train_config)),
        evaluate_fn=central_eval,
        first_round=spec.first_round,
    )
    final = result.evaluate_metrics_serverapp.get(spec.rounds, {})
    sha = _save_model(out_dir, home, result.arrays)
    manifest = build_manifest(
        spec, run_id, strategy.rounds, final, store.audit.head(),
        base_global_version=spec.base_global_version, base_val_acc=base_val_acc,
    )  # fmt: skip
    key = store.audit.signer
    assert key is not None, "the region store signs with the region key"
    write_artifact(home, store, key, manifest, sha)
    return run_summary(spec, run_id, strategy.rounds, final, sha, time.monotonic() - t0)


def _central_eval(
    judged: RegionModel, strategy: RobustStrategy, log: RoundLog
) -> Callable[[int, ArrayRecord], MetricRecord]:
    """Flower's ``evaluate_fn``, the last step of every round: evaluate the round's model and
    record it."""

    def central_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        metrics = judged.metrics(arrays)
        log.evaluated(server_round, strategy.record_for(server_round), arrays, metrics)
        return MetricRecord(metrics)

    return central_eval


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_region(grid, dict(context.run_config), context.run_id)
