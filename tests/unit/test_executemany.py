"""The bulk writes of ``core.database`` (``executemany``; on PostgreSQL ``copy_rows`` and the
COPY behind ``upsert``) store exactly what SQLAlchemy's own insert stores: the same values
read back (datetimes, JSON, NULLs, defaults), rows whose keys differ, an upsert that
replaces, and nothing at all when the batch fails. SQLite here, PostgreSQL too when the
suite has one."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select

from core.database import copy_rows, executemany, session_factory, upsert
from core.db import IngestedFile, Observation

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
WHEN = datetime(2026, 11, 20, 6, 30, 15, 123456, tzinfo=UTC)


@pytest.fixture(params=BACKENDS)
def sessions(request, tmp_path):
    if request.param == "sqlite":
        return session_factory(f"sqlite:///{tmp_path / 'oceanml.db'}")
    return session_factory(request.getfixturevalue("pg_url"))


def observation(n: int, **extra) -> dict:
    return {"content_hash": f"{n:064x}", "source_key": f"dev/{n}.jpg", "device_id": "buoy-1",
            "device_type": "buoy", "observed_at": WHEN, "lat": 43.5, "lon": -1.25 - n,
            "ph": 8.1 if n % 2 else None, "labels": {"plastic": n % 2, "note": "é"}, **extra}


ROWS = [observation(0, image_key="images/00/a.jpg", image_width=96, image_stats={"red": 0.5}),
        observation(1),  # a sensor table's row: no image columns, its defaults instead
        observation(2, extra_readings={"wind_m_s": 4.2}, image_stats={})]


def stored(sessions) -> list[dict]:
    columns = [c for c in Observation.__table__.columns if c.name not in ("id", "created_at",
                                                                            "updated_at")]
    with sessions() as s:
        rows = s.execute(select(*columns).order_by(Observation.content_hash)).mappings().all()
        stamps = s.execute(select(Observation.created_at, Observation.updated_at)).all()
    assert all(created is not None and updated is not None for created, updated in stamps)
    return [dict(r) for r in rows]


def writers(sessions) -> list:
    table = Observation.__table__
    found = [lambda s, rows: executemany(s, insert(table), rows)]
    if sessions().get_bind().dialect.name == "postgresql":
        found.append(lambda s, rows: copy_rows(s, table, rows))
    return found


def test_the_rows_read_back_as_sqlalchemys_own_insert_stored_them(sessions) -> None:
    with sessions() as s:
        for row in ROWS:  # SQLAlchemy's own, a row at a time (keys differ between rows)
            s.execute(insert(Observation.__table__), row)
        s.commit()
    theirs = stored(sessions)
    for write in writers(sessions):
        with sessions() as s:
            s.execute(Observation.__table__.delete())
            write(s, ROWS)
            s.commit()
        ours = stored(sessions)
        assert ours == theirs
        assert ours[0]["observed_at"].replace(tzinfo=UTC) == WHEN
        assert ours[1]["image_stats"] == {} and ours[1]["image_width"] is None
        assert ours[1]["ph"] == 8.1 and ours[0]["ph"] is None
        assert ours[2]["extra_readings"] == {"wind_m_s": 4.2}
        assert ours[0]["llm_tags"] is None and ours[0]["labels"] == {"plastic": 0, "note": "é"}


def test_an_upsert_replaces_the_row_of_the_same_key_and_keeps_the_others(sessions) -> None:
    ledger = IngestedFile.__table__
    for fingerprint in ("1:a", "2:b"):
        with sessions() as s:
            upsert(s, ledger, [
                {"source_key": "dev/1.jpg", "fingerprint": fingerprint, "outcome": "ingested"},
                {"source_key": f"dev/{fingerprint}.jpg", "fingerprint": fingerprint,
                 "outcome": "ingested"}], update=["fingerprint", "outcome"])
            # a second call in the same transaction upserts its own rows only (the first's
            # again would change dev/1.jpg twice in one statement, which PostgreSQL refuses)
            upsert(s, ledger, [{"source_key": "dev/1.jpg", "fingerprint": "x",
                                "outcome": "rejected"}], update=["outcome"])
            s.commit()
    with sessions() as s:
        rows = s.execute(select(IngestedFile.source_key, IngestedFile.fingerprint,
                                IngestedFile.outcome).order_by(IngestedFile.source_key)).all()
        assert None not in s.scalars(select(IngestedFile.seen_at)).all()  # its default
    assert rows == [("dev/1.jpg", "2:b", "rejected"), ("dev/1:a.jpg", "1:a", "ingested"),
                    ("dev/2:b.jpg", "2:b", "ingested")]


def test_a_batch_that_fails_stores_none_of_its_rows(sessions) -> None:
    with sessions() as s:
        executemany(s, insert(Observation.__table__), ROWS[:1])
        s.commit()
    for write in writers(sessions):
        with sessions() as s, pytest.raises(Exception, match="(?i)unique"):
            write(s, [observation(5), ROWS[0]])  # the second has a stored row's hash
        with sessions() as s:
            assert s.scalars(select(Observation.content_hash)).all() == [
                ROWS[0]["content_hash"]]


def test_a_server_default_left_out_of_some_rows_is_refused_not_written_as_null(tmp_path):
    from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine
    from sqlalchemy.orm import Session

    table = Table("t", MetaData(), Column("id", Integer, primary_key=True),
                  Column("kind", String(8), server_default="plain"))
    engine = create_engine(f"sqlite:///{tmp_path / 't.db'}")
    table.metadata.create_all(engine)
    with Session(engine) as s:
        with pytest.raises(ValueError, match=r"t\.kind has a server default"):
            executemany(s, insert(table), [{"id": 1, "kind": "odd"}, {"id": 2}])
        executemany(s, insert(table), [{"id": 3}, {"id": 4}])  # in none: the server's
        s.commit()
        assert s.execute(select(table.c.kind)).scalars().all() == ["plain", "plain"]
