"""Which version is each model's champion: an append-only history in the metadata DB.

The history is the source of truth; the MLflow ``champion`` alias (which the endpoint and
``models:/NAME@champion`` read) follows it. A change is committed to the DB first, then the
alias is moved (:func:`sync_alias`); a process killed between the two leaves the alias one
step behind, and the next change of that model, or ``oceanml models list``, moves it.

Changes of one model are serialized by :func:`model_lock`: a row lock (``SELECT ... FOR
UPDATE``) on PostgreSQL, a file lock beside the database file on SQLite (one machine, like
SQLite itself), so whatever is decided under the lock is decided against the champion read
under it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.database import insert_new
from core.records import ChampionChange, ModelLock
from core.registry import CHAMPION, PREVIOUS, alias_version

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

LOCK_TIMEOUT_S = 1800.0  # a promotion may re-evaluate under the lock; more than that is stuck


@contextmanager
def model_lock(sessions: sessionmaker, model: str) -> Iterator[None]:
    """Hold the lock on ``model``'s champion until the block ends."""
    engine = sessions.kw["bind"]
    if engine.dialect.name == "sqlite":
        from filelock import FileLock

        database = Path(engine.url.database or "oceanml.db").resolve()
        with FileLock(f"{database}.champion-{model}.lock", timeout=LOCK_TIMEOUT_S):
            yield
        return
    with sessions() as session:
        insert_new(session, ModelLock, [{"model_name": model}])
        session.commit()
        session.execute(select(ModelLock).where(ModelLock.model_name == model)
                        .with_for_update())
        try:
            yield
        finally:
            session.rollback()  # ends the transaction: releases the row lock


def head(session: Session, model: str) -> ChampionChange | None:
    """The latest change of ``model``'s champion, if any."""
    return session.scalar(select(ChampionChange).where(ChampionChange.model_name == model)
                          .order_by(ChampionChange.id.desc()).limit(1))


def history(session: Session, model: str) -> list[ChampionChange]:
    return list(session.scalars(select(ChampionChange).where(ChampionChange.model_name == model)
                                .order_by(ChampionChange.id)))


def current_champion(sessions: sessionmaker, mlc: MlflowClient, model: str) -> str | None:
    """The champion version by the history; a registry that has an alias but no history yet
    (a store older than the history) is adopted once, as an ``adopt`` change."""
    with sessions() as session:
        latest = head(session, model)
        if latest is not None:
            return latest.version
        alias = alias_version(mlc, model)
        if alias is None:
            return None
        session.add(ChampionChange(model_name=model, version=str(alias.version),
                                   previous_version=None, action="adopt",
                                   reason="champion alias found in the registry",
                                   decided_by="oceanml"))
        session.commit()
        return str(alias.version)


def sync_alias(mlc: MlflowClient, sessions: sessionmaker, model: str) -> bool:
    """Point ``champion`` (and ``previous-champion``) at what the history says; True when
    something had to move."""
    with sessions() as session:
        latest = head(session, model)
    if latest is None:
        return False
    moved = False
    alias = alias_version(mlc, model)
    if alias is None or str(alias.version) != latest.version:
        mlc.set_registered_model_alias(model, CHAMPION, latest.version)
        moved = True
    if latest.previous_version:
        previous = alias_version(mlc, model, PREVIOUS)
        if previous is None or str(previous.version) != latest.previous_version:
            mlc.set_registered_model_alias(model, PREVIOUS, latest.previous_version)
            moved = True
    return moved


def record_change(session: Session, model: str, version: str, previous: str | None,
                  action: str, reason: str, decided_by: str, forced: bool = False
                  ) -> ChampionChange:
    change = ChampionChange(model_name=model, version=version, previous_version=previous,
                            action=action, reason=reason, decided_by=decided_by, forced=forced)
    session.add(change)
    return change
