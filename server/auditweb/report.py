"""The audit report of one run for the compliance file: a self-contained HTML page (inline CSS
and SVG; no script, no external reference) or its PDF (WeasyPrint).

It holds the run's configuration and its digest, who launched it, the charts, every round with
every client's fate, the artifacts it produced and their gate decisions, the global versions
they went into and the edge releases that shipped those (``releases.shipped``), and the status
of the region's audit chain with the signed head the verdict is anchored to.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedgate.errors import UsageError
from fedgate.server.auditweb import pages
from fedgate.server.auditweb.releases import shipped
from fedgate.server.auditweb.snapshot import Snapshots
from fedgate.server.auditweb.sources import Source
from fedgate.server.auditweb.templating import HERE, environment

FORMATS = ("html", "pdf")


def find_run(snaps: Snapshots, run: str, region: str | None) -> str:
    """The region whose chain holds ``run`` (``region`` when given); a clear error when none
    or more than one does."""
    names = [n for n, s in snaps.sources.items() if s.kind == "region"]
    if region is not None:
        if region not in names:
            raise UsageError(f"no region {region!r} in this home (regions: {', '.join(names)})")
        names = [region]
    hits = [n for n in names if run in snaps.get(n).view.runs]
    if not hits:
        raise UsageError(f"no run {run!r} in {', '.join(f'region {n}' for n in names)}")
    if len(hits) > 1:
        raise UsageError(f"run {run!r} is in regions {', '.join(hits)}: pass --region")
    return hits[0]


def report_data(snaps: Snapshots, source: str, run: str) -> dict[str, Any]:
    """Everything the report shows (also its JSON form)."""
    every = {"per_page": str(pages.MAX_PER_PAGE)}
    data = pages.run_page(snaps, source, run, every)
    snap = snaps.get(source)
    rounds = []
    for number in sorted(rnd for (r, rnd) in snap.view.rounds if r == run):
        info, updates = snap.view.round_detail(run, number)
        rounds.append({"round": info, "clients": updates})
    decisions = [g for g in snap.gate if any(g.artifact == a.sha256 for a in data["artifacts"])]
    return {**data, "title": f"audit report: run {run} ({source})", "chain": snap.status,
            "round_fates": rounds, "decisions": decisions, "shipped": shipped(snaps, source, run),
            "generated_at": datetime.now(UTC)}  # fmt: skip


def render_html(data: dict[str, Any]) -> str:
    css = (HERE / "static" / "audit.css").read_text()
    return environment().get_template("report.html").render(**data, css=css)


def render_pdf(html: str) -> bytes:
    try:
        from weasyprint import HTML  # heavy import (Pango): only when a PDF is asked for
    except OSError as exc:  # the system's Pango is missing
        raise UsageError(f"PDF needs Pango (WeasyPrint): {exc}; run .ci/pango.sh or "
                         "apt-get install libpango-1.0-0 libpangoft2-1.0-0") from None  # fmt: skip
    return HTML(string=html, base_url=None).write_pdf()


def write_report(sources: list[Source], run: str, fmt: str, out: Path,
                 region: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Write the report of ``run`` as ``fmt`` to ``out`` (atomically); returns its data."""
    from fedgate.atomic_file import PUBLIC, write_atomic

    if fmt not in FORMATS:
        raise UsageError(f"unknown report format {fmt!r} (html or pdf)")
    snaps = Snapshots(sources, ttl=0)
    try:
        source = find_run(snaps, run, region)
        data = report_data(snaps, source, run)
        html = render_html(data)
        body = html.encode() if fmt == "html" else render_pdf(html)
    finally:
        snaps.close()
    write_atomic(out, body, mode=PUBLIC)
    return data
