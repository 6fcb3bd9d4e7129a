"""``oceanml keys``: the API keys that open the endpoint and the device API."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from core.access import Scope

app = typer.Typer(help="API keys for `oceanml serve` and the device API: create (shown "
                       "once, stored as a hash), list, revoke; every change is recorded.",
                  no_args_is_help=True)


def _sessions():  # noqa: ANN202 - a sessionmaker
    from core.database import session_factory
    from core.settings import get_settings

    return session_factory(get_settings().db_url)


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="The key's name (in logs, metrics, rows).")],
    scope: Annotated[Scope, typer.Option(help="predict: ask the champions; ingest: upload "
                                              "as one device; admin: everything.")],
    device: Annotated[str | None, typer.Option(help="The device an ingest key uploads as.")
                      ] = None,
    rate: Annotated[float | None, typer.Option(
        help="Requests a second (default OCEANML_SERVE_KEY_RATE).")] = None,
    print_only: Annotated[bool, typer.Option(
        "--print-only", help="Write no row: print the OCEANML_API_KEYS entry to put in a "
                             "secret instead.")] = False,
) -> None:
    """Make a key and print it once: only its hash is kept."""
    from core.access import configured_key
    from core.keys import KeyRefused, check_new, create_key

    try:
        if print_only:
            check_new(name, scope, device, rate)
            key, entry = configured_key(scope, device, rate)
            typer.echo(json.dumps({name: entry.model_dump(mode="json")}), err=True)
        else:
            key, row = create_key(_sessions(), name, scope, device_id=device, rate=rate)
    except KeyRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(key)
    typer.echo(f"key {name!r} ({scope.value}{f', device {device}' if device else ''}): shown "
               "once, store it now", err=True)


@app.command("list")
def list_cmd(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every key: name, scope, device, rate, created, last used, revoked (never the key)."""
    from core.keys import describe, list_keys

    rows = [describe(row) for row in list_keys(_sessions())]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = f"revoked {r['revoked_at']}" if r["revoked_at"] else "active"
        typer.echo(f"{r['name']:<20} {r['scope']:<8} {r['device_id'] or '-':<12} "
                   f"rate {r['rate'] or 'default'}  created {r['created_at']} by "
                   f"{r['created_by']}  last used {r['last_used_at'] or 'never'}  {state}")


@app.command()
def revoke(name: Annotated[str, typer.Argument(help="The key to revoke.")]) -> None:
    """Revoke a key: every server refuses it within OCEANML_SERVE_KEYS_REFRESH_S."""
    from core.keys import KeyRefused, revoke_key

    try:
        row = revoke_key(_sessions(), name)
    except KeyRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"revoked {row.name} at {row.revoked_at:%Y-%m-%d %H:%M:%S}")


@app.command()
def events(limit: int = 50) -> None:
    """Who created and revoked which key, when, newest first."""
    from core.keys import key_events

    for e in key_events(_sessions(), limit):
        typer.echo(f"{e.at:%Y-%m-%d %H:%M:%S}  {e.action:<7} {e.name:<20} by {e.actor}"
                   f"{'  ' + json.dumps(e.detail) if e.detail else ''}")
