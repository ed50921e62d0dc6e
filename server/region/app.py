"""The regional ServerApp: verified, robust federated training of one region's model.

Run config keys (``[tool.flwr.app.config]`` of the generated app, or ``--run-config``):
``region``, ``regions`` (comma list), ``rounds``, ``clients-per-round``, ``min-clients``,
``aggregator``, ``f``, ``pre``, ``model``, ``lr``, ``alpha``, ``seed``, ``max-examples``,
``round-timeout``, ``home`` (the fedgate home: region key, registry, database),
``db`` (database URL; empty: SQLite under ``home``), ``launched-by``, ``launch-request``
(the operator's signed request naming this config's digest; see ``server/audit/actors.py``),
``out-dir``
(where progress and results are written), ``init-model`` (SHA-256 of the starting model in
the blob store; empty: fresh initialisation from ``seed``), ``first-round`` (1, or the round
a resumed run continues with) and ``resume-from`` (the run it continues).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.exit import add_exit_handler
from safetensors.numpy import save_file

from fedgate.models.data import common_test_split, region_validation
from fedgate.models.nets import build_model
from fedgate.models.train import evaluate, example_losses
from fedgate.server.audit.actors import ActorError
from fedgate.server.audit.keys import ensure_region_key
from fedgate.server.audit.store import Store
from fedgate.server.db import BlobStore, resolve_url
from fedgate.server.db.engine import RetryPolicy, retry_policy
from fedgate.server.region.fast_grid import FastPollGrid
from fedgate.server.region.nonces import ReplayGuard, RoundNonces
from fedgate.server.region.progress import ProgressWriter
from fedgate.server.trust.actors import admit_launch
from fedgate.server.trust.enrollment import DatabaseDeviceRegistry
from fedgate.strategies.envelope import signature_screen
from fedgate.strategies.robust_strategy import (
    RobustStrategy,
    RoundSigner,
    Scorer,
    structural_screen,
)
from fedgate.strategies.rules import REGION_DEFAULT, build_rule

app = ServerApp()


@dataclass(frozen=True)
class RegionContext:
    """Where a region run keeps its state and with which key it signs."""

    region: str
    home: Path
    db_url: str

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> RegionContext:
        region = str(cfg["region"])
        home = Path(str(cfg["home"])).resolve()
        return cls(region, home, resolve_url(str(cfg.get("db", "")) or None, home, region))

    def open(self) -> tuple[Store, Any]:
        """The region's store (audit chain signed by the region key) and device registry."""
        store = Store.open(self.db_url, signer=ensure_region_key(self.home, self.region))
        return store, DatabaseDeviceRegistry(store, self.region)


def build_strategy(
    cfg: dict[str, Any],
    run_id: str,
    store: Store,
    registry: Any,
    scorer: Scorer | None = None,
    progress: ProgressWriter | None = None,
):
    """The region's strategy: signed instructions, envelope screening, the configured rule;
    ``scorer`` (the server's validation loss of a candidate model) feeds the ensemble, and
    every federated evaluation is stored, audited and reported to ``progress``."""
    region = str(cfg["region"])
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
        build_rule(
            str(cfg.get("aggregator", REGION_DEFAULT.aggregator)),
            int(cfg.get("f", REGION_DEFAULT.f)),
            str(cfg.get("pre", REGION_DEFAULT.pre)) or None,
        ),
        clients_per_round=int(cfg["clients-per-round"]),
        min_clients=int(cfg["min-clients"]),
        max_examples=int(cfg.get("max-examples", 1000)),
        screen=signature_screen(
            registry, region, run_id, nonces, structural_screen, seen=ReplayGuard()
        ),
        signer=RoundSigner(key, region, run_id, nonces),
        on_round_opened=opened,
        on_evaluated=evaluated,
        scorer=scorer,
        wait_timeout=float(cfg.get("round-timeout", 120.0)),
        seed=int(cfg.get("seed", 0)),
    )


def _reasons(strategy: RobustStrategy) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in strategy.rounds:
        for fate in record.clients:
            if not fate.accepted:
                counts[fate.reason] = counts.get(fate.reason, 0) + 1
    return dict(sorted(counts.items()))


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
        self.failed(
            "interrupted",
            "interrupted: the ServerApp was stopped by a signal (its SuperLink went away, "
            "or the run was stopped)",
        )


