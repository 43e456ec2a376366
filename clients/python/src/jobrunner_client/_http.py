"""Reading jobs from a daemon's admin listener: ``/jobs/{id}`` and ``/events``.
Standard library only (urllib for reads, asyncio streams for Server-Sent Events)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, AsyncIterator, Optional, Union

from ._events import Event, parse_sse

FINAL = ("succeeded", "dead", "cancelled")

JobId = Union[str, uuid.UUID]


class JobFailed(Exception):
    """``wait(..., check=True)`` saw the job end other than ``succeeded``."""

    def __init__(self, job: dict[str, Any]):
        self.job = job
        super().__init__(f"job {job.get('id')} ended {job.get('status')}: {job.get('last_error')}")


class Client:
    """A daemon's admin listener, e.g. ``Client("http://127.0.0.1:8080")``."""

    def __init__(self, admin_url: str, *, timeout: float = 10.0):
        self.admin_url = admin_url.rstrip("/")
        self.timeout = timeout

    def get(self, job_id: JobId) -> dict[str, Any]:
        """The job's row as JSON (status, result, last_error, progress, ...).
        Raises ``LookupError`` when the daemon knows no such job (a job enqueued
        through Redis has a row within moments)."""
        url = f"{self.admin_url}/jobs/{job_id}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise LookupError(f"job {job_id} not found") from None
            raise

    def wait(self, job_id: JobId, timeout: float = 30.0, *, poll: float = 0.2,
             check: bool = False) -> dict[str, Any]:
        """Polls until the job is final; returns its row. Raises ``TimeoutError``
        after ``timeout`` seconds, and ``JobFailed`` with ``check=True`` when it
        ended ``dead`` or ``cancelled``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                job = self.get(job_id)
                if job.get("status") in FINAL:
                    if check and job["status"] != "succeeded":
                        raise JobFailed(job)
                    return job
            except LookupError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} not final after {timeout}s")
            time.sleep(poll)

    async def wait_async(self, job_id: JobId, timeout: float = 30.0, *,
                         check: bool = False) -> dict[str, Any]:
        """``wait`` without polling: follows ``/events?job=ID`` and reads the row
        when an end arrives (and once after subscribing, so no end is missed)."""

        async def follow() -> dict[str, Any]:
            stream = self.events(job=job_id)
            nxt: Optional[asyncio.Future[Event]] = asyncio.ensure_future(stream.__anext__())
            try:
                while True:
                    job = await asyncio.to_thread(self._get_or_none, job_id)
                    if job is not None and job.get("status") in FINAL:
                        return job
                    if nxt is None:  # the stream ended: poll
                        await asyncio.sleep(0.2)
                        continue
                    # An event, or a second without one (the row is read again, in
                    # case the end came before the stream was subscribed).
                    done, _ = await asyncio.wait({nxt}, timeout=1.0)
                    if nxt in done:
                        try:
                            nxt.result()
                            nxt = asyncio.ensure_future(stream.__anext__())
                        except (StopAsyncIteration, OSError, RuntimeError):
                            nxt = None
            finally:
                if nxt is not None:
                    nxt.cancel()
                    await asyncio.gather(nxt, return_exceptions=True)
                await stream.aclose()

        job = await asyncio.wait_for(follow(), timeout)
        if check and job["status"] != "succeeded":
            raise JobFailed(job)
        return job

    def _get_or_none(self, job_id: JobId) -> Optional[dict[str, Any]]:
        try:
            return self.get(job_id)
        except LookupError:
            return None

    async def events(self, *, job: Optional[JobId] = None, queue: Optional[str] = None,
                     kind: Optional[str] = None) -> AsyncIterator[Event]:
        """Status and progress events from ``GET /events`` (Server-Sent Events),
        filtered by job, queue and kind, until the daemon ends the stream."""
        parts = urllib.parse.urlsplit(self.admin_url)
        if parts.scheme != "http":
            raise ValueError("events() reads plain http:// admin listeners")
        query = urllib.parse.urlencode(
            {k: str(v) for k, v in (("job", job), ("queue", queue), ("kind", kind)) if v})
        path = (parts.path or "") + "/events" + (f"?{query}" if query else "")
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                         "Accept: text/event-stream\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            status_line = await reader.readline()
            if b" 200 " not in status_line:
                raise RuntimeError(f"GET {path}: {status_line.decode().strip()}")
            chunked = False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
            async for event in parse_sse(_body(reader, chunked)):
                yield event
        finally:
            writer.close()


async def _body(reader: asyncio.StreamReader, chunked: bool) -> AsyncIterator[bytes]:
    """The response body's bytes as they come, de-chunked."""
    if not chunked:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            yield data
    while True:
        size_line = await reader.readline()
        if not size_line:
            return
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return
        data = await reader.readexactly(size)
        await reader.readexactly(2)
        yield data
