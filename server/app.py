"""The regional ServerApp: robust federated training of one region's model.

Run config keys (``[tool.flwr.app.config]`` of the generated app, or ``--run-config``):
``region``, ``regions`` (comma list), ``rounds``, ``clients-per-round``, ``min-clients``,
``aggregator``, ``f``, ``pre``, ``model``, ``lr``, ``alpha``, ``seed``, ``max-examples``,
``round-timeout``, ``out-dir`` (where progress and results are written; empty for none).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedgate.models.data import region_validation
from fedgate.models.nets import build_model
from fedgate.models.train import evaluate
from fedgate.server.fast_grid import FastPollGrid
from fedgate.server.progress import ProgressWriter
from fedgate.strategies.robust_strategy import RobustStrategy
from fedgate.strategies.rules import build_rule

app = ServerApp()


def run_region(grid: Grid, run_config: dict, run_id: int | str) -> dict:
    """Train one region for ``rounds`` rounds; returns (and writes) the run summary."""
    cfg = dict(run_config)
    region = str(cfg["region"])
    regions = tuple(str(cfg.get("regions", region)).split(","))
    model_id = str(cfg["model"])
    seed = int(cfg.get("seed", 0))
    out_dir = str(cfg.get("out-dir", "")) or None
    progress = ProgressWriter(out_dir)
    validation = region_validation(region, regions, seed)
    model = build_model(model_id, seed=seed)

    strategy = RobustStrategy(
        build_rule(
            str(cfg.get("aggregator", "mean")),
            int(cfg.get("f", 0)),
            str(cfg.get("pre", "")) or None,
        ),
        clients_per_round=int(cfg["clients-per-round"]),
        min_clients=int(cfg["min-clients"]),
        max_examples=int(cfg.get("max-examples", 1000)),
        wait_timeout=float(cfg.get("round-timeout", 120.0)),
        seed=seed,
    )

    def central_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Evaluate on the region's validation split; the last step of every round."""
        model.load_state_dict(arrays.to_torch_state_dict())
        stats = evaluate(model, validation)
        metrics = {"val-loss": stats.loss, "val-acc": stats.accuracy}
        record = strategy.record_for(server_round)
        if record is not None:
            record.metrics.update(metrics)
            progress.round(record)
        elif server_round == 0:
            progress.write("initial", **metrics)
        return MetricRecord(metrics)

    train_config = ConfigRecord(
        {
            "region": region,
            "regions": ",".join(regions),
            "model": model_id,
            "lr": float(cfg.get("lr", 0.1)),
            "alpha": float(cfg.get("alpha", 0.5)),
            "seed": seed,
        }
    )
    progress.write("started", region=region, run_id=str(run_id), config=cfg)
    t0 = time.monotonic()
    result = strategy.start(
        grid=FastPollGrid(grid),
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=int(cfg["rounds"]),
        timeout=float(cfg.get("round-timeout", 120.0)),
        train_config=train_config,
        evaluate_config=ConfigRecord(dict(train_config)),
        evaluate_fn=central_eval,
    )
    final = result.evaluate_metrics_serverapp.get(int(cfg["rounds"]), {})
    summary = {
        "region": region,
        "run_id": str(run_id),
        "rounds": int(cfg["rounds"]),
        "devices": len({c.node_id for r in strategy.rounds for c in r.clients}),
        "accepted": sum(r.accepted for r in strategy.rounds),
        "rejected": sum(r.rejected for r in strategy.rounds),
        "val_acc": float(final.get("val-acc", float("nan"))),
        "seconds": time.monotonic() - t0,
    }
    if out_dir:
        torch_state = result.arrays.to_torch_state_dict()
        from safetensors.torch import save_file

        save_file(
            {k: v.contiguous() for k, v in torch_state.items()},
            str(Path(out_dir) / "model.safetensors"),
        )
        (Path(out_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    progress.write("finished", **summary)
    return summary


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_region(grid, dict(context.run_config), context.run_id)
