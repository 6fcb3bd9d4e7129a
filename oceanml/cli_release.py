"""``oceanml models release``: serve a candidate beside the champion, and end it.

``start`` opens a release (a canary share, or a shadow) that every replica of ``oceanml
serve`` follows within its poll interval; ``status`` shows it with what was served per
version; ``promote`` and ``abort`` end it by hand, recorded as forced, each with who and why.
Every command takes ``--json``; a refusal exits 2 with the reason.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import typer

from oceanml.cli_common import JsonFlag, context, emit, guarded, model_name, who

app = typer.Typer(help="Canary and shadow releases of a candidate beside the champion.",
                  no_args_is_help=True)


def duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``2h``, ``1d`` (or anything pandas reads as a timedelta)."""
    import pandas as pd

    try:
        return pd.Timedelta(text).to_pytimedelta()
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a duration (e.g. 30m, 2h, 1d)") from None


def release_dict(release: Any, figures: Any = None) -> dict[str, Any]:
    return {"id": release.id, "model": release.model_name,
            "candidate_version": release.candidate_version,
            "champion_version": release.champion_version, "mode": release.mode,
            "share": release.share, "state": release.state,
            "started_at": release.started_at.isoformat(),
            "deadline": release.deadline.isoformat(), "started_by": release.started_by,
            "decided_at": release.decided_at.isoformat() if release.decided_at else None,
            "decided_by": release.decided_by, "forced": release.forced,
            "reason": release.reason, "evidence": release.evidence,
            "served": figures.to_dict() if figures is not None else None}


@app.command()
def start(
    name: str,
    version: str,
    canary: Annotated[float | None, typer.Option(
        help="Share of requests (0-1) the candidate answers.")] = None,
    shadow: Annotated[bool, typer.Option(
        help="The candidate predicts off the response path; only the champion answers.")] = False,
    share: Annotated[float, typer.Option(help="With --shadow: share of requests shadowed.")] = 1.0,
    for_: Annotated[str | None, typer.Option(
        "--for", help="How long before it is decided (default: release.max_hours).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Serve VERSION of NAME beside its champion, as a canary or a shadow."""
    from core.champion_history import current_champion
    from core.params import load_file
    from core.releases import start_release

    if (canary is None) == (not shadow):
        raise typer.BadParameter("give exactly one of --canary SHARE and --shadow")
    if canary is not None and share != 1.0:
        raise typer.BadParameter("--share is for --shadow; a canary's share is --canary's value")
    settings, sessions, mlc = context()
    name = model_name(name)
    length = (duration(for_) if for_ else
              timedelta(hours=load_file(settings.project_dir.resolve()).release.max_hours))

    def open_it() -> Any:
        mlc.get_model_version(name, version)  # raises for a version the registry lacks
        champion = current_champion(sessions, mlc, name)
        if champion is None:
            raise ValueError(f"{name} has no champion: promote a first version instead")
        return start_release(sessions, name, version, champion,
                             "shadow" if shadow else "canary", share if shadow else canary,
                             length, who())

    release = guarded(open_it)
    _announce("started", release)
    emit(release_dict(release), as_json, [
        f"release {release.id}: {name} v{version} as {release.mode} for "
        f"{release.share:.0%} of requests beside v{release.champion_version}, until "
        f"{release.deadline:%Y-%m-%d %H:%M} UTC"])


@app.command()
def status(name: str, as_json: JsonFlag = False) -> None:
    """NAME's open release (else its last) and what was served per version since it began."""
    from sqlalchemy import select

    from core.releases import Release
    from tasks.release_evidence import release_figures

    _, sessions, _ = context()
    name = model_name(name)
    with sessions() as s:
        release = s.scalar(select(Release).where(Release.model_name == name)
                           .order_by(Release.id.desc()).limit(1))
        if release is None:
            emit(None, as_json, [f"{name} has had no release"])
            return
        figures = release_figures(s, release)
        doc = release_dict(release, figures)
    lines = [f"release {doc['id']}: {name} v{doc['candidate_version']} {doc['mode']} "
             f"{doc['share']:.0%} beside v{doc['champion_version']}, {doc['state']}"
             + (f" ({'forced ' if doc['forced'] else ''}by {doc['decided_by']}: "
                f"{doc['reason']})" if doc["state"] != "open" else
                f" until {doc['deadline'][:16]}")]
    for v in figures.versions:
        lines.append(f"  v{v.version:4} {v.role:8} {v.requests:6} requests, {v.errors} failed "
                     f"({v.error_rate:.1%}), p50 {_ms(v.p50_ms)} p99 {_ms(v.p99_ms)}")
    if figures.pairs:
        lines.append(f"  shadow pairs {figures.pairs}, agreement {figures.agreement:.1%}")
    emit(doc, as_json, lines)


def _ms(value: float | None) -> str:
    return f"{value:.1f} ms" if value is not None else "-"


@app.command()
def promote(
    name: str,
    reason: Annotated[str, typer.Option(help="Why, kept with the release.")] = "promoted by hand",
    as_json: JsonFlag = False,
) -> None:
    """End NAME's release by making its candidate champion now (recorded as forced)."""
    from tasks.release import promote_release

    _, sessions, mlc = context()
    name = model_name(name)
    release = guarded(lambda: promote_release(sessions, mlc, name, reason, who(),
                                               forced=True))
    _announce("promoted", release)
    emit(release_dict(release), as_json, [
        f"release {release.id}: {name} v{release.candidate_version} is champion (forced): "
        f"{reason}"])


@app.command()
def abort(
    name: str,
    reason: Annotated[str, typer.Option(help="Why, kept with the release.")] = "aborted by hand",
    as_json: JsonFlag = False,
) -> None:
    """End NAME's release; every request goes back to the champion (recorded as forced)."""
    from tasks.release import abort_release

    _, sessions, _ = context()
    name = model_name(name)
    release = guarded(lambda: abort_release(sessions, name, reason, who(), forced=True))
    _announce("aborted", release)
    emit(release_dict(release), as_json, [
        f"release {release.id}: {name} v{release.candidate_version} aborted (forced): "
        f"{reason}; v{release.champion_version} answers every request"])


def _announce(what: str, release: Any) -> None:
    """The release event where a Prefect API listens (replicas then follow at once)."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return
    from tasks.release import emit_release_event

    emit_release_event(what, release)
