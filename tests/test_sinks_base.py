"""The sink machinery itself: the bounded queue, and a client library that never finishes closing."""

from __future__ import annotations

import asyncio

from daemon.aio.sinks import SinkSet
from daemon.aio.sinks.base import Sink
from daemon.core.config import BackoffConfig
from daemon.core.sinks_config import RedisSinkConfig
from tests.support import wait_until


class StuckClose(Sink):
    """Delivers into a list; its close() never returns, like a client library stuck on a dead socket."""

    kind = "test"

    def __init__(self, **kw) -> None:
        super().__init__(RedisSinkConfig(kind="redis", name="stuck", queue_size=3, timeout_s=0.2), **kw)
        self.delivered: list[bytes] = []
        self.gate = asyncio.Event()

    async def connect(self) -> None:
        return None

    async def send(self, lines: list[bytes]) -> int:
        await self.gate.wait()
        self.delivered += lines
        return len(lines)

    async def close(self) -> None:
        await asyncio.Event().wait()


async def test_full_queue_drops_new_lines_and_counts():
    """While the far end is slow, the queue takes queue_size lines, drops the rest, then delivers in order."""
    sink = StuckClose(backoff=BackoffConfig(initial_s=0.01, max_s=0.01))
    task = asyncio.create_task(SinkSet([sink]).run())
    await wait_until(lambda: sink.up, what="connected")
    for i in range(5):
        sink.offer(b"line %d\n" % i)
    assert (sink.offered, sink.dropped, sink.queued) == (5, 2, 3)
    sink.gate.set()
    await wait_until(lambda: sink.sent == 3, what="the queued lines sent")
    assert sink.delivered == [b"line 0\n", b"line 1\n", b"line 2\n"]
    task.cancel()
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)


async def test_a_close_that_never_returns_does_not_hold_up_the_stop():
    """Cancelling the sinks finishes within the sink's timeout even if its client never closes."""
    sink = StuckClose()
    task = asyncio.create_task(SinkSet([sink]).run())
    await wait_until(lambda: sink.up, what="connected")
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done == {task} and task.cancelled()
