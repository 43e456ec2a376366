"""Enqueue jobrunner jobs from Python and follow them.

- ``enqueue(conn, kind, payload, ...)`` inside your own transaction, on a psycopg 3
  connection or a SQLAlchemy session/connection; ``aenqueue`` for asyncpg, psycopg's
  AsyncConnection and SQLAlchemy's AsyncSession/AsyncConnection. Roll back and the
  job never existed.
- ``enqueue_redis(redis, kind, payload, ...)`` / ``aenqueue_redis`` for producers that
  hold only Redis (redis-py, sync or asyncio); the Lua script ships with the package.
- ``Client(admin_url)``: ``get(job_id)``, ``wait(job_id, timeout)`` and
  ``events(job=..., queue=...)``, an async iterator over Server-Sent Events from a
  daemon's admin listener; ``redis_events(redis, ...)`` reads the Redis channel.

The package imports no driver itself: it uses the connection you pass.
"""

from ._events import Event, redis_events
from ._http import Client, JobFailed
from ._redis import ENQUEUE_SCRIPT, aenqueue_redis, enqueue_redis
from ._sql import aenqueue, enqueue

FINAL_STATUSES = frozenset({"succeeded", "dead", "cancelled"})

__all__ = [
    "ENQUEUE_SCRIPT",
    "FINAL_STATUSES",
    "Client",
    "Event",
    "JobFailed",
    "aenqueue",
    "aenqueue_redis",
    "enqueue",
    "enqueue_redis",
    "redis_events",
]
