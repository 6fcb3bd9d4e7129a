"""Engines and sessions over the metadata schema: SQLite (WAL, busy timeout) or PostgreSQL,
migrated to this version's head on first use, and the one insert that two racing writers
can both run."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import JSON, Column, Engine, Insert, Table, create_engine, event
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
    storing process at 20 000 rows). A column a row leaves out gets its Python-side
    default, evaluated once for the call (a per-row default such as a uuid belongs in the
    rows), or NULL; one with only a server default must be in every row or in none."""
    if not rows:
        return
    connection = session.connection()
    dialect = connection.dialect
    given = set().union(*rows)
    compiled = statement.compile(dialect=dialect, column_keys=sorted(given),
                                 for_executemany=True)
    names = compiled.positiontup if compiled.positional else list(compiled.binds)
    binds = [compiled.binds[name] for name in names]
    binders = [b.type.dialect_impl(dialect).bind_processor(dialect) for b in binds]
    keys = [b.key for b in binds]
    defaults = [_bound(binder, _default(statement.table.c[k], rows)) for binder, k in zip(
        binders, keys, strict=True)]  # once for the call, not once per row
    bound = [[_bound(binder, row[k]) if k in row else default
              for k, binder, default in zip(keys, binders, defaults, strict=True)]
             for row in rows]
    params: list[Any] = ([tuple(b) for b in bound] if compiled.positional
                         else [dict(zip(names, b, strict=True)) for b in bound])
    connection.exec_driver_sql(compiled.string, params)


def copy_rows(session: Session, table: Table, rows: list[dict[str, Any]],
              into: str | None = None) -> list[str]:
    """PostgreSQL ``COPY`` of ``rows`` into ``table`` (or ``into``, a table of its columns):
    the columns the rows name, plus those with a Python-side default, evaluated once for the
    call; JSON columns as text (None as NULL). Returns the quoted names of the columns."""
    given = set().union(*rows)
    columns = [c for c in table.columns if c.key in given or c.default is not None]
    defaults = {c.key: _default(c, rows) for c in columns}
    json_columns = {c.key for c in columns if isinstance(c.type, JSON)}
    quote = session.get_bind().dialect.identifier_preparer.quote
    names = [quote(c.name) for c in columns]
    with _cursor(session) as cursor, cursor.copy(
            f"COPY {quote(into or table.name)} ({', '.join(names)}) FROM STDIN") as copy:
        for row in rows:
            values = [row.get(c.key, defaults[c.key]) for c in columns]
            copy.write_row([to_json(v) if k in json_columns and v is not None else v
                            for k, v in zip(defaults, values, strict=True)])
    return names


def upsert(session: Session, table: Table, rows: list[dict[str, Any]], update: list[str]
           ) -> None:
    """Insert ``rows``; one whose primary key the table holds replaces that row's ``update``
    columns. SQLite: one driver executemany of ``INSERT ... ON CONFLICT``. PostgreSQL: a
    ``COPY`` into a temporary table, then one ``INSERT ... SELECT ... ON CONFLICT`` (a third
    of the client's and the server's CPU of an executemany, at 20 000 ledger rows). Keys
    are unique within a call."""
    if not rows:
        return
    dialect = session.get_bind().dialect
    if dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        statement = sqlite_insert(table)
        executemany(session, statement.on_conflict_do_update(
            index_elements=list(table.primary_key.columns),
            set_={c: statement.excluded[c] for c in update}), rows)
        return
    if dialect.name != "postgresql":
        raise NotImplementedError(f"upsert: no ON CONFLICT for {dialect.name}")
    quote = dialect.identifier_preparer.quote
    staging = f"{table.name}_incoming"
    target, incoming = quote(table.name), quote(staging)
    with _cursor(session) as cursor:
        # emptied at each commit; the DELETE is for an earlier call in this transaction (a
        # TRUNCATE here cost a third of the server's time of the whole upsert)
        cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {incoming} (LIKE {target}) "
                       "ON COMMIT DELETE ROWS")
        cursor.execute(f"DELETE FROM {incoming}")
        names = ", ".join(copy_rows(session, table, rows, into=staging))
        key = ", ".join(quote(c.name) for c in table.primary_key.columns)
        cursor.execute(f"INSERT INTO {target} ({names}) SELECT {names} FROM {incoming} "
                       f"ON CONFLICT ({key}) DO UPDATE SET "
                       + ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in update))


def _cursor(session: Session) -> Any:
    """A cursor of the session's own driver connection, inside its transaction."""
    return session.connection().connection.driver_connection.cursor()


def _bound(binder: Callable[[Any], Any] | None, value: Any) -> Any:
    return value if binder is None else binder(value)


def _default(column: Column, rows: list[dict[str, Any]]) -> Any:
    """A column's Python-side insert default, evaluated (a callable gets no context); a
    column with only a server default, left out of some rows, is refused: NULL is not what
    the server would have written."""
    default = column.default
    if default is None:
        if column.server_default is not None and any(column.key not in r for r in rows):
            raise ValueError(f"{column.table.name}.{column.name} has a server default: "
                             "give it in every row or in none")
        return None
    return default.arg(None) if default.is_callable else default.arg


@lru_cache(maxsize=8)
def session_factory(url: str) -> sessionmaker:
    """A sessionmaker over a ready schema: the one entry point stages use."""
    engine = make_engine(url)
    init_db(engine)
    return sessionmaker(engine, expire_on_commit=False)
