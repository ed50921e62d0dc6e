"""A finished region run's report: per-round metrics, a PNG plot and optional MLflow tracking.

Everything is computed from the run's progress records (``fedgate.server.region.progress``), so a
report can be made after the fact from ``<out_dir>/progress.jsonl`` alone. If that file holds
more than one run (an ``out-dir`` reused), only the records from the last ``started`` on count.

MLflow (``mlflow-skinny``) logs to a local SQLite store by default,
``sqlite:///<home>/mlflow/mlflow.db``, with artifacts under ``<home>/mlflow/artifacts``;
MLflow's telemetry is switched off before it is imported. Browse the store with the full
``mlflow`` package: ``mlflow ui --backend-store-uri sqlite:///<home>/mlflow/mlflow.db``.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedgate.server.region.progress import read_progress
from fedgate.server.region.run_spec import RUN_CONFIG_KEYS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOT_FILE = "run.png"
# RoundMetrics field -> the metric's name in progress records, the store and MLflow.
METRIC_NAMES = {
    "val_acc": "val-acc",
    "val_loss": "val-loss",
    "test_acc": "test-acc",
    "train_loss": "train-loss",
    "fed_acc": "fed-eval-acc",
    "fed_loss": "fed-eval-loss",
}
# Run-config keys logged as MLflow params: the run's settings (never ``home``, ``db`` or
# ``out-dir``: paths and a database URL that may hold a password), not who started it nor where
# from (the region and run id are logged apart).
_NOT_PARAMS = {"home", "db", "launched-by", "region", "out-dir", "init-model", "first-round",
               "resume-from", "base-global-version"}  # fmt: skip
PARAM_KEYS = tuple(k for k in RUN_CONFIG_KEYS if k not in _NOT_PARAMS)
_MLFLOW_STATUS = {"finished": "FINISHED", "failed": "FAILED"}


@dataclass(frozen=True)
class RoundMetrics:
    """One round's outcome: update counts and the metrics of the model it produced.

    ``fed_acc``/``fed_loss`` are the devices' example-weighted rating of that model (reported
    during the next round, or by the final evaluation); ``None`` where nothing was measured.
    """

    round: int
    sampled: int = 0
    accepted: int = 0
    rejected: int = 0
    aggregated: bool = False
    val_acc: float | None = None
    val_loss: float | None = None
    test_acc: float | None = None
    train_loss: float | None = None
    fed_acc: float | None = None
    fed_loss: float | None = None
    note: str = ""

    def metrics(self) -> dict[str, float]:
        """The measured values by metric name (``val-acc`` ...), counts included after round 0."""
        out = {name: getattr(self, f) for f, name in METRIC_NAMES.items()}
        out = {k: v for k, v in out.items() if v is not None}
        if self.round > 0:
            out.update(sampled=self.sampled, accepted=self.accepted, rejected=self.rejected)
        return out


@dataclass(frozen=True)
class RunInfo:
    """Who the run was and how it ended: ``finished``, ``failed``, ``interrupted`` or
    ``incomplete`` (no closing record)."""

    region: str
    run_id: str
    status: str
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def current_run(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of the last run in ``events`` (from its ``started`` record on)."""
    starts = [i for i, e in enumerate(events) if e.get("kind") == "started"]
    return events[starts[-1] :] if starts else list(events)


