"""Releases: a candidate version served beside the champion before it replaces it.

A release is a ``releases`` row: the model, the candidate, the champion it started against,
the mode (``canary``: a share of requests is answered by the candidate; ``shadow``: the
candidate predicts a share of requests off the response path, its answers recorded, never
returned), the share, when it started and its deadline, who started it, and how it ended
(``promoted`` or ``aborted``, why, by whom, forced or not, with the figures it was judged on).
Every replica of ``oceanml serve`` reads the open release of each model it serves, so a
release is started and ended in one place, the database, and followed everywhere.

At most one release per model is open: ``open_model`` holds the model's name while the row is
open and NULL once it ends, under a unique constraint (NULLs never collide), so two racing
starts leave one release and one error on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, Double, Integer, String, Text, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from core.db import NULLABLE_JSON, Base, utcnow

MODES = ("canary", "shadow")
RELEASE_EVENT_PREFIX = "oceanml.release."  # .started, .promoted, .aborted
OPEN, PROMOTED, ABORTED = "open", "promoted", "aborted"
ROLES = ("champion", "canary", "shadow")


class Release(Base):
    """One release of a candidate version of a model, from start to decision."""

    __tablename__ = "releases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64), index=True)
    open_model: Mapped[str | None] = mapped_column(String(64), unique=True)  # NULL once ended
    candidate_version: Mapped[str] = mapped_column(String(16))
    champion_version: Mapped[str] = mapped_column(String(16))  # the champion it started against
    mode: Mapped[str] = mapped_column(String(16))
    share: Mapped[float] = mapped_column(Double)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    deadline: Mapped[datetime]
    started_by: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=OPEN)
    decided_at: Mapped[datetime | None]
    decided_by: Mapped[str | None] = mapped_column(String(64))
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(Text)
    evidence: Mapped[dict[str, Any] | None] = mapped_column(NULLABLE_JSON)


def open_release(session: Session, model: str) -> Release | None:
    return session.scalar(select(Release).where(Release.open_model == model))


def open_releases(session: Session, models: list[str]) -> dict[str, Release]:
    """The open release of each of ``models`` that has one (one query: the serve poller's)."""
    rows = session.scalars(select(Release).where(Release.open_model.in_(models)))
    return {r.model_name: r for r in rows}


def start_release(sessions: sessionmaker, model: str, candidate: str, champion: str,
                  mode: str, share: float, duration: timedelta, started_by: str) -> Release:
    """Open a release; ValueError when it cannot be one (bad mode or share, the candidate is
    the champion, a release of ``model`` is open already)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], not {share}")
    if mode == "canary" and share == 1.0:
        raise ValueError("a canary of the whole traffic is a promotion: use a share below 1")
    if candidate == champion:
        raise ValueError(f"{model} v{candidate} is the champion already")
    if duration <= timedelta(0):
        raise ValueError(f"the release needs a positive duration, not {duration}")
    now = utcnow()
    release = Release(model_name=model, open_model=model, candidate_version=candidate,
                      champion_version=champion, mode=mode, share=share, started_at=now,
                      deadline=now + duration, started_by=started_by)
    with sessions() as session:
        session.add(release)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            current = open_release(session, model)
            raise ValueError(f"{model} has an open release already"
                             + (f" (v{current.candidate_version}, {current.mode}, "
                                f"started {current.started_at:%Y-%m-%d %H:%M})" if current
                                else "")) from None
        session.refresh(release)
        session.expunge(release)
    return release


def end_release(sessions: sessionmaker, release_id: int, state: str, reason: str,
                decided_by: str, *, forced: bool = False,
                evidence: dict[str, Any] | None = None) -> Release:
    """Close release ``release_id`` as ``promoted`` or ``aborted``, once: one conditional
    ``UPDATE`` claims it, so of two racing ends one wins and the other gets ValueError."""
    if state not in (PROMOTED, ABORTED):
        raise ValueError(f"a release ends promoted or aborted, not {state!r}")
    with sessions() as session:
        claimed = session.execute(
            update(Release).where(Release.id == release_id, Release.state == OPEN)
            .values(state=state, open_model=None, decided_at=utcnow(), decided_by=decided_by,
                    reason=reason, forced=forced, evidence=evidence)).rowcount
        session.commit()
        release = session.get(Release, release_id)
        if release is None:
            raise LookupError(f"no release {release_id}")
        if not claimed:
            raise ValueError(f"release {release_id} of {release.model_name} is "
                             f"{release.state} already")
        session.expunge(release)
    return release


def candidate_share_point(release_id: int, client: str | None, content_hashes: list[str]
                          ) -> float:
    """Where a request falls in [0, 1): a hash of the release, the client's key name and the
    request's images, so the same caller sending the same image gets the same version on
    every replica, and a new release draws its share afresh."""
    digest = hashlib.sha256(f"{release_id}|{client or '-'}|{','.join(content_hashes)}"
                            .encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64
