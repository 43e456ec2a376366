"""The client package against `jobrunner run`: SQL enqueue in committed and
rolled-back transactions for each driver, Redis enqueue with the shipped script,
get, wait and events."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import uuid
from typing import Any

import psycopg
import pytest
import redis

from jobrunner_client import (ENQUEUE_SCRIPT, Client, JobFailed, aenqueue, aenqueue_redis,
                              enqueue, enqueue_redis, redis_events)


def row_count(stack: Any, job_id: uuid.UUID) -> int:
    with psycopg.connect(stack.dsn) as conn:
        return conn.execute("SELECT count(*) FROM jobrunner.jobs WHERE id = %s",
                            [job_id]).fetchone()[0]


def test_psycopg_enqueue_commits_with_the_transaction_or_not_at_all(stack: Any) -> None:
    client = Client(stack.admin_url)
    with psycopg.connect(stack.dsn) as conn:
        with conn.transaction():
            kept = enqueue(conn, "noop", {"via": "psycopg"}, priority=5)
        with pytest.raises(RuntimeError):
            with conn.transaction():
                dropped = enqueue(conn, "noop", {"via": "psycopg"})
                raise RuntimeError("the route failed")
    assert client.wait(kept, timeout=10)["result"] == {"via": "psycopg"}
    assert row_count(stack, dropped) == 0
    with pytest.raises(LookupError):
        client.get(dropped)


def test_psycopg_async_and_asyncpg_enqueue_in_their_transactions(stack: Any) -> None:
    import asyncpg

    async def main() -> tuple[uuid.UUID, ...]:
        async with await psycopg.AsyncConnection.connect(stack.dsn) as conn:
            async with conn.transaction():
                a = await aenqueue(conn, "noop", {"via": "psycopg-async"})
        pg = await asyncpg.connect(stack.dsn)
        try:
            async with pg.transaction():
                b = await aenqueue(pg, "noop", {"via": "asyncpg"}, queue="default")
            tx = pg.transaction()
            await tx.start()
            c = await aenqueue(pg, "noop", {"via": "asyncpg"})
            await tx.rollback()
        finally:
            await pg.close()
        return a, b, c

    a, b, c = asyncio.run(main())
    client = Client(stack.admin_url)
    assert client.wait(a, timeout=10)["result"] == {"via": "psycopg-async"}
    assert client.wait(b, timeout=10)["result"] == {"via": "asyncpg"}
    assert row_count(stack, c) == 0


def test_sqlalchemy_sessions_enqueue_in_their_transactions(stack: Any) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.orm import Session

    tail = stack.dsn.split("://", 1)[1]
    engine = create_engine(f"postgresql+psycopg://{tail}")
    with Session(engine) as session:
        kept = enqueue(session, "noop", {"via": "sqlalchemy"})
        session.commit()
        dropped = enqueue(session, "noop", {"via": "sqlalchemy"})
        session.rollback()
    engine.dispose()

    async def main() -> tuple[uuid.UUID, uuid.UUID]:
        aengine = create_async_engine(f"postgresql+asyncpg://{tail}")
        async with AsyncSession(aengine) as session:
            a = await aenqueue(session, "noop", {"via": "sqlalchemy-async"})
            await session.commit()
            b = await aenqueue(session, "noop", {"via": "sqlalchemy-async"})
            await session.rollback()
        await aengine.dispose()
        return a, b

    akept, adropped = asyncio.run(main())
    client = Client(stack.admin_url)
    assert client.wait(kept, timeout=10)["status"] == "succeeded"
    assert client.wait(akept, timeout=10)["result"] == {"via": "sqlalchemy-async"}
    assert row_count(stack, dropped) == 0
    assert row_count(stack, adropped) == 0


def test_redis_enqueue_ships_the_daemons_own_script(stack: Any) -> None:
    r = redis.Redis(host="127.0.0.1", port=stack.redis_port)
    job_id = enqueue_redis(r, "noop", {"via": "redis"})
    client = Client(stack.admin_url)
    assert client.wait(job_id, timeout=10)["result"] == {"via": "redis"}
    with pytest.raises(redis.ResponseError, match="priority must be"):
        enqueue_redis(r, "noop", {}, priority=5000)
    # The daemon's own `enqueue --via redis` runs the same text: one SHA1, one script.
    r.script_flush()
    out = subprocess.run([stack.daemon.args[0], "--config", stack.daemon.args[2], "enqueue",
                          "noop", "--via", "redis"], capture_output=True, text=True, check=True)
    assert out.stdout.strip()
    sha = hashlib.sha1(ENQUEUE_SCRIPT.encode()).hexdigest()
    assert r.script_exists(sha) == [True]

    async def main() -> uuid.UUID:
        import redis.asyncio as aredis

        ar = aredis.Redis(host="127.0.0.1", port=stack.redis_port)
        try:
            return await aenqueue_redis(ar, "noop", {"via": "redis-async"})
        finally:
            await ar.aclose()

    assert client.wait(asyncio.run(main()), timeout=10)["result"] == {"via": "redis-async"}


def test_wait_raises_for_a_failed_job_when_asked(stack: Any) -> None:
    with psycopg.connect(stack.dsn) as conn:
        job_id = enqueue(conn, "fail", {"permanent": True})
        conn.commit()
    client = Client(stack.admin_url)
    with pytest.raises(JobFailed, match="failed permanently as asked"):
        client.wait(job_id, timeout=10, check=True)
    with pytest.raises(TimeoutError):
        with psycopg.connect(stack.dsn) as conn:
            slow = enqueue(conn, "sleep", {"ms": 3000})
            conn.commit()
        client.wait(slow, timeout=0.3)


def test_events_follow_a_job_from_sse_and_from_redis(stack: Any) -> None:
    client = Client(stack.admin_url)

    async def main() -> None:
        import redis.asyncio as aredis

        ar = aredis.Redis(host="127.0.0.1", port=stack.redis_port)
        job_id = uuid.uuid4()
        sse = client.events(job=job_id)
        pubsub = redis_events(ar, job=str(job_id))
        first_sse = asyncio.ensure_future(sse.__anext__())
        first_redis = asyncio.ensure_future(pubsub.__anext__())
        await asyncio.sleep(0.5)  # both subscriptions are in place
        await aenqueue_redis(ar, "sleep", {"ms": 300, "progress": True}, job_id=job_id)
        seen_sse = [await asyncio.wait_for(first_sse, 10)]
        while seen_sse[-1].status != "succeeded":
            seen_sse.append(await asyncio.wait_for(sse.__anext__(), 10))
        seen_redis = [await asyncio.wait_for(first_redis, 10)]
        while seen_redis[-1].status != "succeeded":
            seen_redis.append(await asyncio.wait_for(pubsub.__anext__(), 10))
        await sse.aclose()
        await pubsub.aclose()
        for seen in (seen_sse, seen_redis):
            assert seen[0].status == "queued"
            assert "progress" in [e.type for e in seen]
            assert all(e.id == str(job_id) for e in seen)
        # wait_async follows the events; a finished job returns at once.
        done = await client.wait_async(job_id, timeout=5)
        assert done["status"] == "succeeded"
        await ar.aclose()

    asyncio.run(main())
