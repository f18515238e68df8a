"""The live daemon against hostile or unlucky input (issue "Hostile input"): long gaps, off-grid and far-future
starts, REST down at start-up, closes held at a stop, and stops during a reload. Each ends with every bar the
daemon signals signalled once, with replay's probabilities."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from structlog.testing import capture_logs

from daemon.core.model import Model
from daemon.core.pipeline import Stage
from daemon.tools.fake_bybit import FakeBybit
from kernels.layout import WINDOW
from tests.support import BAR_MS, OPEN_INDEX, InProcessDaemon, replay_lines, sample_rows, wait_until

ROWS = sample_rows(("BTCUSDT",), OPEN_INDEX + WINDOW + 60)


@pytest.fixture
async def fake():
    """A fake with real BTCUSDT bars, bar OPEN_INDEX open, enough bars after it for an outage longer than the window."""
    async with FakeBybit(ROWS, "5", start_index=OPEN_INDEX) as f:
        yield f


def same_as_replay(daemon, artifact, symbol="BTCUSDT") -> None:
    """Each line was written once and equals replay's line for its bar."""
    lines = [x for x in daemon.lines if x["symbol"] == symbol]
    starts = [x["start"] for x in lines]
    assert len(starts) == len(set(starts)) and starts == sorted(starts)
    reference = replay_lines(artifact, symbol, ROWS[symbol])
    for x in lines:
        ref = reference[x["start"]]
        assert (x["probs"], x["signal"], x["model"]) == (ref["probs"], ref["signal"], ref["model"])


def close_frame(fake, start_ms: int) -> str:
    """The fake's close push for the open bar, with its start replaced."""
    frame = json.loads(fake.close_frame("BTCUSDT", fake.open_start_ms - BAR_MS))
    frame["data"][0]["start"] = start_ms
    frame["data"][0]["end"] = start_ms + BAR_MS - 1
    return json.dumps(frame)


async def test_outage_longer_than_the_window_rewarms_in_one_request(fake, random_artifact):
    """After an outage longer than the feature window one REST request re-warms the symbol; no bar-by-bar backfill."""
    async with InProcessDaemon(fake, random_artifact) as d:
        first = fake.open_start_ms
        await fake.step(1)
        await d.wait_for_start("BTCUSDT", first)
        fake.stall()
        await fake.step(WINDOW + 10)
        requests_before = len(fake.rest_requests)
        with capture_logs() as logs:
            await d.ready()
            resumed = fake.open_start_ms
            await fake.step(2)
            await d.wait_for_start("BTCUSDT", resumed + BAR_MS)
        assert len(fake.rest_requests) - requests_before == 1
        assert [e["bars"] for e in logs if e["event"] == "features_reset"] == [WINDOW + 10]
        assert not [e for e in logs if e["event"] in ("gap_backfilled", "gap_unfilled")]
        assert d.starts("BTCUSDT") == [first, resumed, resumed + BAR_MS]
        assert not any(x["backfill"] for x in d.lines)
        same_as_replay(d, random_artifact)


async def test_off_grid_close_asks_rest_for_nothing(fake, random_artifact):
    """A close 1 ms off the interval grid is skipped without a REST call; the bars around it are served once."""
    async with InProcessDaemon(fake, random_artifact) as d:
        first = fake.open_start_ms
        await fake.step(1)
        await d.wait_for_start("BTCUSDT", first)
        requests_before = len(fake.rest_requests)
        malformed_before = d.service.feed.stats.malformed
        await fake.send_raw([close_frame(fake, fake.open_start_ms + 1)] * 50)
        await fake.step(2)
        await d.wait_for_start("BTCUSDT", first + 2 * BAR_MS)
        assert len(fake.rest_requests) == requests_before
        skipped = d.service.feed.stats.malformed - malformed_before + d.service.pipelines["BTCUSDT"].rejected
        assert skipped == 50
        assert d.starts("BTCUSDT") == [first, first + BAR_MS, first + 2 * BAR_MS]
        same_as_replay(d, random_artifact)


