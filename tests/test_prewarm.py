"""The cache warmer: it predicts bursts of closes from the last ones, and it never changes what is served."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from daemon.tools.fake_bybit import FakeBybit
from daemon.aio.prewarm import QUIET_NS, Prewarm
from tests.daemon_support import OPEN_INDEX, InProcessDaemon, sample_rows, wait_until
from tests.test_daemon import BAR_MS, check_exactly_once

SYMBOLS = ("BTCUSDT", "ETHUSDT")
S = 1_000_000_000


@pytest.fixture
async def fake():
    async with FakeBybit(sample_rows(SYMBOLS, OPEN_INDEX + 50), "5", start_index=OPEN_INDEX) as f:
        yield f


def test_bursts_and_the_next_due_time():
    """Frames within QUIET_NS of the previous close belong to its burst; the next is due one median period on."""
    warm = Prewarm(SimpleNamespace(feed=SimpleNamespace(last_close_message=None)), max_wait_s=1.0)
    due = []
    for start in (10 * S, 11 * S, 12 * S + S // 100, 13 * S):  # the third burst is 10 ms late
        warm.on_close_frame(start)
        warm.on_close_frame(start + QUIET_NS // 2)  # the burst's second frame
        assert warm.starts[-1] == start
        due.append(warm.next_due_ns(start))
    # Periods 1 s, 1.01 s, then 1.01 s, 0.99 s: the median keeps the 10 ms of jitter out of the grid.
    assert due == [None, None, 12 * S + S // 100 + S + S // 100, 14 * S]
    assert list(warm.starts) == [10 * S, 11 * S, 12 * S + S // 100, 13 * S]
    assert warm.next_due_ns(14 * S + S // 2) == 14 * S  # late, but still within its wait
    # The bursts stopped (feed down): the next slot on the same grid, not a stale time in the past.
    assert warm.next_due_ns(20 * S + S // 2) == 20 * S
    assert warm.next_due_ns(21 * S + S // 2) == 21 * S


async def test_warming_never_changes_what_is_served(fake, random_artifact):
    """With bursts at a steady pace the warmer runs between them; every line still equals replay, once."""
    async with InProcessDaemon(fake, random_artifact, SYMBOLS) as d:
        warm = d.service.prewarm
        first = fake.open_start_ms
        for _ in range(6):
            await fake.step(1)
            await asyncio.sleep(0.15)
        await wait_until(lambda: warm.warmups > 0, what="a warm-up before an expected burst")
        served = {s: p.state.array.copy() for s, p in d.service.pipelines.items()}
        counts = (d.service.writer.written, len(d.sink.buffer), [p.signals for p in d.service.pipelines.values()])
        for _ in range(20):
            warm.warm()
        for s, p in d.service.pipelines.items():
            np.testing.assert_array_equal(p.state.array, served[s])
        assert counts == (d.service.writer.written, len(d.sink.buffer),
                          [p.signals for p in d.service.pipelines.values()])
        await fake.step(2)
        await check_exactly_once(d, random_artifact, first, first + 7 * BAR_MS)
        assert d.service.writer.latency.total == 16


async def test_prewarm_can_be_switched_off(fake, random_artifact):
    """``[feed] prewarm = false``: no warmer, and the daemon serves as before."""
    async with InProcessDaemon(fake, random_artifact, SYMBOLS, feed={"prewarm": False}) as d:
        assert d.service.prewarm is None
        first = fake.open_start_ms
        await fake.step(2)
        await check_exactly_once(d, random_artifact, first, first + BAR_MS)


async def test_a_failing_warm_up_stops_only_the_warming(fake, random_artifact):
    """An exception in the warmer is logged once as prewarm_disabled; every candle is still served once."""
    from structlog.testing import capture_logs

    def broken() -> None:
        raise RuntimeError("boom")

    with capture_logs() as logs:
        async with InProcessDaemon(fake, random_artifact, SYMBOLS) as d:
            d.service.prewarm.warm = broken
            first = fake.open_start_ms
            for _ in range(6):
                await fake.step(1)
                await asyncio.sleep(0.15)
            await wait_until(lambda: any(e["event"] == "prewarm_disabled" for e in logs), what="prewarm_disabled")
            await fake.step(2)
            await check_exactly_once(d, random_artifact, first, first + 7 * BAR_MS)
    disabled = [e for e in logs if e["event"] == "prewarm_disabled"]
    assert len(disabled) == 1 and "boom" in disabled[0]["error"]
