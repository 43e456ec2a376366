"""arq 0.28's own client against `jobrunner run` with `[arq] queues = ["arq:queue"]`
and no arq worker: enqueue, status, result and abort behave as with arq's worker."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any, Awaitable, Callable

import pytest
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job, JobStatus, SerializationError
from arq.worker import JobExecutionFailed


def run(stack: Any, test: Callable[[ArqRedis], Awaitable[None]], **pool_args: Any) -> None:
    async def main() -> None:
        pool = await create_pool(RedisSettings(host="127.0.0.1", port=stack.redis_port),
                                 **pool_args)
        try:
            await test(pool)
        finally:
            await pool.aclose()

    asyncio.run(main())


async def status_becomes(job: Job, status: JobStatus, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (now := await job.status()) != status:
        assert time.monotonic() < deadline, f"{job} is {now}, never {status}"
        await asyncio.sleep(0.02)


def test_keyword_arguments_form_the_payload_and_the_result_comes_back(stack: Any) -> None:
    async def test(pool: ArqRedis) -> None:
        job = await pool.enqueue_job("noop", x=1, items=[1, "two"], when=None)
        assert await job.result(timeout=10) == {"x": 1, "items": [1, "two"], "when": None}
        assert await job.status() == JobStatus.complete
        info = await job.result_info()
        assert info.success and info.function == "noop" and info.kwargs["x"] == 1

    run(stack, test)


def test_positional_arguments_are_named_by_config_or_a_lone_dict_is_the_payload(stack: Any) -> None:
    async def test(pool: ArqRedis) -> None:
        named = await pool.enqueue_job("generate_campaign", 42, note="launch")
        lone = await pool.enqueue_job("noop", {"a": [1, 2]})
        assert await named.result(timeout=10) == {"campaign_id": 42, "note": "launch"}
        assert await lone.result(timeout=10) == {"a": [1, 2]}

    run(stack, test)


def test_a_deferred_job_says_deferred_then_runs_when_due(stack: Any) -> None:
    async def test(pool: ArqRedis) -> None:
        start = time.monotonic()
        job = await pool.enqueue_job("noop", _defer_by=1.0, x=2)
        assert await job.status() == JobStatus.deferred
        assert await job.result(timeout=10) == {"x": 2}
        assert time.monotonic() - start >= 1.0

    run(stack, test)


def test_a_job_id_given_by_the_producer_is_kept_and_not_enqueued_twice(stack: Any) -> None:
    async def test(pool: ArqRedis) -> None:
        job = await pool.enqueue_job("noop", _job_id="order-7", x=3)
        assert job is not None and job.job_id == "order-7"
        assert await job.result(timeout=10) == {"x": 3}
        # As with arq's worker: the kept result blocks a second job of that id.
        assert await pool.enqueue_job("noop", _job_id="order-7", x=4) is None

    run(stack, test)


def test_a_job_that_ends_dead_raises_from_result(stack: Any) -> None:
    async def test(pool: ArqRedis) -> None:
        job = await pool.enqueue_job("fail", permanent=True)
        with pytest.raises(JobExecutionFailed, match="failed permanently as asked"):
            await job.result(timeout=10)
        assert await job.status() == JobStatus.complete
        retried = await pool.enqueue_job("fail", times=1)
        assert await retried.result(timeout=10) == {"failed_attempts": 1}
        assert (await retried.result_info()).job_try == 2

    run(stack, test)


def test_a_running_job_is_in_progress_and_abort_cancels_it(stack: Any) -> None:
    async def test(pool: ArqRedis) -> None:
        job = await pool.enqueue_job("sleep", ms=30_000)
        await status_becomes(job, JobStatus.in_progress)
        assert await job.abort(timeout=10) is True
        with pytest.raises(asyncio.CancelledError):
            await job.result(timeout=5)
        # A deferred job aborted before it started.
        later = await pool.enqueue_job("sleep", ms=30_000, _defer_by=60)
        assert await later.abort(timeout=10) is True

    run(stack, test)


class Evil:
    def __reduce__(self) -> Any:
        return (os.system, ("touch /tmp/jobrunner-pickle-ran",))


def test_a_pickle_with_a_forbidden_global_ends_dead_naming_it_and_runs_nothing(stack: Any) -> None:
    marker = "/tmp/jobrunner-pickle-ran"
    if os.path.exists(marker):
        os.remove(marker)

    async def test(pool: ArqRedis) -> None:
        job = await pool.enqueue_job("noop", Evil())
        with pytest.raises(JobExecutionFailed, match=r"pickle global posix\.system is not allowed"):
            await job.result(timeout=10)

    run(stack, test)
    assert not os.path.exists(marker)


def test_json_serializer_producers_work_too(stack: Any) -> None:
    async def test(pool: ArqRedis) -> None:
        job = await pool.enqueue_job("noop", x=[1, {"y": True}])
        assert await job.result(timeout=10) == {"x": [1, {"y": True}]}
        failing = await pool.enqueue_job("fail", permanent=True)
        with pytest.raises(SerializationError, match="failed permanently as asked"):
            await failing.result(timeout=10)

    run(stack, test, job_serializer=lambda d: json.dumps(d).encode(), job_deserializer=json.loads)