def _num(value: Any) -> float | None:
    """A finite float, or None (missing, not a number, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _fed(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {int(e["round"]): e for e in events if e.get("kind") == "evaluated"}


def _row(rnd: int, data: dict[str, Any], fed: dict[str, Any]) -> RoundMetrics:
    return RoundMetrics(
        round=rnd,
        sampled=int(data.get("sampled", 0)),
        accepted=int(data.get("accepted", 0)),
        rejected=int(data.get("rejected", 0)),
        aggregated=bool(data.get("aggregated", False)),
        val_acc=_num(data.get("val-acc")),
        val_loss=_num(data.get("val-loss")),
        test_acc=_num(data.get("test-acc")),
        train_loss=_num(data.get("train-loss")),
        fed_acc=_num(fed.get("fed-eval-acc")),
        fed_loss=_num(fed.get("fed-eval-loss")),
        note=str(data.get("note", "")),
    )


def round_metrics(events: list[dict[str, Any]]) -> list[RoundMetrics]:
    """One row per completed round (a ``round`` record), by round; a repeated round's last
    record wins, and ``evaluated`` records are joined by round number."""
    events = current_run(events)
    fed = _fed(events)
    rounds = {int(e["round"]): e for e in events if e.get("kind") == "round"}
    return [_row(r, rounds[r], fed.get(r, {})) for r in sorted(rounds)]


def initial_metrics(events: list[dict[str, Any]]) -> RoundMetrics | None:
    """The starting model's metrics (``initial`` record), or None if not measured. Its round
    is 0, or ``first_round - 1`` of the ``started`` record for a resumed run."""
    events = current_run(events)
    initial = [e for e in events if e.get("kind") == "initial"]
    if not initial:
        return None
    started = next((e for e in events if e.get("kind") == "started"), {})
    rnd = int(initial[-1].get("round", int(started.get("first_round", 1) or 1) - 1))
    return _row(rnd, initial[-1], _fed(events).get(rnd, {}))


def run_info(events: list[dict[str, Any]]) -> RunInfo:
    """Region, run id, config, summary and final status of the last run in ``events``."""
    events = current_run(events)
    by_kind = {e.get("kind"): e for e in events}  # the last record of each kind
    started = by_kind.get("started", {})
    summary = {k: v for k, v in by_kind.get("finished", {}).items() if k not in ("kind", "ts")}
    failed = by_kind.get("failed")
    if failed is not None:
        status, error = str(failed.get("status", "failed")), str(failed.get("error", ""))
    else:
        status, error = ("finished" if summary else "incomplete"), ""
    config = dict(started.get("config") or {})
    region = started.get("region") or summary.get("region") or config.get("region") or "?"
    run_id = started.get("run_id") or summary.get("run_id") or "?"
    return RunInfo(str(region), str(run_id), status, config, summary, error)


def _title(info: RunInfo) -> tuple[str, str]:
    cfg = info.config
    rule = f"{cfg.get('aggregator', '?')}, f={cfg.get('f', '?')}"
    if cfg.get("pre"):
        rule = f"{cfg['pre']} + {rule}"
    detail = f"{cfg.get('model', '?')}, {rule}, {cfg.get('rounds', '?')} rounds: {info.status}"
    return f"fedgate region {info.region}, run {info.run_id}", detail


def _series(ax, rows: list[RoundMetrics], name: str, label: str, style: str) -> list:
    """One metric as a line over rounds, broken where it was not measured; [] if never."""
    ys = [math.nan if getattr(r, name) is None else getattr(r, name) for r in rows]
    if all(math.isnan(y) for y in ys):
        return []
    return ax.plot([r.round for r in rows], ys, style, marker="o", markersize=3, label=label)


def build_run_figure(events: list[dict[str, Any]]) -> Figure:
    """The report figure: accuracy and loss per round (from the starting model) on top,
    accepted vs rejected updates per round below; a notice if no round completed."""
    # heavy import (matplotlib, mlflow): only when a report is written
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    info, rows = run_info(events), round_metrics(events)
    title, detail = _title(info)
    if not rows:
        fig = Figure(figsize=(8, 3), dpi=100)
        fig.suptitle(f"{title}\n{detail}")
        ax = fig.add_subplot()
        ax.set_axis_off()
        why = f"{info.status}: {info.error[:160]}" if info.error else info.status
        ax.text(0.5, 0.6, "no round completed", ha="center", va="center", fontsize=16)
        ax.text(0.5, 0.35, why, ha="center", va="center", fontsize=9, wrap=True)
        return fig

    initial = initial_metrics(events)
    line_rows = ([initial] if initial else []) + rows
    fig = Figure(figsize=(8, 7), dpi=100, layout="constrained")
    fig.suptitle(f"{title}\n{detail}")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    lines = _series(top, line_rows, "val_acc", "validation accuracy", "-")
    lines += _series(top, line_rows, "test_acc", "test accuracy", "-")
    lines += _series(top, line_rows, "fed_acc", "federated accuracy", "-")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1.02)
    top.grid(alpha=0.3)
    loss = top.twinx()
    loss.set_prop_cycle(color=["tab:red", "tab:purple", "tab:brown"])
    lines += _series(loss, line_rows, "val_loss", "validation loss", "--")
    lines += _series(loss, line_rows, "train_loss", "training loss (devices)", "--")
    loss.set_ylabel("loss (dashed)")
    loss.set_ylim(bottom=0)
    top.legend(lines, [ln.get_label() for ln in lines], loc="best", fontsize=8)
    start = f"round {initial.round}: starting model" if initial else "no starting model measured"
    top.set_title(f"model quality per round ({start})", fontsize=10)

    xs = [r.round for r in rows]
    accepted = [r.accepted for r in rows]
    bottom.bar(xs, accepted, color="tab:green", label="accepted")
    bottom.bar(xs, [r.rejected for r in rows], bottom=accepted, color="tab:red", label="rejected")
    bottom.set_xlabel("round")
    bottom.set_ylabel("updates")
    bottom.set_title("device updates per round", fontsize=10)
    bottom.legend(loc="upper left", fontsize=8)
    bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_ylim(0, 1.15 * max(1, *(r.accepted + r.rejected for r in rows)))
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))  # shared with the top panel
    bottom.set_xlim(line_rows[0].round - 0.5, rows[-1].round + 0.5)
    return fig


def write_run_plot(events: list[dict[str, Any]], path: Path) -> Path:
    """Write the report figure (``build_run_figure``) as a PNG at ``path``; returns ``path``."""
    # Heavy import only when a plot is written; the Agg canvas needs no display and no pyplot.
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = build_run_figure(events)
    FigureCanvasAgg(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def default_tracking_uri(home: Path) -> str:
    """The local MLflow store under the fedgate home (SQLite; no server needed)."""
    return f"sqlite:///{(Path(home) / 'mlflow' / 'mlflow.db').resolve()}"


def _import_mlflow():
    """MLflow with its telemetry off: without this it fetches a config from, and reports usage
    to, its telemetry service. Sets ``MLFLOW_DISABLE_TELEMETRY`` and ``DO_NOT_TRACK`` in this
    process's environment (so later imports and subprocesses stay quiet too)."""
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DO_NOT_TRACK"] = "true"
    import mlflow  # heavy import (~2-10 s): only when tracking is asked for
    from mlflow.telemetry import set_telemetry_client

    set_telemetry_client()  # drops a client made by an earlier import of mlflow
    return mlflow


