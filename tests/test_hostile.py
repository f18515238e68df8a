"""Hostile kline pushes end to end: a far-future or off-grid close costs one malformed frame, nothing more."""

from __future__ import annotations

import pytest

from daemon.tools.fake_bybit import FakeBybit
from tests.daemon_support import OPEN_INDEX, InProcessDaemon
from tests.test_daemon import BAR_MS, ROWS, SYMBOLS, check_exactly_once


@pytest.fixture
async def fake():
    """A fake with real BTCUSDT and ETHUSDT bars, bar OPEN_INDEX open."""
    async with FakeBybit(ROWS, "5", start_index=OPEN_INDEX) as f:
        yield f


@pytest.mark.parametrize("switch", ["far_future_every", "off_grid_every"])
async def test_far_future_and_off_grid_closes_are_malformed_frames(fake, random_artifact, switch):
    """An extra close far in the future or 1 ms off the grid, before every real close, is counted as malformed
    and skipped: every real bar is signalled once, equal to replay, with no gap fill and no REST call."""
    async with InProcessDaemon(fake, random_artifact, SYMBOLS) as d:
        setattr(fake.faults, switch, 1)
        rest_before = len(fake.rest_requests)
        malformed_before = d.service.feed.stats.malformed
        first = fake.open_start_ms
        await fake.step(5)
        assert await check_exactly_once(d, random_artifact, first, first + 4 * BAR_MS) == {s: [] for s in SYMBOLS}
        assert fake.hostile_sent == 5 * len(SYMBOLS)
        assert d.service.feed.stats.malformed - malformed_before == fake.hostile_sent
        assert len(fake.rest_requests) == rest_before
        assert all(p.fetch is None and p.duplicates == 0 for p in d.service.pipelines.values())
