"""The run report: per-round metrics from progress records, the PNG, and MLflow tracking."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedgate.server.region.progress import ProgressWriter, read_progress
from fedgate.server.region.run_report import (
    PLOT_FILE,
    RoundMetrics,
    build_run_figure,
    current_run,
    default_tracking_uri,
    finalize_report,
    initial_metrics,
    log_to_mlflow,
    round_metrics,
    run_info,
    write_run_plot,
)
from fedgate.strategies.robust_strategy import ClientFate, RoundRecord

CONFIG = {
    "home": "/secret/home", "db": "postgresql://u:pw@db/x", "launched-by": "ana@host",
    "region": "eu", "regions": "eu,us", "rounds": 3, "clients-per-round": 4, "min-clients": 3,
    "aggregator": "ensemble", "f": 1, "pre": "", "model": "mlp", "lr": 0.1, "alpha": 0.5,
    "seed": 7, "max-examples": 1000, "round-timeout": 120.0, "out-dir": "/secret/out",
}  # fmt: skip
# (accepted, rejected) fates, train-loss (None: not aggregated), val-loss, val-acc, test-acc
ROUNDS = [
    (3, 1, 1.25, 1.5, 0.5, 0.45),
    (2, 2, None, 1.5, 0.5, 0.45),  # too few accepted: global model kept
    (4, 0, 0.75, 0.625, 0.8125, 0.75),
]
FED = {0: (2.25, 0.125), 1: (1.375, 0.5), 3: (0.5, 0.875)}  # round -> fed loss, acc (no 2)


def _record(rnd: int, accepted: int, rejected: int, train_loss: float | None) -> RoundRecord:
    fates = [ClientFate(n, True, num_examples=100) for n in range(accepted)]
    fates += [ClientFate(10 + n, False, "bad-signature") for n in range(rejected)]
    record = RoundRecord(rnd, sampled=accepted + rejected, clients=fates)
    record.aggregated = train_loss is not None
    if train_loss is None:
        record.note = "only 2 accepted update(s) (< min-clients 3); global model kept"
    else:
        record.metrics["train-loss"] = train_loss
    return record


def _fed(progress: ProgressWriter, rnd: int) -> None:
    if rnd in FED:
        loss, acc = FED[rnd]
        metrics = {"fed-eval-loss": loss, "fed-eval-acc": acc, "fed-eval-devices": 3.0}
        progress.write("evaluated", round=rnd, **metrics)


def write_run(out_dir: Path, run_id: str = "4242", rounds: int = 3) -> list[dict[str, Any]]:
    """The records ``run_region`` writes, in its order: fed eval of round r's model comes
    with round r+1's replies (round 0 before round 1's record), the last after the loop."""
    progress = ProgressWriter(out_dir)
    progress.write("started", region="eu", run_id=run_id, config={**CONFIG, "rounds": rounds})
    progress.write("initial", **{"val-loss": 2.5, "val-acc": 0.125, "test-acc": 0.0625})
    for rnd, (acc, rej, train_loss, val_loss, val_acc, test_acc) in enumerate(ROUNDS[:rounds], 1):
        _fed(progress, rnd - 1)
        record = _record(rnd, acc, rej, train_loss)
        record.metrics.update({"val-loss": val_loss, "val-acc": val_acc, "test-acc": test_acc})
        progress.round(record)
    _fed(progress, rounds)
    accepted, rejected = (sum(r[i] for r in ROUNDS[:rounds]) for i in (0, 1))
    summary = {
        "region": "eu", "run_id": run_id, "rounds": rounds, "devices": 13,
        "accepted": accepted, "rejected": rejected, "rejected_by_reason": {"bad-signature":
        rejected}, "val_acc": ROUNDS[rounds - 1][4], "test_acc": ROUNDS[rounds - 1][5],
        "model_sha256": "ab" * 32, "seconds": 12.5,
    }  # fmt: skip
    progress.write("finished", **summary)
    events, _ = read_progress(out_dir)
    return events


def write_failed_run(out_dir: Path, run_id: str = "99") -> list[dict[str, Any]]:
    progress = ProgressWriter(out_dir)
    progress.write("started", region="us", run_id=run_id, config={**CONFIG, "region": "us"})
    progress.write("initial", **{"val-loss": 2.5, "val-acc": 0.125, "test-acc": 0.0625})
    progress.write("failed", status="failed", error="NotEnoughNodesError: only 1 SuperNode(s)")
    return read_progress(out_dir)[0]


EXPECTED = [
    RoundMetrics(1, 4, 3, 1, True, 0.5, 1.5, 0.45, 1.25, 0.5, 1.375),
    RoundMetrics(2, 4, 2, 2, False, 0.5, 1.5, 0.45, None, None, None,
                 "only 2 accepted update(s) (< min-clients 3); global model kept"),
    RoundMetrics(3, 4, 4, 0, True, 0.8125, 0.625, 0.75, 0.75, 0.875, 0.5),
]  # fmt: skip


def test_round_metrics_from_real_progress_records(tmp_path: Path) -> None:
    events = write_run(tmp_path)
    assert round_metrics(events) == EXPECTED
    assert initial_metrics(events) == RoundMetrics(
        0, val_acc=0.125, val_loss=2.5, test_acc=0.0625, fed_acc=0.125, fed_loss=2.25
    )
    assert EXPECTED[1].metrics() == {
        "val-acc": 0.5, "val-loss": 1.5, "test-acc": 0.45, "sampled": 4, "accepted": 2,
        "rejected": 2,
    }  # fmt: skip
    info = run_info(events)
    assert (info.region, info.run_id, info.status, info.error) == ("eu", "4242", "finished", "")
    assert info.config == CONFIG and info.summary["accepted"] == 9


def test_only_the_last_run_of_a_reused_out_dir_counts(tmp_path: Path) -> None:
    write_run(tmp_path, run_id="1")
    events = write_run(tmp_path, run_id="2", rounds=1)
    assert current_run(events)[0]["run_id"] == "2"
    assert [r.round for r in round_metrics(events)] == [1]
    assert round_metrics(events)[0] == RoundMetrics(1, 4, 3, 1, True, 0.5, 1.5, 0.45, 1.25,
                                                    0.5, 1.375)  # fmt: skip
    assert run_info(events).run_id == "2"


def test_a_resumed_run_starts_at_its_first_round(tmp_path: Path) -> None:
    progress = ProgressWriter(tmp_path)
    progress.write("started", region="eu", run_id="7", config=CONFIG, first_round=3)
    progress.write("initial", **{"val-loss": 0.75, "val-acc": 0.75, "test-acc": 0.625})
    progress.write("evaluated", round=2, **{"fed-eval-loss": 0.5, "fed-eval-acc": 0.875})
    progress.round(_record(3, 4, 0, 0.5))
    events = read_progress(tmp_path)[0]
    assert initial_metrics(events) == RoundMetrics(
        2, val_acc=0.75, val_loss=0.75, test_acc=0.625, fed_acc=0.875, fed_loss=0.5
    )
    assert [r.round for r in round_metrics(events)] == [3]
    top, bottom, _ = _drawn(build_run_figure(events)).axes
    assert _int_labels(bottom) == [2, 3]
    assert "round 2: starting model" in top.get_title()


def test_a_failed_run_with_no_round(tmp_path: Path) -> None:
    events = write_failed_run(tmp_path)
    assert round_metrics(events) == []
    info = run_info(events)
    assert (info.region, info.status) == ("us", "failed")
    assert info.error.startswith("NotEnoughNodesError")
    assert run_info([]).status == "incomplete" and round_metrics([]) == []


def _drawn(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return fig


def _visible(ax, axis: str) -> list[tuple[float, str]]:
    """(location, label) of the major ticks inside the view limits."""
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    ticks = getattr(ax, f"{axis}axis").get_major_ticks()
    locs = getattr(ax, f"{axis}axis").get_majorticklocs()
    return [
        (float(loc), t.label1.get_text())
        for loc, t in zip(locs, ticks, strict=True)
        if lo <= loc <= hi
    ]


def _int_labels(ax) -> list[int]:
    texts = [text.replace("\N{MINUS SIGN}", "-") for _, text in _visible(ax, "x")]
    return [int(t) for t in texts if t]  # int() fails on "0.5" or "1.0"


@pytest.mark.parametrize("rounds", [1, 3])
def test_figure_panels_ticks_and_labels(tmp_path: Path, rounds: int) -> None:
    fig = _drawn(build_run_figure(write_run(tmp_path, rounds=rounds)))
    top, bottom, loss = fig.axes  # accuracy, updates, the top panel's loss twin
    assert "region eu" in fig.get_suptitle() and "run 4242" in fig.get_suptitle()
    assert f"mlp, ensemble, f=1, {rounds} rounds: finished" in fig.get_suptitle()
    assert (top.get_ylabel(), loss.get_ylabel()) == ("accuracy", "loss (dashed)")
    assert (bottom.get_xlabel(), bottom.get_ylabel()) == ("round", "updates")
    for ax, axis in ((bottom, "x"), (top, "x"), (bottom, "y")):
        ticks = [loc for loc, _ in _visible(ax, axis)]
        assert ticks and all(t.is_integer() for t in ticks), (axis, ticks)
    assert _int_labels(bottom) == list(range(rounds + 1))
    legend = [t.get_text() for t in top.get_legend().get_texts()]
    assert legend == ["validation accuracy", "test accuracy", "federated accuracy",
                      "validation loss", "training loss (devices)"]  # fmt: skip
    val_acc = next(ln for ln in top.lines if ln.get_label() == "validation accuracy")
    assert list(val_acc.get_ydata()) == [0.125] + [r.val_acc for r in EXPECTED[:rounds]]
    train = next(ln for ln in loss.lines if ln.get_label() == "training loss (devices)")
    train_loss = dict(zip(train.get_xdata(), train.get_ydata(), strict=True))
    assert train_loss[1] == 1.25 and math.isnan(train_loss[0])  # devices report no loss at 0
    assert rounds == 1 or math.isnan(train_loss[2])  # not aggregated: a gap, not a guess
    bars = [(p.get_x() + p.get_width() / 2, p.get_height()) for p in bottom.patches]
    accepted = [(r.round, r.accepted) for r in EXPECTED[:rounds]]
    rejected = [(r.round, r.rejected) for r in EXPECTED[:rounds]]
    assert bars == accepted + rejected


def test_no_round_completed_gives_a_notice_figure(tmp_path: Path) -> None:
    fig = _drawn(build_run_figure(write_failed_run(tmp_path)))
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "no round completed" in texts
    assert any(t.startswith("failed: NotEnoughNodesError") for t in texts)
    assert "region us" in fig.get_suptitle()
    path = write_run_plot([], tmp_path / "empty.png")  # not even a started record
    assert path.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("rounds", [0, 1, 3])
def test_write_run_plot_is_a_real_png(tmp_path: Path, rounds: int) -> None:
    import matplotlib.image

    events = write_run(tmp_path, rounds=rounds) if rounds else write_failed_run(tmp_path)
    path = write_run_plot(events, tmp_path / "plots" / PLOT_FILE)
    assert path == tmp_path / "plots" / PLOT_FILE
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    height, width, _ = matplotlib.image.imread(path).shape
    assert (width, height) == ((800, 700) if rounds else (800, 300))


# --- MLflow ---------------------------------------------------------------------------------

# Run in a fresh interpreter without the variables that already turn MLflow's telemetry off
# (pytest's, CI's), with name lookups and connections refused and recorded: nothing may be
# attempted, and the telemetry client must be off because fedgate turned it off.
LOG_SCRIPT = """
import json, socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args[:2]))
    raise OSError("network blocked by the test")
