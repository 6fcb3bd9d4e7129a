"""``oceanml datasets``: the dataset versions (DVC) recorded in the metadata DB."""

from __future__ import annotations

import json

import typer

app = typer.Typer(help="Dataset versions (DVC) recorded in the metadata DB.",
                  no_args_is_help=True)


@app.command("list")
def datasets_list(model: str | None = None) -> None:
    """Every recorded dataset version, newest first."""
    from sqlalchemy import select

    from core.database import session_factory
    from core.db import Dataset
    from core.settings import get_settings

    with session_factory(get_settings().db_url)() as session:
        query = select(Dataset).order_by(Dataset.id.desc())
        rows = session.scalars(query.where(Dataset.name == model) if model else query).all()
    for row in rows:
        typer.echo(f"{row.created_at:%Y-%m-%d %H:%M} {row.name:20} {row.version} {row.split_counts}")


def _dataset(version: str):
    """The recorded dataset row of ``version``, or a clear CLI error."""
    from sqlalchemy import select

    from core.database import session_factory
    from core.db import Dataset
    from core.settings import get_settings

    with session_factory(get_settings().db_url)() as session:
        row = session.scalar(select(Dataset).where(Dataset.version == version))
    if row is None:
        raise typer.BadParameter(f"no dataset version {version} (see `oceanml datasets list`)")
    return row


@app.command("show")
def datasets_show(version: str) -> None:
    """Counts per split and class of one version."""
    row = _dataset(version)
    typer.echo(json.dumps({"name": row.name, "version": row.version, "path": row.path,
                           "split_counts": row.split_counts, "class_counts": row.class_counts,
                           "created_at": str(row.created_at), "flow_run_id": row.flow_run_id},
                          indent=2))


@app.command("checkout")
def datasets_checkout(version: str) -> None:
    """Restore a version from the DVC remote into data/versions/, verified by hash."""
    from core.settings import get_settings
    from tasks.dataset import local_dataset

    row = _dataset(version)
    typer.echo(str(local_dataset(get_settings(), row.name, version)))
