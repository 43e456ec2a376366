"""Job events: the JSON objects the daemon publishes (docs/PROTOCOL.md §4), read
from Server-Sent Events or from the Redis channel ``<key_prefix>:events``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional


@dataclass(frozen=True)
class Event:
    """One status change or progress report."""

    type: str
    id: str
    queue: str
    kind: str
    status: str
    attempt: int
    at: str
    error: Optional[str] = None
    progress: Optional[dict[str, Any]] = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Event":
        return cls(type=data.get("type", "status"), id=data["id"], queue=data.get("queue", ""),
                   kind=data.get("kind", ""), status=data.get("status", ""),
                   attempt=int(data.get("attempt", 0)), at=data.get("at", ""),
                   error=data.get("error"), progress=data.get("progress"), raw=data)


async def parse_sse(chunks: AsyncIterator[bytes]) -> AsyncIterator[Event]:
    """Server-Sent Events from a byte stream: every ``status``/``progress`` event
    (comments and ``lagged`` notices are skipped)."""
    buffer = b""
    name, data = "", []
    async for chunk in chunks:
        buffer += chunk
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            line = raw.rstrip(b"\r").decode("utf-8")
            if line == "":
                if data and name in ("", "status", "progress"):
                    yield Event.from_json(json.loads("\n".join(data)))
                name, data = "", []
            elif line.startswith(":"):
                continue
            elif line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))


async def redis_events(redis: Any, *, prefix: str = "jobrunner", job: Optional[str] = None,
                       queue: Optional[str] = None) -> AsyncIterator[Event]:
    """Events from the Redis channel ``<prefix>:events`` (``redis.asyncio.Redis``),
    filtered by job id and queue. Pub/sub drops what is sent while nobody listens:
    read the row after subscribing."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(f"{prefix}:events")
    try:
        async for message in pubsub.listen():
            if message.get("type") != "message":
                continue
            payload = message["data"]
            if isinstance(payload, bytes):
                payload = payload.decode("utf-8")
            event = Event.from_json(json.loads(payload))
            if job is not None and event.id != str(job):
                continue
            if queue is not None and event.queue != queue:
                continue
            yield event
    finally:
        await pubsub.unsubscribe()
        await pubsub.aclose() if hasattr(pubsub, "aclose") else await pubsub.close()
