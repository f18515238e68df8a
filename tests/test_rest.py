"""The REST kline client against the fake Bybit: open candle dropped, paging, retries, giving up."""

from __future__ import annotations

import random

import aiohttp
import pytest
from structlog.testing import capture_logs

from daemon.aio.rest import RestClient, RestError
from daemon.core.config import BackoffConfig
from daemon.tools.fake_bybit import FakeBybit
from daemon.tools.replay import row_candle
from tests.support import sample_rows

ROWS = sample_rows(("BTCUSDT",), 120)
FAST = BackoffConfig(initial_s=0.01, max_s=0.5, factor=2.0, jitter=0.5)


@pytest.fixture
async def fake():
    """A fake with 120 real BTCUSDT bars, bar 100 open."""
    async with FakeBybit(ROWS, "5", start_index=100) as f:
        yield f


@pytest.fixture
async def client(fake):
    """A REST client on the fake that records its sleeps instead of waiting them out."""
    async with aiohttp.ClientSession() as session:
        c = RestClient(fake.rest_url, "linear", session, backoff=FAST, max_attempts=4, rng=random.Random(0))
        c.slept = []

        async def sleep(s):
            c.slept.append(s)

        c._sleep = sleep
        yield c


def _expected(lo: int, hi: int):
    return [row_candle(r, "BTCUSDT", "5") for r in ROWS["BTCUSDT"][lo:hi]]


async def test_latest_closed_candles_drop_the_open_one(client, fake):
    """count=N returns the N latest closed bars oldest first; the still-open bar is never among them."""
    got = await client.closed_klines("BTCUSDT", "5", count=25)
    assert got == _expected(75, 100)
    assert fake.rest_requests[0]["limit"] == "26"


async def test_range_pages_backwards(client, fake):
    """With a small page limit a range is fetched page by page backwards, each bar once, in order."""
    client.page_limit = 7
    s = fake.starts
    got = await client.closed_klines("BTCUSDT", "5", start_ms=s[40], end_ms=s[69])
    assert got == _expected(40, 70)
    assert len(fake.rest_requests) == 5
    assert all(int(q["end"]) < s[70] for q in fake.rest_requests)


async def test_range_up_to_now_and_count_beyond_one_page(client, fake):
    """An open-ended range stops at the last closed bar; a count larger than a page pages backwards."""
    got = await client.closed_klines("BTCUSDT", "5", start_ms=fake.starts[95])
    assert got == _expected(95, 100)
    client.page_limit = 10
    assert await client.closed_klines("BTCUSDT", "5", count=33) == _expected(67, 100)


async def test_429_then_500_then_good_data(client, fake):
    """429 (waiting for the reset timestamp) and 500 are retried with backoff, then the data is returned."""
    fake.faults.rest_errors[:] = [429, 500, ("retcode", 10016)]
    got = await client.closed_klines("BTCUSDT", "5", count=3)
    assert got == _expected(97, 100)
    assert len(fake.rest_requests) == 4 and client.retries == 3
    assert client.slept[0] >= 0.05  # the reset timestamp was 50 ms ahead of the server's time


async def test_parameter_error_is_not_retried(client):
    """retCode 10001 (bad symbol) raises RestError at once."""
    with pytest.raises(RestError, match="10001"):
        await client.closed_klines("NOPEUSDT", "5", count=3)
    assert client.retries == 0


async def test_gives_up_after_max_attempts(client, fake):
    """A server that keeps failing makes the call raise RestError after max_attempts, naming the error."""
    fake.faults.rest_errors[:] = [503] * 10
    with pytest.raises(RestError, match="gave up after 4 attempts: HTTP 503"):
        await client.closed_klines("BTCUSDT", "5", count=3)
    assert len(client.slept) == 3


async def test_unreachable_host_is_retried_then_reported():
    """Connection refused is a retryable error that ends in RestError."""
    async with aiohttp.ClientSession() as session:
        c = RestClient("http://127.0.0.1:9", "linear", session, backoff=FAST, max_attempts=2)
        with pytest.raises(RestError, match="ClientConnectorError"):
            await c.closed_klines("BTCUSDT", "5", count=3)


async def test_concurrent_fetches_share_a_bounded_pool(fake):
    """Many symbols catching up at once all get their bars through a pool of two request slots."""
    import asyncio

    async with aiohttp.ClientSession() as session:
        c = RestClient(fake.rest_url, "linear", session, backoff=FAST, max_concurrent=2)
        results = await asyncio.gather(*(c.closed_klines("BTCUSDT", "5", start_ms=fake.starts[90 + i % 10])
                                         for i in range(20)))
    assert [len(r) for r in results] == [10 - i % 10 for i in range(20)]
    assert c._slots._value == 2


@pytest.mark.parametrize("declared", [True, False])
async def test_a_400_mb_body_is_abandoned_at_the_limit(client, fake, declared):
    """A 400 MB answer (with or without a Content-Length) is dropped at the size limit and retried; the
    client never holds more than the limit and the server is never read to the end."""
    import tracemalloc

    from daemon.aio.rest import MAX_BODY_BYTES

    fake.faults.rest_errors[:] = [("huge", 400_000_000, declared)]
    tracemalloc.start()
    try:
        got = await client.closed_klines("BTCUSDT", "5", count=3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == _expected(97, 100) and client.retries == 1
    assert peak < 3 * MAX_BODY_BYTES
    assert fake.huge_bytes_sent < 100_000_000


@pytest.mark.parametrize("fault", ["off_grid", "far_future"])
async def test_a_row_off_the_grid_or_in_the_future_is_a_malformed_page(client, fake, fault):
    """A page whose newest row starts 1 ms off the grid or far in the future is refused and asked again."""
    fake.faults.rest_errors[:] = [(fault,)]
    with capture_logs() as logs:
        got = await client.closed_klines("BTCUSDT", "5", count=3)
    assert got == _expected(97, 100) and client.retries == 1
    (retry,) = [e for e in logs if e["event"] == "rest_retry"]
    assert ("off the 300000 ms grid" if fault == "off_grid" else "after the exchange's clock") in retry["error"]


def test_rest_fault_switches_parse():
    """The fake's --rest-errors accepts statuses, huge bodies and tampered rows, and names a bad token."""
    import argparse

    from daemon.tools.fake_bybit import parse_rest_faults

    assert parse_rest_faults("429, huge:400000000,huge-chunked:5,off-grid,far-future") == [
        429, ("huge", 400_000_000, True), ("huge", 5, False), ("off_grid",), ("far_future",)]
    with pytest.raises(argparse.ArgumentTypeError, match="'huge:x'"):
        parse_rest_faults("huge:x")
