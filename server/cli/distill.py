"""``fedgate distill``: distil, quantize and export the edge students of a global version."""

from __future__ import annotations

# A verb imports what only it needs (torch, onnx, SQLAlchemy) inside its body, when it runs:
# `fedgate --help` loads none of it (tests/test_cli_startup.py).
import sys
from typing import Annotated

import typer

from fedgate.server.cli.common import HomeOpt, JsonOpt, console, err, resolve_home
from fedgate.server.cli.coordinator import CoordDbOpt


def distill(
    global_version: Annotated[
        int, typer.Option("--global-version", "-g", help="The global version to distil.", min=1)
    ],
    home: HomeOpt = None,
    db: CoordDbOpt = None,
    profile: Annotated[
        list[str] | None,
        typer.Option("--profile", "-p", help="Edge profile (repeatable; default: pi and phone)."),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Data split seed (the federation's; default 0).")
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Distil a student per edge profile from global version N on the public transfer split,
    quantize it to int8, export it to ONNX and report teacher, student and no-distillation
    accuracy, size and latency; writes <home>/coordinator/students/vN/ (the release manifest
    students.json and one .onnx per profile) and records it in the coordinator's audit chain."""
    from fedgate.models.students import DEFAULT_PROFILES
    from fedgate.server.coordinator.distill import (
        MANIFEST_NAME,
        distill_version,
        json_text,
        read_manifest,
        render_table,
        students_dir,
    )

    where = resolve_home(home)
    reports = distill_version(
        where, global_version, profiles=tuple(profile or DEFAULT_PROFILES), db=db, seed=seed,
        progress=lambda msg: err.print(msg, highlight=False),
    )  # fmt: skip
    if as_json:
        sys.stdout.write(json_text(read_manifest(where, global_version)))
        return
    console.print(render_table(reports))
    console.print(
        f"manifest {students_dir(where, global_version) / MANIFEST_NAME}", highlight=False
    )


def register(app: typer.Typer) -> None:
    app.command("distill")(distill)
