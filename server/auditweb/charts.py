"""Charts as SVG text, drawn on the server: no script, no external file, every label escaped.

Styling uses presentation attributes and the page's classes (``static/audit.css``), never
``style=`` attributes, so a strict Content-Security-Policy holds and the same markup works
inline in the self-contained report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

Series = Sequence[float | None]
COLOURS = ("#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df")


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _finite(values: Series) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def sparkline(values: Series, width: int = 100, height: int = 22) -> str:
    """A tiny line of ``values`` (e.g. accuracy per round); empty when none is known."""
    known = _finite(values)
    if not known:
        return ""
    lo, hi = min(known), max(known)
    span = (hi - lo) or 1.0
    n = max(len(values) - 1, 1)
    points = [
        f"{2 + (width - 4) * i / n:.1f},{height - 2 - (height - 4) * (v - lo) / span:.1f}"
        for i, v in enumerate(values)
        if v is not None and math.isfinite(v)
    ]
    label = f"from {_fmt(known[0])} to {_fmt(known[-1])}"
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{_e(label)}"><title>{_e(label)}</title>'
        f'<polyline fill="none" stroke="{COLOURS[0]}" stroke-width="1.5" '
        f'points="{" ".join(points)}"/></svg>'
    )


@dataclass(frozen=True)
class Line:
    name: str
    values: Series  # one per round (None: not measured)


def line_chart(
    title: str, rounds: Sequence[int], lines: Sequence[Line], width: int = 640, height: int = 260
) -> str:
    """A line per series over ``rounds``; a point per known value, with its value as tooltip.
    Each point carries ``data-round`` so a reader (or a test) can count the rounds drawn."""
    left, right, top, bottom = 48, 16, 28, 36
    known = [v for line in lines for v in _finite(line.values)]
    lo, hi = (min(known), max(known)) if known else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.08
    lo, hi = lo - pad, hi + pad
    n = len(rounds)
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n if n else 0)

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - lo) / (hi - lo))

    parts = [
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{_e(title)}" data-rounds="{n}"><title>{_e(title)}</title>',
        f'<text x="{left}" y="16" class="chart-title">{_e(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#d0d7de"/>',
    ]
    for k in range(5):  # y grid and labels
        v = lo + (hi - lo) * k / 4
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
            f'stroke="#eaeef2"/><text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end" '
            f'class="axis">{_fmt(v)}</text>'
        )
    step = max(1, math.ceil(n / 20))
    for i, rnd in enumerate(rounds):
        if i % step == 0 or i == n - 1:
            parts.append(
                f'<text x="{x(i):.1f}" y="{height - bottom + 16}" text-anchor="middle" '
                f'class="axis">{_e(rnd)}</text>'
            )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" '
        'class="axis">round</text>'
    )
    for j, line in enumerate(lines):
        colour = COLOURS[j % len(COLOURS)]
        pts = [(i, v) for i, v in enumerate(line.values) if v is not None and math.isfinite(v)]
        if len(pts) > 1:
            path = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in pts)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                         f'points="{path}"/>')  # fmt: skip
        for i, v in pts:
            parts.append(
                f'<circle class="point" data-series="{_e(line.name)}" data-round="{_e(rounds[i])}" '
                f'cx="{x(i):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"><title>'
                f"{_e(line.name)} round {_e(rounds[i])}: {_fmt(v)}</title></circle>"
            )
        lx = left + 8 + 150 * j
        parts.append(
            f'<rect x="{lx}" y="{top + 6}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{lx + 14}" y="{top + 15}" class="legend">{_e(line.name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def stacked_bars(
    title: str, rounds: Sequence[int], accepted: Sequence[int], rejected: Sequence[int],
    width: int = 640, height: int = 180,
) -> str:  # fmt: skip
    """Accepted (green) over rejected (red) updates per round."""
    left, right, top, bottom = 48, 16, 28, 30
    n = len(rounds)
    top_value = max([a + r for a, r in zip(accepted, rejected, strict=True)] or [1]) or 1
    plot_w, plot_h = width - left - right, height - top - bottom
    bar = plot_w / max(n, 1)
    parts = [
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>'
        f'<text x="{left}" y="16" class="chart-title">{_e(title)}</text>'
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" class="axis">{top_value}</text>'
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end" class="axis">0</text>'
    ]
    for i, (rnd, a, r) in enumerate(zip(rounds, accepted, rejected, strict=True)):
        x0 = left + i * bar + bar * 0.1
        ha, hr = plot_h * a / top_value, plot_h * r / top_value
        y_a = top + plot_h - ha
        parts.append(
            f'<rect x="{x0:.1f}" y="{y_a:.1f}" width="{bar * 0.8:.1f}" height="{ha:.1f}" '
            f'fill="#1a7f37"><title>round {_e(rnd)}: {a} accepted</title></rect>'
            f'<rect x="{x0:.1f}" y="{y_a - hr:.1f}" width="{bar * 0.8:.1f}" height="{hr:.1f}" '
            f'fill="#d1242f"><title>round {_e(rnd)}: {r} rejected</title></rect>'
        )
    parts.append("</svg>")
    return "".join(parts)


@dataclass(frozen=True)
class Node:
    key: str
    label: str
    column: int  # 0 = the global version, then artifacts, runs, devices
    href: str = ""
    tone: str = ""  # "", "bad" (refused/revoked) ...


def lineage_graph(nodes: Sequence[Node], edges: Sequence[tuple[str, str]],
                  headers: Sequence[str]) -> str:  # fmt: skip
    """Columns of boxes (left: the newest thing, right: where it came from) joined by lines."""
    cols: dict[int, list[Node]] = {}
    for node in nodes:
        cols.setdefault(node.column, []).append(node)
    box_w, box_h, gap_x, gap_y, top = 190, 26, 60, 10, 30
    width = max(len(headers), 1) * (box_w + gap_x)
    height = top + max([len(v) for v in cols.values()] or [1]) * (box_h + gap_y) + 10
    where: dict[str, tuple[float, float]] = {}
    for c, items in cols.items():
        for r, node in enumerate(items):
            where[node.key] = (10 + c * (box_w + gap_x), top + r * (box_h + gap_y))
    parts = [
        f'<svg class="lineage" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="lineage"><title>lineage</title>'
    ]
    for c, head in enumerate(headers):
        parts.append(f'<text x="{10 + c * (box_w + gap_x)}" y="16" class="chart-title">'
                     f"{_e(head)}</text>")  # fmt: skip
    for a, b in edges:
        if a in where and b in where:
            (xa, ya), (xb, yb) = where[a], where[b]
            parts.append(
                f'<line x1="{xa + box_w:.0f}" y1="{ya + box_h / 2:.0f}" x2="{xb:.0f}" '
                f'y2="{yb + box_h / 2:.0f}" stroke="#8c959f" stroke-width="1"/>'
            )
    for node in nodes:
        x, y = where[node.key]
        fill = "#ffebe9" if node.tone == "bad" else "#f6f8fa"
        stroke = "#d1242f" if node.tone == "bad" else "#57606a"
        box = (
            f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="4" fill="{fill}" '
            f'stroke="{stroke}"/><text x="{x + 6}" y="{y + 17}" class="node">'
            f"{_e(node.label[:28])}</text><title>{_e(node.label)}</title>"
        )
        if node.href:
            box = f'<a href="{_e(node.href)}" class="node-link">{box}</a>'
        parts.append(f'<g class="lineage-node" data-key="{_e(node.key)}">{box}</g>')
    parts.append("</svg>")
    return "".join(parts)