def run_region(grid: Grid, run_config: dict, run_id: int | str) -> dict:
    """Train one region for ``rounds`` rounds; returns (and writes) the run summary."""
    cfg = dict(run_config)
    run_id = str(run_id)
    where = RegionContext.from_config(cfg)
    default_out = where.home / "regions" / where.region / "runs" / run_id
    out_dir = Path(str(cfg.get("out-dir", "")) or default_out)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = ProgressWriter(out_dir)
    store, registry = where.open()
    earlier = store.run(run_id)
    if earlier is not None and earlier.status == "stopped":
        progress.write("failed", status="stopped", error=f"run {run_id} was stopped before it "
                       "started; it is not started now")  # fmt: skip
        return {}
    try:  # who launched it: the operator whose signed request names this config
        launch = admit_launch(store, where.region, cfg)
    except ActorError as exc:
        progress.write("failed", status="refused", error=str(exc))
        return {}
    store.record_run(run_id, where.region, launch.launched_by, launch.config, launch.request)
    end = RunEnd(store, run_id, progress)
    # Flower stops a ServerApp whose SuperExec/SuperLink went away with a signal, then
    # force-exits 5 s later, before any ``except`` below could run: record that first.
    add_exit_handler(end.interrupted, run_before_force_exit=True)
    try:
        summary = _train(grid, cfg, run_id, store, registry, progress, out_dir, where.home)
    except BaseException as exc:
        end.failed("failed", f"{type(exc).__name__}: {exc}")
        raise
    end.done = True
    store.finish_run(run_id, status="finished", note=json.dumps(summary["rejected_by_reason"]))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    progress.write("finished", **summary)
    return summary


def _train(
    grid: Grid,
    cfg: dict[str, Any],
    run_id: str,
    store: Store,
    registry: Any,
    progress: ProgressWriter,
    out_dir: Path,
    home: Path,
) -> dict[str, Any]:
    region = str(cfg["region"])
    regions = tuple(str(cfg.get("regions", region)).split(","))
    model_id, seed = str(cfg["model"]), int(cfg.get("seed", 0))
    validation, test = region_validation(region, regions, seed), common_test_split(seed)
    model = build_model(model_id, seed=seed)
    blobs = BlobStore(home / "blobs")
    if str(cfg.get("init-model", "")):
        model.load_state_dict(_tensors(blobs.get_tensors(str(cfg["init-model"]))))
    first_round = int(cfg.get("first-round", 1) or 1)

    def validation_losses(arrays: ArrayRecord) -> np.ndarray:
        """The aggregators' scorer: a candidate model's loss on each validation example."""
        model.load_state_dict(arrays.to_torch_state_dict())
        return example_losses(model, validation)

    strategy = build_strategy(cfg, run_id, store, registry, validation_losses, progress)

    def central_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Evaluate on the region's validation split and on the common test split (which
        nothing in training sees); the last step of every round."""
        model.load_state_dict(arrays.to_torch_state_dict())
        stats, held_out = evaluate(model, validation), evaluate(model, test)
        metrics = {
            "val-loss": stats.loss,
            "val-acc": stats.accuracy,
            "test-acc": held_out.accuracy,
        }
        record = strategy.record_for(server_round)
        if record is not None:
            record.metrics.update(metrics)
            sha = blobs.put_tensors({k: v.numpy() for k, v in arrays.items()})
            store.record_round(run_id, record, model_sha256=sha)
            progress.round(record, model=sha)
        elif server_round == first_round - 1:
            store.record_metrics(run_id, 0, metrics)
            progress.write("initial", **metrics)
        return MetricRecord(metrics)

    train_config = ConfigRecord(
        {
            "regions": ",".join(regions),
            "model": model_id,
            "lr": float(cfg.get("lr", 0.1)),
            "alpha": float(cfg.get("alpha", 0.5)),
            "seed": seed,
            "f": int(cfg.get("f", 0)),
            "clients-per-round": int(cfg["clients-per-round"]),
        }
    )
    progress.write("started", region=region, run_id=run_id, config=cfg,
                   init_model=str(cfg.get("init-model", "")), first_round=first_round)  # fmt: skip
    t0 = time.monotonic()
    result = strategy.start(
        grid=FastPollGrid(grid),
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=int(cfg["rounds"]),
        timeout=float(cfg.get("round-timeout", 120.0)),
        train_config=train_config,
        evaluate_config=ConfigRecord(dict(train_config)),
        evaluate_fn=central_eval,
        first_round=first_round,
    )
    final = result.evaluate_metrics_serverapp.get(int(cfg["rounds"]), {})
    val_acc = float(final.get("val-acc", float("nan")))
    test_acc = float(final.get("test-acc", float("nan")))
    sha = _save_model(out_dir, home, result.arrays)
    store.record_artifact(
        sha,
        str(out_dir / "model.safetensors"),
        "regional-model",
        {"region": region, "run": run_id, "model": model_id, "rounds": int(cfg["rounds"]),
         "val_acc": val_acc, "test_acc": test_acc},
        run_id=run_id,
    )  # fmt: skip
    return {
        "region": region,
        "run_id": run_id,
        "rounds": int(cfg["rounds"]),
        "devices": len({c.node_id for r in strategy.rounds for c in r.clients}),
        "accepted": sum(r.accepted for r in strategy.rounds),
        "rejected": sum(r.rejected for r in strategy.rounds),
        "rejected_by_reason": _reasons(strategy),
        "val_acc": val_acc,
        "test_acc": test_acc,
        "model_sha256": sha,
        "first_round": first_round,
        "init_model": str(cfg.get("init-model", "")),
        "resumed_from": str(cfg.get("resume-from", "")),
        "seconds": time.monotonic() - t0,
    }


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_region(grid, dict(context.run_config), context.run_id)
