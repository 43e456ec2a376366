"""Redis enqueue: the daemon's ENQUEUE script, shipped with this package
(``enqueue.lua``, byte for byte the daemon's, so its SHA1 is the same)."""

from __future__ import annotations

import json
import os
import time
import uuid
from importlib import resources
from typing import Any, Optional

ENQUEUE_SCRIPT: str = resources.files(__package__).joinpath("enqueue.lua").read_text("utf-8")


def new_id() -> uuid.UUID:
    """A time-ordered id (UUID version 7), as the daemon makes them."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 \
        | 0b10 << 62 | (rand & ((1 << 62) - 1))
    return uuid.UUID(int=value)


def _call(kind: str, payload: Any, queue: str, priority: int, max_attempts: int, delay_ms: int,
          prefix: str, job_id: Optional[uuid.UUID]) -> tuple[uuid.UUID, list[str], list[Any]]:
    jid = job_id or new_id()
    keys = [f"{prefix}:{{{queue}}}:job:{jid}", f"{prefix}:{{{queue}}}:ingest"]
    args = [str(jid), kind, json.dumps({} if payload is None else payload), priority,
            max_attempts, delay_ms]
    return jid, keys, args


def _script(redis: Any) -> Any:
    # One registered Script per client; register_script only hashes the text.
    script = getattr(redis, "_jobrunner_enqueue", None)
    if script is None:
        script = redis.register_script(ENQUEUE_SCRIPT)
        try:
            setattr(redis, "_jobrunner_enqueue", script)
        except AttributeError:
            pass
    return script


def enqueue_redis(redis: Any, kind: str, payload: Any = None, *, queue: str = "default",
                  priority: int = 0, max_attempts: int = 0, delay_ms: int = 0,
                  prefix: str = "jobrunner", job_id: Optional[uuid.UUID] = None) -> uuid.UUID:
    """Enqueues through Redis only (redis-py ``Redis``); returns the job id. The daemon
    records it in the ledger within moments. ``prefix`` is the daemon's
    ``[redis] key_prefix``. A bad argument raises ``redis.ResponseError`` naming it."""
    jid, keys, args = _call(kind, payload, queue, priority, max_attempts, delay_ms, prefix, job_id)
    _script(redis)(keys=keys, args=args)
    return jid


async def aenqueue_redis(redis: Any, kind: str, payload: Any = None, *, queue: str = "default",
                         priority: int = 0, max_attempts: int = 0, delay_ms: int = 0,
                         prefix: str = "jobrunner",
                         job_id: Optional[uuid.UUID] = None) -> uuid.UUID:
    """``enqueue_redis`` for ``redis.asyncio.Redis``."""
    jid, keys, args = _call(kind, payload, queue, priority, max_attempts, delay_ms, prefix, job_id)
    await _script(redis)(keys=keys, args=args)
    return jid