def _experiment_id(client, name: str, tracking_uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):  # artifacts beside the database, not in CWD
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        location = (db.parent / "artifacts" / name).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by another region's report
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def log_to_mlflow(
    events: list[dict[str, Any]],
    tracking_uri: str | None = None,
    experiment: str = "fedgate",
    *,
    home: Path | None = None,
    plot: Path | None = None,
) -> str:
    """Log the run to MLflow; returns the MLflow run id.

    Params: region, run id and ``PARAM_KEYS`` of the run config; metrics per round with
    ``step=round`` (the starting model at its round: 0, unless resumed); the summary as
    ``summary.*`` metrics; the plot (``plot``, else drawn now) as artifact ``run.png``.
    ``tracking_uri`` None: the local store under ``home`` (default ``$FEDGATE_HOME`` or
    ``~/.fedgate``). Idempotent: a run already logged completely (same region and run id) is
    returned, not logged twice.
    """
    _import_mlflow()
    # heavy import (matplotlib, mlflow): only when a report is written
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    if tracking_uri is None:
        home = home or Path(os.environ.get("FEDGATE_HOME") or Path.home() / ".fedgate")
        (Path(home) / "mlflow").mkdir(parents=True, exist_ok=True)
        tracking_uri = default_tracking_uri(home)
    info = run_info(events)
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = _experiment_id(client, experiment, tracking_uri)
    query = (
        f"tags.fedgate_region = '{info.region}' and tags.fedgate_run_id = '{info.run_id}' "
        "and tags.fedgate_logged = 'complete'"
    )
    known = info.run_id != "?" and "'" not in info.region + info.run_id
    if known and (done := client.search_runs([exp], query, max_results=1)):
        return done[0].info.run_id

    tags = {"fedgate_region": info.region, "fedgate_run_id": info.run_id,
            "fedgate_status": info.status}  # fmt: skip
    if info.summary.get("model_sha256"):
        tags["fedgate_model_sha256"] = str(info.summary["model_sha256"])
    if info.error:
        tags["fedgate_error"] = info.error[:5000]
    run = client.create_run(exp, run_name=f"{info.region}-{info.run_id}", tags=tags)
    run_id = run.info.run_id
    now = int(run.info.start_time or 0)
    params = {"region": info.region, "run-id": info.run_id}
    params.update({k: info.config[k] for k in PARAM_KEYS if k in info.config})
    initial = initial_metrics(events)
    rows = ([initial] if initial else []) + round_metrics(events)
    metrics = [Metric(k, float(v), now, r.round) for r in rows for k, v in r.metrics().items()]
    summary = {f"summary.{k}": _num(v) for k, v in info.summary.items()}
    reasons = info.summary.get("rejected_by_reason") or {}
    summary.update({f"summary.rejected.{k}": _num(v) for k, v in reasons.items()})
    metrics += [Metric(k, v, now, 0) for k, v in summary.items() if v is not None]
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    for i in range(0, len(metrics), 1000):  # MLflow's per-batch limit
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifact(run_id, str(plot or write_run_plot(events, Path(tmp) / PLOT_FILE)))
    client.set_tag(run_id, "fedgate_logged", "complete")
    client.set_terminated(run_id, _MLFLOW_STATUS.get(info.status, "KILLED"))
    return run_id


def finalize_report(out_dir: Path, home: Path, mlflow: bool | str = False) -> dict[str, Any]:
    """The CLI's call once a region run has ended (finished or not).

    Reads ``<out_dir>/progress.jsonl``, writes ``<out_dir>/run.png`` and, if ``mlflow`` is
    True (the local store under ``home``) or a tracking URI, logs the run to MLflow. Returns
    ``{"plot": Path, "mlflow_run_id": str | None}``. MLflow errors propagate, after the plot
    has been written.
    """
    events, _ = read_progress(out_dir)
    plot = write_run_plot(events, Path(out_dir) / PLOT_FILE)
    run_id = None
    if mlflow:
        uri = mlflow if isinstance(mlflow, str) else None
        run_id = log_to_mlflow(events, uri, home=home, plot=plot)
    return {"plot": plot, "mlflow_run_id": run_id}
