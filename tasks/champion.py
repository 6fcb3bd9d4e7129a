"""Champion operations: move a model's champion alias under its lock and record the change
(the gate's promotion, a rollback, a forced promotion), and emit the event that says so."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from prefect.events import emit_event
from sqlalchemy.orm import sessionmaker

from core.champion_history import (
    current_champion,
    history,
    model_lock,
    record_change,
    sync_alias,
)
from core.records import ChampionChange, DecisionRecord
from tasks.gates import Check

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


PROMOTED_EVENT = "oceanml.model.promoted"
ROLLED_BACK_EVENT = "oceanml.model.rolled_back"


def record_decision(session: Any, model: str, candidate: str, champion: str | None,
                    dataset: str | None, action: str, promoted: bool, reason: str,
                    decided_by: str, *, forced: bool = False, checks: tuple[Check, ...] = (),
                    interval: dict[str, Any] | None = None) -> DecisionRecord:
    """Add the decision record (committed with the caller's transaction)."""
    record = DecisionRecord(model_name=model, candidate_version=candidate,
                            champion_version=champion, dataset_version=dataset, action=action,
                            promoted=promoted, forced=forced, reason=reason,
                            decided_by=decided_by, checks=[asdict(c) for c in checks],
                            interval=interval)
    session.add(record)
    session.flush()  # the id, for the version's tag
    return record


def decision_dict(record: DecisionRecord) -> dict[str, Any]:
    return {"id": record.id, "model": record.model_name, "candidate": record.candidate_version,
            "champion": record.champion_version, "dataset_version": record.dataset_version,
            "action": record.action, "promoted": record.promoted, "forced": record.forced,
            "checks": record.checks, "interval": record.interval, "reason": record.reason,
            "decided_by": record.decided_by,
            "at": record.created_at.isoformat() if record.created_at else None}


def tag_decision(mlc: MlflowClient, record: DecisionRecord, verdict: str) -> None:
    """The decision on the candidate version's tags: verdict, reason, record id and checks."""
    name, version = record.model_name, record.candidate_version
    checks = "; ".join(f"{c['name']} {'pass' if c['passed'] else 'FAIL'}" for c in record.checks)
    for key, value in (("promotion", verdict), ("promotion_reason", record.reason),
                       ("decision_id", str(record.id)), ("decision_checks", checks[:4900]),
                       ("decided_by", record.decided_by)):
        mlc.set_model_version_tag(name, version, key, value)


def change_champion(
    sessions: sessionmaker,
    mlc: MlflowClient,
    model: str,
    choose: Callable[[list[ChampionChange]], str],
    *,
    action: str,
    reason: str,
    decided_by: str,
    forced: bool = False,
    checks: tuple[Check, ...] = (),
) -> dict[str, Any]:
    """Make ``choose(history)`` the champion, under the model's lock, without the offline
    gates: what a rollback, a forced promotion and a release's promotion do (the release's
    own ``checks`` go on the decision record). ``choose`` sees the history read under the
    lock and raises ``ValueError`` (with what to do instead) when the move makes no sense."""
    with model_lock(sessions, model):
        sync_alias(mlc, sessions, model)
        current_champion(sessions, mlc, model)  # adopts a pre-history alias
        with sessions() as session:
            changes = history(session, model)
            version = choose(changes)
            previous = changes[-1].version if changes else None
            record_change(session, model, version, previous, action, reason, decided_by,
                          forced)
            record = record_decision(
                session, model, version, previous,
                (mlc.get_model_version(model, version).tags or {}).get("dataset_version"),
                "force" if forced else action, True, reason, decided_by, forced=forced,
                checks=checks)
            session.commit()
        sync_alias(mlc, sessions, model)
    return {"model": model, "version": version, "previous_version": previous,
            "action": action, "reason": reason, "forced": forced, "decided_by": decided_by,
            "decision": decision_dict(record)}


def rollback(sessions: sessionmaker, mlc: MlflowClient, model: str, to: str | None,
             reason: str, decided_by: str) -> dict[str, Any]:
    """Back to the champion before the current one, or to ``to`` if it was champion before."""
    def choose(changes: list[ChampionChange]) -> str:
        if not changes:
            raise ValueError(f"{model} has no champion to roll back from")
        current = changes[-1].version
        if to is None:
            if not changes[-1].previous_version:
                raise ValueError(f"{model} v{current} is its first champion: nothing to roll "
                                 "back to (promote a version with --force instead)")
            return changes[-1].previous_version
        if to == current:
            raise ValueError(f"{model} v{to} is the champion already")
        if to not in {c.version for c in changes}:
            raise ValueError(f"{model} v{to} was never champion: `oceanml models promote` "
                             "runs the gates for a new one")
        return to

    return change_champion(sessions, mlc, model, choose, action="rollback", reason=reason,
                           decided_by=decided_by)


def force_promote(sessions: sessionmaker, mlc: MlflowClient, model: str, version: str,
                  reason: str, decided_by: str) -> dict[str, Any]:
    """Make ``version`` champion without gates, recorded as forced with its reason."""
    mlc.get_model_version(model, version)  # raises for a version the registry does not hold

    def choose(changes: list[ChampionChange]) -> str:
        if changes and changes[-1].version == version:
            raise ValueError(f"{model} v{version} is the champion already")
        return version

    result = change_champion(sessions, mlc, model, choose, action="promote", reason=reason,
                             decided_by=decided_by, forced=True)
    with sessions() as session:
        tag_decision(mlc, session.get(DecisionRecord, result["decision"]["id"]), "forced")
    return result


def emit_champion_event(event: str, model: str, version: str, previous: str | None,
                        reason: str) -> None:
    """``oceanml.model.promoted`` / ``rolled_back``: model, version, previous and reason."""
    emit_event(event=event,
               resource={"prefect.resource.id": f"oceanml.model.{model}",
                         "prefect.resource.name": model},
               payload={"model": model, "version": version, "previous": previous or None,
                        "reason": reason})


