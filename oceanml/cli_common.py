"""What the ``oceanml`` sub-commands share: the settings, DB and registry they act on, the
``--json`` flag and its output, who is acting, and usage errors instead of tracebacks."""

from __future__ import annotations

import getpass
import json
from typing import Annotated, Any

import typer

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def context() -> tuple[Any, Any, Any]:
    from core.database import session_factory
    from core.registry import client
    from core.settings import get_settings

    settings = get_settings()
    return settings, session_factory(settings.db_url), client(settings)


def emit(doc: Any, as_json: bool, lines: list[str]) -> None:
    typer.echo(json.dumps(doc, indent=2, default=str) if as_json else "\n".join(lines))


def who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in a bare container
        return "cli:unknown"


def model_name(name: str) -> str:
    from models.zoo import ZOO

    if name not in ZOO:
        raise typer.BadParameter(f"unknown model {name!r}; the zoo has {', '.join(ZOO)}")
    return name


def guarded(action: Any) -> Any:
    """Run ``action``; a refusal (ValueError, unknown version) is a usage error, not a trace."""
    from mlflow.exceptions import MlflowException

    try:
        return action()
    except (ValueError, LookupError, MlflowException) as exc:
        raise typer.BadParameter(str(exc)) from None
