"""The Redis Streams sink against a real redis-server: every stdout line once and in order, and an outage survived."""

from __future__ import annotations

import json

import pytest
from redis.asyncio import Redis

from tests.support import (
    SINK_STREAM,
    SINK_SYMBOLS,
    SinkDaemon,
    metric_value,
    redis_server,
    redis_sink_table,
    redis_stream_lines,
    wait_for,
)


async def test_every_line_once_in_order(redis, fake, random_artifact):
    """Each stdout line becomes one stream entry whose ``line`` field is that line, in stdout order."""
    async with SinkDaemon(fake, random_artifact, SINK_SYMBOLS, sinks=[redis_sink_table(redis.port)]) as d:
        sink = d.sink_named("redis")
        await fake.step(6)
        await wait_for(lambda: len(d.raw_lines) == 12 and sink.sent == 12, "12 lines sent")
        assert await redis_stream_lines(redis.port) == d.raw_lines
        assert json.loads(d.raw_lines[0])["symbol"] in SINK_SYMBOLS
        text = d.service.supervision.metrics.render().decode()
        assert metric_value(text, "kdsignal_sink_sent_total", sink="redis", kind="redis") == 12
        assert metric_value(text, "kdsignal_sink_dropped_total", sink="redis", kind="redis") == 0
        assert metric_value(text, "kdsignal_sink_up", sink="redis", kind="redis") == 1
        d.service.supervision.metrics.set_feed_connected(True)
        _ok, body = d.service.supervision.metrics.health()
        assert body["sinks"]["redis"]["up"] is True and body["sinks"]["redis"]["sent"] == 12
        assert not [p for p in body["problems"] if "sink" in p]


async def test_maxlen_trims_approximately(redis, fake, random_artifact):
    """``maxlen`` keeps the stream near that length (MAXLEN ~), newest entries kept."""
    async with SinkDaemon(fake, random_artifact, SINK_SYMBOLS, sinks=[redis_sink_table(redis.port, maxlen=1)]) as d:
        sink = d.sink_named("redis")
        await fake.step(30)
        await wait_for(lambda: len(d.raw_lines) == 60 and sink.sent == 60, "60 lines sent")
        kept = await redis_stream_lines(redis.port)
        # Approximate trimming removes whole radix-tree nodes (100 entries by default), never the newest.
        assert 0 < len(kept) <= 60 and kept == d.raw_lines[-len(kept):]


async def test_server_killed_and_restarted(redis, fake, random_artifact):
    """While Redis is dead stdout goes on and a full queue drops; after a restart the sink resumes by itself."""
    table = redis_sink_table(redis.port, queue_size=3, timeout_s=1.0)
    async with SinkDaemon(fake, random_artifact, SINK_SYMBOLS, sinks=[table]) as d:
        sink = d.sink_named("redis")
        for n in (2, 4):  # a bar at a time: a burst of 2 lines must not meet a full queue of 3 yet
            await fake.step(1)
            await wait_for(lambda n=n: sink.sent == n, f"{n} lines sent before the crash")
        assert await redis_stream_lines(redis.port) == d.raw_lines
        redis.kill()
        await fake.step(5)  # 10 lines while Redis is down: 3 queued, 7 dropped
        await wait_for(lambda: len(d.raw_lines) == 14, "stdout goes on without Redis")
        await wait_for(lambda: not sink.up and sink.errors >= 1 and sink.dropped == 7, "the sink noticing, 7 dropped")
        assert sink.dropped == 7 and sink.queued == 3
        d.service.supervision.metrics.set_feed_connected(True)
        ok, body = d.service.supervision.metrics.health()
        assert not ok and any(p.startswith("sink redis (redis) down") for p in body["problems"])
        redis.start()  # same port, empty: this redis keeps nothing on disk
        await wait_for(lambda: sink.up and sink.queued == 0, "reconnect and the queued lines sent")
        for n in (9, 11, 13):
            await fake.step(1)
            await wait_for(lambda n=n: sink.sent == n, f"{n} lines sent after the restart")
        assert len(d.raw_lines) == 20
        after = await redis_stream_lines(redis.port)
        # The 3 queued during the outage (the first 3 of it), then every line after the restart, in order.
        assert after == d.raw_lines[4:7] + d.raw_lines[14:]
        assert sink.connects == 2
        text = d.service.supervision.metrics.render().decode()
        assert metric_value(text, "kdsignal_sink_dropped_total", sink="redis", kind="redis") == 7
        assert metric_value(text, "kdsignal_sink_errors_total", sink="redis", kind="redis") >= 1


async def test_password_from_environment(tmp_path, fake, random_artifact):
    """A Redis that requires a password is reached with the one named by ``password_env``."""
    server = redis_server(tmp_path)
    server.argv += ["--requirepass", "s3cret-pw"]
    server.start()
    try:
        table = redis_sink_table(server.port, password_env="KDSIGNAL_TEST_REDIS_PW")
        async with SinkDaemon(fake, random_artifact, ("BTCUSDT",), sinks=[table],
                              environ={"KDSIGNAL_TEST_REDIS_PW": "s3cret-pw"}) as d:
            sink = d.sink_named("redis")
            await fake.step(2)
            await wait_for(lambda: sink.sent == 2, "2 lines sent")
            client = Redis(host="127.0.0.1", port=server.port, password="s3cret-pw")
            try:
                assert [f[b"line"] for _, f in await client.xrange(SINK_STREAM)] == d.raw_lines
            finally:
                await client.aclose()
    finally:
        server.stop()


async def test_error_reply_keeps_the_lines(redis, fake, random_artifact):
    """A stream key holding another type fails the batch with Redis's reason; once fixed, every line arrives in
    order."""
    client = Redis(host="127.0.0.1", port=redis.port)
    await client.set(SINK_STREAM, "not a stream")
    try:
        async with SinkDaemon(fake, random_artifact, SINK_SYMBOLS, sinks=[redis_sink_table(redis.port)]) as d:
            sink = d.sink_named("redis")
            await fake.step(2)
            await wait_for(lambda: sink.errors >= 1 and not sink.up, "the error reply")
            assert "WRONGTYPE" in sink.last_error and sink.sent == 0 and sink.queued == 4
            await client.delete(SINK_STREAM)
            await wait_for(lambda: sink.up and sink.sent == 4, "the 4 lines after the key was removed")
            assert await redis_stream_lines(redis.port) == d.raw_lines
    finally:
        await client.aclose()


@pytest.mark.parametrize("maxlen", [0, 100_000])
def test_packed_xadd_matches_redis_py(maxlen):
    """The sink's own XADD packing is byte for byte what redis-py packs for the same command."""
    from redis.asyncio.connection import Connection

    from daemon.aio.sinks.redis import xadd_head

    line = b'{"symbol": "BTCUSDT", "signal": "buy"}'
    trim = ["MAXLEN", "~", maxlen] if maxlen else []
    want = b"".join(Connection().pack_command("XADD", "kdsignal:signals", *trim, "*", "line", line))
    assert xadd_head("kdsignal:signals", maxlen) + b"$%d\r\n%s\r\n" % (len(line), line) == want
