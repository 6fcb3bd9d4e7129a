"""Engines and sessions over the metadata schema: SQLite (WAL, busy timeout) or PostgreSQL,
migrated to this version's head on first use, and the one insert that two racing writers
can both run."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import Column, Engine, Insert, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from core.db import Base


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def to_json(value: Any) -> str:
    """JSON columns' text. orjson is several times faster than ``json`` for the small dicts
    every observation carries (readings, image statistics, labels); ``json`` takes what
    orjson refuses (integers beyond 64 bits, keys that are not strings)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(value)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout so tasks may write concurrently."""
    if url.startswith("sqlite:///"):
        from pathlib import Path

        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # pre-ping: a connection the server dropped (a PostgreSQL restart) is replaced, not used
    engine = create_engine(url, future=True, json_serializer=to_json, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def init_db(engine: Engine) -> None:
    """Bring the schema to this version's head revision (:mod:`core.schema`)."""
    from core.schema import migrate

    migrate(engine)


def insert_new(session: Session, model: type[Base], rows: list[dict[str, Any]]) -> int:
    """Insert ``rows``, skipping those a unique constraint already holds; returns how many
    were new. One statement per call (``ON CONFLICT DO NOTHING``, SQLite and PostgreSQL), so
    two writers racing on the same rows both succeed and neither duplicates."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise NotImplementedError(f"insert_new: no ON CONFLICT for {dialect}")
    key = model.__table__.primary_key.columns
    statement = insert(model).on_conflict_do_nothing().returning(*key)
    return len(session.execute(statement, rows).all())  # RETURNING names only rows inserted


def executemany(session: Session, statement: Insert, rows: list[dict[str, Any]]) -> None:
    """``statement`` (an INSERT, an upsert) for every row in one driver ``executemany``: the
    statement compiled once and each value bound by its column's type, with none of
    SQLAlchemy's per-row work (building each row's parameters was half of the ingest's
    storing process at 20 000 rows). A column a row leaves out gets its default, evaluated
    once for the call, or NULL."""
    if not rows:
        return
    connection = session.connection()
    dialect = connection.dialect
    given = set().union(*rows)
    compiled = statement.compile(dialect=dialect, column_keys=sorted(given))
    names = compiled.positiontup if compiled.positional else list(compiled.binds)
    binds = [compiled.binds[name] for name in names]
    binders = [b.type.dialect_impl(dialect).bind_processor(dialect) for b in binds]
    keys = [b.key for b in binds]
    defaults = [_bound(binder, _default(statement.table.c[k])) for binder, k in zip(
        binders, keys, strict=True)]  # once for the call, not once per row
    bound = [[_bound(binder, row[k]) if k in row else default
              for k, binder, default in zip(keys, binders, defaults, strict=True)]
             for row in rows]
    params: list[Any] = ([tuple(b) for b in bound] if compiled.positional
                         else [dict(zip(names, b, strict=True)) for b in bound])
    connection.exec_driver_sql(compiled.string, params)


def _bound(binder: Callable[[Any], Any] | None, value: Any) -> Any:
    return value if binder is None else binder(value)


def _default(column: Column) -> Any:
    """A column's Python-side insert default, evaluated (a callable gets no context)."""
    default = column.default
    if default is None:
        return None
    return default.arg(None) if default.is_callable else default.arg


@lru_cache(maxsize=8)
def session_factory(url: str) -> sessionmaker:
    """A sessionmaker over a ready schema: the one entry point stages use."""
    engine = make_engine(url)
    init_db(engine)
    return sessionmaker(engine, expire_on_commit=False)