socket.getaddrinfo = socket.create_connection = refuse
socket.socket.connect = socket.socket.connect_ex = refuse
from pathlib import Path
from fedgate.server.region.run_report import finalize_report
report = finalize_report(Path(sys.argv[1]), Path(sys.argv[2]), True)
from mlflow.telemetry import get_telemetry_client
print(json.dumps({"run_id": report["mlflow_run_id"], "plot": str(report["plot"]),
                  "attempts": attempts, "telemetry": get_telemetry_client() is not None}))
"""
QUIET_SIGNALS = (
    "PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK",
    "MLFLOW_TRACKING_URI",
)  # fmt: skip


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished run reported with ``finalize_report(..., mlflow=True)`` (default store)."""
    base = tmp_path_factory.mktemp("mlflow")
    out_dir, home = base / "run", base / "home"
    events = write_run(out_dir)
    env = {k: v for k, v in os.environ.items() if k not in QUIET_SIGNALS}
    proc = subprocess.run(
        [sys.executable, "-c", LOG_SCRIPT, str(out_dir), str(home)],
        env=env, cwd=base, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "events": events, "home": home, "out_dir": out_dir, "base": base}


def _client(home: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=default_tracking_uri(home))


def test_mlflow_sends_nothing_and_keeps_everything_under_home(logged: dict) -> None:
    assert logged["attempts"] == [] and logged["telemetry"] is False
    assert logged["plot"] == str(logged["out_dir"] / PLOT_FILE)
    assert (logged["home"] / "mlflow" / "mlflow.db").is_file()
    assert sorted(p.name for p in logged["base"].iterdir()) == ["home", "run"]  # not in CWD


