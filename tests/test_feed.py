"""The WebSocket feed against the fake Bybit: acks, refused topics, keepalive, reconnects, malformed frames."""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

from daemon.aio.feed import Feed, default_retryable
from daemon.core.config import BackoffConfig
from daemon.tools.fake_bybit import GARBAGE_FRAMES, FakeBybit
from tests.support import sample_rows, wait_until

FAST = BackoffConfig(initial_s=0.01, max_s=0.05, factor=2.0, jitter=0.5)
TOPICS = ("kline.5.BTCUSDT", "kline.5.ETHUSDT")


@pytest.fixture
async def fake():
    """A fake serving 80 real bars of two symbols, bar 20 open."""
    async with FakeBybit(sample_rows(("BTCUSDT", "ETHUSDT"), 80), "5", start_index=20) as f:
        yield f


class Running:
    """A feed running as a task, recording the closed starts it delivers per symbol."""

    def __init__(self, url, topics=TOPICS, **kw):
        self.closes: dict[str, list[int]] = {}
        self.subscribed = 0
        kw = {"ping_interval_s": 0.05, "pong_timeout_s": 0.3, "ack_timeout_s": 0.5, "backoff": FAST,
              "rng": random.Random(1), **kw}
        self.feed = Feed(url, topics, self._on_kline, on_subscribed=self._on_subscribed, **kw)

    def _on_kline(self, frame, recv_ns):
        assert recv_ns > 0
        for c in frame.closed:
            self.closes.setdefault(c.symbol, []).append(c.start_ms)

    def _on_subscribed(self):
        self.subscribed += 1

    async def __aenter__(self):
        self.task = asyncio.create_task(self.feed.run())
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def test_subscribes_in_chunks_and_delivers_closes(fake):
    """Topics go out in chunks with req_ids, both acks are checked, and each close is delivered."""
    async with Running(fake.ws_url, subscribe_chunk=1) as r:
        await wait_until(lambda: r.subscribed >= 1, what="subscription")
        assert fake.subscribe_requests == [["kline.5.BTCUSDT"], ["kline.5.ETHUSDT"]]
        s0 = fake.open_start_ms
        await fake.step(3)
        await wait_until(lambda: len(r.closes.get("ETHUSDT", [])) == 3, what="three closes")
        assert r.closes["BTCUSDT"] == [s0, s0 + 300_000, s0 + 600_000]
        assert r.feed.stats.malformed == 0 and r.feed.stats.refused_topics == set()


async def test_refused_topic_is_reported_and_the_others_kept(fake):
    """A refused topic inside a chunk is reported; the other topics of the chunk are re-requested and flow."""
    fake.faults.refused_symbols.add("ETHUSDT")
    topics = ("kline.5.ETHUSDT", "kline.5.BTCUSDT", "kline.5.NOPE")
    async with Running(fake.ws_url, topics=topics, subscribe_chunk=3) as r:
        await wait_until(lambda: r.subscribed >= 1, what="subscription")
        assert r.feed.stats.refused_topics == {"kline.5.ETHUSDT", "kline.5.NOPE"}
        await fake.step()
        await wait_until(lambda: "BTCUSDT" in r.closes, what="BTC close")
        assert fake.subscribed("kline.5.BTCUSDT") and "ETHUSDT" not in r.closes


async def test_garbage_is_counted_and_skipped(fake):
    """Garbage frames between bars are counted as malformed and every close still arrives once."""
    fake.faults.garbage_per_bar = len(GARBAGE_FRAMES)
    async with Running(fake.ws_url) as r:
        await wait_until(lambda: r.subscribed >= 1, what="subscription")
        s0 = fake.open_start_ms
        await fake.step(2)
        await wait_until(lambda: len(r.closes.get("BTCUSDT", [])) == 2, what="two closes")
        await wait_until(lambda: r.feed.stats.malformed == 2 * len(GARBAGE_FRAMES), what="malformed count")
        assert r.closes["BTCUSDT"] == [s0, s0 + 300_000]


async def test_half_open_stall_is_noticed_and_resubscribed(fake):
    """With no pong the connection is declared dead, a new one is made and every topic resubscribed."""
    async with Running(fake.ws_url) as r:
        await wait_until(lambda: r.subscribed >= 1, what="first subscription")
        fake.stall()
        await wait_until(lambda: r.subscribed >= 2, what="resubscription after the stall")
        assert r.feed.stats.connects >= 2 and fake.subscribe_requests[-1] == list(TOPICS)
        s0 = fake.open_start_ms
        await fake.step()
        await wait_until(lambda: r.closes.get("BTCUSDT") == [s0], what="close on the new connection")


async def test_drop_with_refusals_reconnects_with_backoff(fake):
    """After a server drop and refused attempts the feed keeps retrying and resubscribes."""
    async with Running(fake.ws_url) as r:
        await wait_until(lambda: r.subscribed >= 1, what="first subscription")
        await fake.drop(refuse_next=3)
        await wait_until(lambda: r.subscribed >= 2, what="resubscription")
        assert fake.connections_refused == 3 and r.feed.stats.disconnects >= 4


async def test_unacked_subscription_kills_the_connection(fake):
    """A subscription never acknowledged counts as a dead connection and is retried on a new one."""
    fake.faults.stall_new_connections = 1
    async with Running(fake.ws_url, ping_interval_s=30) as r:
        await wait_until(lambda: r.subscribed >= 1, what="subscription on a second connection")
        assert r.feed.stats.connects == 2 and r.feed.stats.pings_sent == 0


async def test_cancel_leaves_no_task_behind(fake):
    """Cancelling the feed cancels its keepalive and subscribe tasks with the connection."""
    async with Running(fake.ws_url) as r:
        await wait_until(lambda: r.subscribed >= 1, what="subscription")
    await wait_until(lambda: not {t.get_name() for t in asyncio.all_tasks()} & {"feed-keepalive", "feed-subscribe"},
                     5, "the feed's tasks to end")


async def test_bad_url_is_not_retried():
    """A malformed URL is a configuration error: run() raises instead of retrying forever."""
    feed = Feed("ws://[bad", TOPICS, lambda f, n: None, backoff=FAST)
    with pytest.raises(Exception) as info:
        await asyncio.wait_for(feed.run(), 5)
    assert not default_retryable(info.value)


def test_backoff_is_capped_and_jittered():
    """Delays grow by the factor, never exceed max_s, and jitter keeps them within [(1-j)d, d]."""
    cfg = BackoffConfig(initial_s=1, max_s=8, factor=2, jitter=0.5)
    gen = cfg.delays(random.Random(3))
    delays = [next(gen) for _ in range(8)]
    nominal = [1, 2, 4, 8, 8, 8, 8, 8]
    assert all(0.5 * d <= x <= d for x, d in zip(delays, nominal, strict=True))
    assert len(set(delays)) == len(delays)


async def test_callback_failure_is_not_a_reconnect(fake):
    """An exception in on_kline (here a broken pipe, an OSError) ends run() instead of looking like a drop."""
    from daemon.aio.feed import CallbackError

    def broken(frame, recv_ns):
        raise BrokenPipeError("stdout closed")

    feed = Feed(fake.ws_url, TOPICS, broken, backoff=FAST, ping_interval_s=1)
    task = asyncio.create_task(feed.run())
    await wait_until(lambda: fake.subscribed("kline.5.BTCUSDT"), what="subscription")
    await fake.step()
    with pytest.raises(CallbackError, match="stdout closed"):
        await asyncio.wait_for(task, 10)
    assert feed.stats.connects == 1
