"""``oceanml labels``: annotations that arrive after their observations."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Labels that arrive late: attach them, see each champion's realized "
                       "accuracy next to its estimate.", no_args_is_help=True)


@app.command("import")
def import_cmd(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                         help="CSV or Parquet: observation_id or content_hash, "
                                              "label_key, value.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Attach the labels of FILE to observations already ingested, once. A row that names no
    observation, no model's label key, a value outside the model's classes or range, or that
    contradicts another row or a stored label is refused with its reason (`oceanml rejects`);
    a stored label is never changed. Then each champion's realized accuracy is computed on
    every window it was estimated on."""
    from core.database import session_factory
    from core.settings import get_settings
    from tasks.late_labels import import_labels, read_label_file

    try:
        frame = read_label_file(file)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    result = import_labels(session_factory(get_settings().db_url), frame, file.name)
    if as_json:
        typer.echo(json.dumps(asdict(result), indent=2))
        return
    refused = ", ".join(f"{k}: {v}" for k, v in result.rejected.items()) or "none"
    typer.echo(f"{file.name}: {result.rows} rows, {result.attached} labels attached, "
               f"{result.already} already known, {sum(result.rejected.values())} refused "
               f"({refused}); realized figures on {result.estimates_updated} estimated windows")