def test_mlflow_metric_history_per_round(logged: dict) -> None:
    client = _client(logged["home"])
    rows = [initial_metrics(logged["events"]), *round_metrics(logged["events"])]
    for field, name in [("val_acc", "val-acc"), ("val_loss", "val-loss"),
                        ("test_acc", "test-acc"), ("train_loss", "train-loss"),
                        ("fed_acc", "fed-eval-acc"), ("fed_loss", "fed-eval-loss"),
                        ("accepted", "accepted"), ("rejected", "rejected")]:  # fmt: skip
        values = {r.round: getattr(r, field) for r in rows}
        expected = {rnd: float(v) for rnd, v in values.items() if v is not None}
        if field in ("accepted", "rejected"):
            expected.pop(0)  # counts are per completed round
        history = client.get_metric_history(logged["run_id"], name)
        assert {m.step: m.value for m in history} == expected, name
        assert len(history) == len(expected), name
    assert {1, 3} <= {r.round for r in rows if r.train_loss is not None}


def test_mlflow_params_tags_summary_and_plot(logged: dict) -> None:
    client = _client(logged["home"])
    run = client.get_run(logged["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "eu-4242"
    assert run.data.params == {
        "region": "eu", "run-id": "4242", "regions": "eu,us", "rounds": "3",
        "clients-per-round": "4", "min-clients": "3", "aggregator": "ensemble", "f": "1",
        "pre": "", "model": "mlp", "lr": "0.1", "alpha": "0.5", "seed": "7",
        "max-examples": "1000", "round-timeout": "120.0",
    }  # fmt: skip
    assert run.data.tags["fedgate_model_sha256"] == "ab" * 32
    assert run.data.tags["fedgate_status"] == "finished"
    final = {k: v for k, v in run.data.metrics.items() if k.startswith("summary.")}
    assert final == {
        "summary.rounds": 3, "summary.devices": 13, "summary.accepted": 9,
        "summary.rejected": 3, "summary.val_acc": 0.8125, "summary.test_acc": 0.75,
        "summary.seconds": 12.5, "summary.rejected.bad-signature": 3,
    }  # fmt: skip
    assert [a.path for a in client.list_artifacts(logged["run_id"])] == [PLOT_FILE]
    artifacts = Path(client.download_artifacts(logged["run_id"], PLOT_FILE))
    assert artifacts.read_bytes() == (logged["out_dir"] / PLOT_FILE).read_bytes()
    stored = logged["home"] / "mlflow" / "artifacts" / "fedgate" / logged["run_id"]
    assert (stored / "artifacts" / PLOT_FILE).is_file()


def test_mlflow_logging_twice_is_one_run_and_a_failed_run_is_failed(
    logged: dict, tmp_path: Path
) -> None:
    uri = default_tracking_uri(logged["home"])
    assert log_to_mlflow(logged["events"], uri) == logged["run_id"]
    failed = log_to_mlflow(write_failed_run(tmp_path), uri)
    client = _client(logged["home"])
    run = client.get_run(failed)
    assert run.info.status == "FAILED" and run.data.tags["fedgate_status"] == "failed"
    assert run.data.tags["fedgate_error"].startswith("NotEnoughNodesError")
    assert {m.step: m.value for m in client.get_metric_history(failed, "val-acc")} == {0: 0.125}
    assert [a.path for a in client.list_artifacts(failed)] == [PLOT_FILE]
    assert len(client.search_runs([run.info.experiment_id])) == 2


def test_finalize_without_mlflow_writes_only_the_plot(tmp_path: Path) -> None:
    write_run(tmp_path)
    report = finalize_report(tmp_path, tmp_path / "home", mlflow=False)
    assert report == {"plot": tmp_path / PLOT_FILE, "mlflow_run_id": None}
    assert (tmp_path / PLOT_FILE).is_file() and not (tmp_path / "home").exists()
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
