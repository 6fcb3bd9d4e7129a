"""The ``oceanml`` command: simulate data, run any flow locally, inspect what was stored.

Heavy imports (Prefect, torch, MLflow) happen inside the commands that need them, so
``oceanml --help`` answers at once.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from enum import Enum, StrEnum
from typing import Annotated, Any

import typer

from oceanml.cli_datasets import app as datasets_app
from oceanml.cli_keys import app as keys_app
from oceanml.cli_labels import app as labels_app
from oceanml.cli_models import app as models_app
from oceanml.cli_serve import SERVE_HELP, serve

app = typer.Typer(help="OceanML: the ocean-monitoring ML lifecycle as Prefect flows.",
                  no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")
app.add_typer(labels_app, name="labels")
app.add_typer(keys_app, name="keys")
app.command(help=SERVE_HELP)(serve)

STAGES = ("nightly", "monitor", "ingest", "enrich", "dataset", "train", "evaluate", "drift", "promote",
          "score", "release-check")
DEFAULT_MODEL = "plastic-detector"
Stage = Enum("Stage", {s: s for s in STAGES}, type=str)


class Scenario(StrEnum):
    normal = "normal"
    storm = "storm"
    bloom = "bloom"


@app.command()
def simulate(
    days: Annotated[int, typer.Option(help="Days of observations, ending today (UTC).")] = 3,
    devices: Annotated[int, typer.Option(help="Buoys, drones and cameras.")] = 8,
    per_day: Annotated[int, typer.Option(help="Observations per device per day.")] = 60,
    scenario: Annotated[Scenario, typer.Option(help="Shifts the sea state.")] = Scenario.normal,
    seed: int = 0,
    end: Annotated[datetime | None, typer.Option(help="Last day (default: today).")] = None,
    out: Annotated[str | None, typer.Option(help="Landing URL (default: settings).")] = None,
    faults: Annotated[bool, typer.Option(help="Add the bad files the field sends.")] = True,
    to: Annotated[str | None, typer.Option(
        help="Send through a server's device API (POST URL/v1/observations) instead of "
             "writing the landing zone.")] = None,
    key: Annotated[str | None, typer.Option(
        envvar="OCEANML_DEVICE_KEY", help="The ingest key (bound to the device) or an admin "
                                          "key for --to.")] = None,
    attempts: Annotated[int, typer.Option(help="Tries per observation with --to.")] = 5,
) -> None:
    """Write simulated observations (JPEG + JSON sidecar) into the landing prefix, or send
    them through the device API (--to)."""
    from datetime import UTC

    from core.settings import get_settings
    from core.store import filesystem
    from oceanml.simulator import simulate as generate
    from oceanml.simulator import write_landing

    stream = generate(days=days, devices=devices, per_day=per_day, scenario=scenario.value,
                      seed=seed, end=end.replace(tzinfo=UTC) if end else None)
    if to:
        send(to, key, stream, attempts)
        return
    settings = get_settings()
    landing = filesystem(out or settings.landing_url, settings)
    counts = write_landing(landing, stream, faults=faults, progress=True)
    typer.echo(f"simulated {counts['observations']} observations ({scenario.value}) into "
               f"{out or settings.landing_url}: {counts['files_written']} files written, "
               f"{counts['fault_files']} fault files")


def send(url: str, key: str | None, stream: Any, attempts: int) -> None:
    """Send ``stream`` through the device API; exit 1 when some never got an answer."""
    from oceanml.device_client import send_observations

    if not key:
        raise typer.BadParameter("--to needs --key (or OCEANML_DEVICE_KEY)")
    sent = send_observations(url, key, stream, attempts=attempts, progress=True)
    refused = ", ".join(f"{k}: {v}" for k, v in sent.refused.items()) or "none"
    typer.echo(f"sent to {url}: {sent.accepted} accepted, {sent.already_received} already "
               f"received, refused {refused}, {sent.failed} unanswered after {attempts} "
               f"tries ({sent.retries} retries)")
    if sent.failed:
        raise typer.Exit(1)


@app.command()
def run(
    stage: Annotated[Stage, typer.Argument(help="The nightly flow, or one stage alone.")],
    model: Annotated[str | None, typer.Option(
        help=f"Model of the zoo (nightly, monitor: the whole fleet; score: every champion; "
             f"other stages: {DEFAULT_MODEL}).")] = None,
    max_epochs: Annotated[int | None, typer.Option(help="Override params.yaml.")] = None,
    backbone: Annotated[str | None, typer.Option(help="e.g. resnet18 on a CPU.")] = None,
    profile: Annotated[str | None, typer.Option(
        help="params.yaml profile, e.g. cpu-small (default: OCEANML_PROFILE, else the zoo's "
             "own architectures).")] = None,
) -> None:
    """Run a flow locally through Prefect (ephemeral API unless PREFECT_API_URL is set).

    The nightly and monitor flows run the whole fleet of params.yaml unless --model names one.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    name = stage.value
    if name in ("nightly", "monitor"):
        from flows.monitor import monitor
        from flows.nightly import nightly

        models = [model] if model else None
        kwargs = {"models": models}
        if name == "nightly":
            kwargs.update(profile=profile, max_epochs=max_epochs, backbone=backbone)
        state = {"nightly": nightly, "monitor": monitor}[name](**kwargs, return_state=True)
        if not state.is_completed():
            typer.echo(f"{name} ended {state.name}: {state.message}", err=True)
            raise typer.Exit(1)
        return
    from flows.stages import STAGE_FLOWS
    from tasks.results import as_document

    kwargs: dict = {}
    if name == "score":
        kwargs = {"model": model}
    elif name == "release-check":
        kwargs = {"models": [model] if model else None}
    elif name not in ("ingest", "enrich"):
        kwargs = {"model": model or DEFAULT_MODEL}
    if name in ("dataset", "train"):
        kwargs["profile"] = profile
    if name == "train":
        kwargs.update(max_epochs=max_epochs, backbone=backbone)
    result = STAGE_FLOWS[name](**kwargs)
    typer.echo(json.dumps(as_document(result), indent=2, default=str))