async def test_far_future_start_costs_at_most_one_request(fake, random_artifact):
    """A close whose start is 2**62 ms is skipped at the cost of at most one REST request, and serving goes on."""
    far = (2**62 // BAR_MS) * BAR_MS
    async with InProcessDaemon(fake, random_artifact) as d:
        first = fake.open_start_ms
        await fake.step(1)
        await d.wait_for_start("BTCUSDT", first)
        requests_before = len(fake.rest_requests)
        await fake.send_raw([close_frame(fake, far)])
        await wait_until(lambda: d.service.pipelines["BTCUSDT"].fetch is None
                         and d.service.pipelines["BTCUSDT"].stage is Stage.SERVING, what="the far close settled")
        await fake.step(2)
        await d.wait_for_start("BTCUSDT", first + 2 * BAR_MS)
        assert len(fake.rest_requests) - requests_before <= 1
        assert d.starts("BTCUSDT") == [first, first + BAR_MS, first + 2 * BAR_MS]
        assert far not in d.starts("BTCUSDT")
        same_as_replay(d, random_artifact)


async def test_rest_down_at_start_retries_the_warmup(fake, random_artifact):
    """REST failing every attempt of the first warm-up is asked again with backoff; the first close is signalled."""
    fake.faults.rest_errors[:] = [500] * 9  # more than the 4 attempts one request makes
    with capture_logs() as logs:
        async with InProcessDaemon(fake, random_artifact) as d:
            first = fake.open_start_ms
            await fake.step(1)
            await d.wait_for_start("BTCUSDT", first)
    events = [e["event"] for e in logs]
    assert events.count("fetch_failed") == 2 and events.count("fetch_retry") == 2
    assert events.index("fetch_retry") < events.index("warmup_loaded")
    assert [e["attempt"] for e in logs if e["event"] == "fetch_retry"] == [1, 2]
    assert next(e for e in logs if e["event"] == "warmup_loaded")["warm"] is True
    assert not fake.faults.rest_errors and d.starts("BTCUSDT") == [first]
    same_as_replay(d, random_artifact)


async def test_held_close_is_released_with_its_lateness(fake, random_artifact):
    """A close held while REST retries the gap before it is signalled after the backfill, with late_ms."""
    async with InProcessDaemon(fake, random_artifact) as d:
        first = fake.open_start_ms
        await fake.step(1)
        fake.lose_next_close()
        fake.faults.rest_errors[:] = [500, 500]
        await fake.step(2)
        await d.wait_for_start("BTCUSDT", first + 2 * BAR_MS)
    by_start = {x["start"]: x for x in d.lines}
    assert by_start[first + BAR_MS]["backfill"] is True and "late_ms" not in by_start[first + BAR_MS]
    assert by_start[first + 2 * BAR_MS]["backfill"] is False and by_start[first + 2 * BAR_MS]["late_ms"] >= 0
    assert "late_ms" not in by_start[first]
    same_as_replay(d, random_artifact)


async def test_closes_held_at_stop_are_logged_by_count(fake, random_artifact):
    """Stopping while a gap fetch waits out an IP ban logs how many closes were never signalled."""
    with capture_logs() as logs:
        async with InProcessDaemon(fake, random_artifact) as d:
            first = fake.open_start_ms
            await fake.step(1)
            await d.wait_for_start("BTCUSDT", first)
            fake.lose_next_close()
            fake.faults.rest_errors[:] = [403]  # the client then waits ten minutes before asking again
            await fake.step(3)
            await wait_until(lambda: d.service.pipelines["BTCUSDT"].held == 2, what="two held closes")
    dropped = [e for e in logs if e["event"] == "closes_dropped_at_stop"]
    assert [(e["closes"], e["by_symbol"]) for e in dropped] == [(2, {"BTCUSDT": 2})]
    assert d.starts("BTCUSDT") == [first]


async def test_stop_during_a_reload_does_not_wait_for_it(fake, random_artifact):
    """SIGTERM's stop while an artifact load hangs ends the service at once; the old model served until then."""
    release = threading.Event()
    entered = threading.Event()

    def slow_load(path):
        entered.set()
        release.wait(30)
        return Model.load(path)

    try:
        with capture_logs() as logs:
            d = InProcessDaemon(fake, random_artifact)
            d.service._load_model = slow_load
            async with d:
                d.service.request_reload()
                await wait_until(entered.is_set, what="the load to start")
                await fake.step(1)
                await d.wait_for_start("BTCUSDT", fake.open_start_ms - BAR_MS)
                d.service.stop()
                await asyncio.wait_for(asyncio.shield(d.task), 5)
        assert not release.is_set() and d.service.reloads == 0
        assert "model_reload_cancelled" in [e["event"] for e in logs]
    finally:
        release.set()
