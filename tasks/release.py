"""Ending a release: its candidate made champion, or sent away; and the event that says so.

Both end the ``releases`` row once (:func:`core.releases.end_release`); a promotion moves the
champion first, through the champion history like any promotion (recorded with the release
and its figures), so a release is never marked promoted for a champion that did not move.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect.events import emit_event
from sqlalchemy.orm import sessionmaker

from core.releases import (
    ABORTED,
    PROMOTED,
    RELEASE_EVENT_PREFIX,
    Release,
    end_release,
    open_release,
)
from tasks.champion import change_champion

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


def the_open_release(sessions: sessionmaker, model: str) -> Release:
    with sessions() as session:
        release = open_release(session, model)
        if release is None:
            raise ValueError(f"{model} has no open release")
        session.expunge(release)
    return release


def promote_release(sessions: sessionmaker, mlc: MlflowClient, model: str, reason: str,
                    decided_by: str, *, forced: bool,
                    evidence: dict[str, Any] | None = None, checks: tuple = ()) -> Release:
    """Make the open release's candidate champion, then close the release as promoted."""
    release = the_open_release(sessions, model)
    why = f"release {release.id} ({release.mode} {release.share:.0%}): {reason}"

    def choose(changes: list) -> str:
        if changes and changes[-1].version == release.candidate_version:
            raise ValueError(f"{model} v{release.candidate_version} is the champion already")
        return release.candidate_version

    change_champion(sessions, mlc, model, choose, action="promote", reason=why,
                    decided_by=decided_by, forced=forced, checks=checks)
    return end_release(sessions, release.id, PROMOTED, reason, decided_by, forced=forced,
                       evidence=evidence)


def abort_release(sessions: sessionmaker, model: str, reason: str, decided_by: str, *,
                  forced: bool, evidence: dict[str, Any] | None = None) -> Release:
    """Close the open release as aborted: every replica sends its share back to the champion
    at its next poll."""
    release = the_open_release(sessions, model)
    return end_release(sessions, release.id, ABORTED, reason, decided_by, forced=forced,
                       evidence=evidence)


def emit_release_event(what: str, release: Release) -> None:
    """``oceanml.release.started`` / ``promoted`` / ``aborted`` for the model's resource."""
    emit_event(event=f"{RELEASE_EVENT_PREFIX}{what}",
               resource={"prefect.resource.id": f"oceanml.model.{release.model_name}",
                         "prefect.resource.name": release.model_name},
               payload={"release": release.id, "model": release.model_name,
                        "candidate_version": release.candidate_version,
                        "champion_version": release.champion_version, "mode": release.mode,
                        "share": release.share, "reason": release.reason,
                        "forced": release.forced})
