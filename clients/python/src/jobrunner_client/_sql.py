"""SQL enqueue: ``jobrunner.enqueue(...)`` on the caller's connection, in the
caller's transaction. The driver is told apart by the connection's module, so no
driver is imported here."""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any, Optional

_ARGS = "kind => {0}, payload => CAST({1} AS jsonb), queue => {2}, run_at => {3}, " \
        "priority => {4}, max_attempts => {5}, unique_key => {6}"


def _sql(marks: list[str]) -> str:
    return "SELECT jobrunner.enqueue(" + _ARGS.format(*marks) + ")"


_PSYCOPG = _sql(["%s"] * 7)
_ASYNCPG = _sql(["$1::text", "$2::text", "$3::text", "$4::timestamptz", "$5::int", "$6::int",
                 "$7::text"])
_SQLALCHEMY = _sql([":kind", ":payload", ":queue", ":run_at", ":priority", ":max_attempts",
                    ":unique_key"])


def _params(kind: str, payload: Any, queue: Optional[str], run_at: Optional[datetime.datetime],
            priority: int, max_attempts: Optional[int], unique_key: Optional[str]) -> list[Any]:
    if run_at is not None and run_at.tzinfo is None:
        raise ValueError("run_at must be timezone-aware (e.g. datetime.now(timezone.utc))")
    body = json.dumps({} if payload is None else payload)
    return [kind, body, queue, run_at, priority, max_attempts, unique_key]


def _family(conn: Any) -> str:
    module = type(conn).__module__
    return module.split(".", 1)[0]


def _as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def enqueue(conn: Any, kind: str, payload: Any = None, *, queue: Optional[str] = None,
            run_at: Optional[datetime.datetime] = None, priority: int = 0,
            max_attempts: Optional[int] = None, unique_key: Optional[str] = None) -> uuid.UUID:
    """Enqueues a job on ``conn`` (psycopg 3 ``Connection``/``Cursor``, SQLAlchemy
    ``Session``/``Connection``) inside its current transaction; returns the job id.

    ``queue`` and ``max_attempts`` default to the kind's configuration; ``run_at``
    (aware datetime) delays it; ``unique_key`` makes a second enqueue of the same key
    return the first job's id while that job is unfinished."""
    params = _params(kind, payload, queue, run_at, priority, max_attempts, unique_key)
    family = _family(conn)
    if family == "psycopg":
        row = conn.execute(_PSYCOPG, params).fetchone()
        return _as_uuid(row[0])
    if family == "sqlalchemy":
        from sqlalchemy import text  # the caller's own SQLAlchemy

        names = ["kind", "payload", "queue", "run_at", "priority", "max_attempts", "unique_key"]
        result = conn.execute(text(_SQLALCHEMY), dict(zip(names, params)))
        return _as_uuid(result.scalar_one())
    raise TypeError(f"enqueue() takes a psycopg 3 or SQLAlchemy connection, not {type(conn)!r}; "
                    "use aenqueue() for asyncpg and async connections")


async def aenqueue(conn: Any, kind: str, payload: Any = None, *, queue: Optional[str] = None,
                   run_at: Optional[datetime.datetime] = None, priority: int = 0,
                   max_attempts: Optional[int] = None,
                   unique_key: Optional[str] = None) -> uuid.UUID:
    """``enqueue`` for async connections: asyncpg ``Connection``/pool connection,
    psycopg ``AsyncConnection``, SQLAlchemy ``AsyncSession``/``AsyncConnection``."""
    params = _params(kind, payload, queue, run_at, priority, max_attempts, unique_key)
    family = _family(conn)
    if family == "asyncpg":
        return _as_uuid(await conn.fetchval(_ASYNCPG, *params))
    if family == "psycopg":
        cursor = await conn.execute(_PSYCOPG, params)
        row = await cursor.fetchone()
        return _as_uuid(row[0])
    if family == "sqlalchemy":
        from sqlalchemy import text

        names = ["kind", "payload", "queue", "run_at", "priority", "max_attempts", "unique_key"]
        result = await conn.execute(text(_SQLALCHEMY), dict(zip(names, params)))
        return _as_uuid(result.scalar_one())
    raise TypeError(f"aenqueue() takes an asyncpg, psycopg or SQLAlchemy async connection, "
                    f"not {type(conn)!r}")
