"""The Jinja2 environment the pages and the report share: autoescaping on, a few filters."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from fedgate.server.auditweb.charts import sparkline

HERE = Path(__file__).resolve().parent


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["short"] = lambda s, n=16: str(s or "")[:n]
    env.filters["num"] = lambda v: "" if v is None else f"{v:.4g}"
    env.filters["when"] = lambda v: "" if v is None else str(v)[:19].replace("T", " ")
    env.filters["spark"] = lambda values: Markup(sparkline(values))
    env.filters["svg"] = Markup  # SVG built by charts.py, where every label is escaped
    return env