@app.command()
def rejects(limit: int = 20) -> None:
    """What ingestion refused, newest first, with the reason."""
    from sqlalchemy import func, select

    from core.database import session_factory
    from core.db import Reject
    from core.settings import get_settings

    with session_factory(get_settings().db_url)() as session:
        counts = session.execute(select(Reject.reason, func.count()).group_by(Reject.reason)).all()
        rows = session.scalars(select(Reject).order_by(Reject.id.desc()).limit(limit)).all()
    typer.echo("by reason: " + ", ".join(f"{r}={n}" for r, n in counts))
    for row in rows:
        typer.echo(f"{row.rejected_at:%Y-%m-%d %H:%M} {row.reason:18} {row.source_key}  {row.detail}")


JOB_COLUMNS = ("id", "model", "trigger", "status", "epoch", "progress", "dataset", "version",
               "worker", "queued", "finished")


@app.command()
def jobs(
    model: Annotated[str | None, typer.Option(help="Only this model's jobs.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Training jobs, newest first: status, epoch of total, progress, worker, any error."""
    from core.database import session_factory
    from core.jobs import list_jobs
    from core.settings import get_settings

    rows = [{"id": j.id, "model": j.model_name, "trigger": j.trigger, "status": j.status,
             "epoch": f"{j.epoch}/{j.max_epochs or '?'}", "progress": f"{j.progress:.0%}",
             "dataset": (j.dataset_version or "-")[:8],
             "version": (f"v{j.model_version}" + (" (reused)" if j.reused else "")
                         if j.model_version else "-"),
             "worker": j.worker or "-", "queued": f"{j.queued_at:%Y-%m-%d %H:%M:%S}",
             "finished": f"{j.finished_at:%H:%M:%S}" if j.finished_at else "-",
             "error": j.error}
            for j in list_jobs(session_factory(get_settings().db_url), model, limit)]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no training jobs yet")
        return
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in JOB_COLUMNS}
    typer.echo("  ".join(c.ljust(widths[c]) for c in JOB_COLUMNS))
    for r in rows:
        typer.echo("  ".join(str(r[c]).ljust(widths[c]) for c in JOB_COLUMNS))
        if r["error"]:
            typer.echo(f"    error: {r['error'].splitlines()[0][:200]}")


@app.command()
def doctor() -> None:
    """Check every configured backend: database and schema version, landing, lake, DVC
    remote, MLflow, Prefect API and work pools, LLM endpoint, GPU. Exits 1 when a required
    one is unreachable, naming the setting to change."""
    from core.settings import get_settings
    from oceanml.doctor import run_checks

    results = run_checks(get_settings())
    width = max(len(r.name) for r in results)
    for r in results:
        mark = "ok  " if r.ok else ("FAIL" if r.required else "warn")
        typer.echo(f"{mark}  {r.name.ljust(width)}  {r.detail}")
        if not r.ok and r.fix:
            typer.echo(f"{'':6}{'':{width}}  -> {r.fix}")
    failed = [r.name for r in results if not r.ok and r.required]
    if failed:
        typer.echo(f"{len(failed)} required backend(s) unreachable: {', '.join(failed)}",
                   err=True)
        raise typer.Exit(1)


@app.command()
def deploy(
    automations_only: Annotated[bool, typer.Option(
        "--automations-only", help="Leave the deployments as registered; only the automations."
    )] = False,
) -> None:
    """Register prefect.yaml's deployments (``prefect deploy --all``) on the server
    PREFECT_API_URL names, then OceanML's automations: each run's deadline
    (OCEANML_RUN_DEADLINES_S) and, with OCEANML_NOTIFY_WEBHOOK_URL or OCEANML_NOTIFY_BLOCK,
    a message for every run that ends badly, drift, promotion and rollback."""
    import subprocess
    import sys

    from core.settings import get_settings
    from oceanml.automations import apply

    if not automations_only:
        registered = subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
            env={**os.environ, "OCEANML_REPO_DIR": os.environ.get("OCEANML_REPO_DIR",
                                                                  os.getcwd())})
        if registered.returncode:
            raise typer.Exit(registered.returncode)
    applied = apply(get_settings())
    for name in applied.names:
        typer.echo(f"automation  {name}")
    typer.echo(f"messages go to the {applied.block} block" if applied.block else
               "no OCEANML_NOTIFY_WEBHOOK_URL or OCEANML_NOTIFY_BLOCK: no message is sent "
               "(deadlines apply all the same)")


@app.command("settings")
def show_settings() -> None:
    """The settings in force (secrets masked)."""
    from core.settings import get_settings

    for key, value in get_settings().public_dict().items():
        typer.echo(f"{key} = {value}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
