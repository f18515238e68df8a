"""Sharding: two daemons with disjoint symbol lists publish to one Redis stream and one NATS subject, and one
consumer group reads both, every line once, each symbol in order."""

from __future__ import annotations

import json

import nats
import pytest
from redis.asyncio import Redis

from daemon.tools.fake_bybit import FakeBybit
from tests.support import OPEN_INDEX, SinkDaemon, nats_server, redis_server, sample_rows, wait_for

SHARDS = (("BTCUSDT", "ETHUSDT"), ("SOLUSDT", "ADAUSDT"))
ROWS = sample_rows(SHARDS[0] + SHARDS[1], OPEN_INDEX + 40)
STREAM, SUBJECT, GROUP = "kdsignal:signals", "kdsignal.signals", "strategies"
BARS = 5


@pytest.fixture
def servers(tmp_path):
    """A redis-server and a nats-server with JetStream, on free loopback ports."""
    (tmp_path / "r").mkdir()
    (tmp_path / "n").mkdir()
    redis, nats_ = redis_server(tmp_path / "r"), nats_server(tmp_path / "n")
    redis.start()
    nats_.start()
    yield redis, nats_
    redis.stop()
    nats_.stop()


def by_symbol(lines: list[bytes]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for line in lines:
        out.setdefault(json.loads(line)["symbol"], []).append(line)
    return out


async def test_two_shards_one_stream_one_group(servers, random_artifact):
    """Each daemon serves its own symbols; the group reads the union of both stdouts once, per symbol in order."""
    redis, nats_srv = servers
    nc = await nats.connect(f"nats://127.0.0.1:{nats_srv.port}")
    js = nc.jetstream()
    await js.add_stream(name="SIGNALS", subjects=[SUBJECT])
    rc = Redis(host="127.0.0.1", port=redis.port)
    await rc.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    sinks = [{"kind": "redis", "url": f"redis://127.0.0.1:{redis.port}/0", "stream": STREAM},
             {"kind": "nats", "url": f"nats://127.0.0.1:{nats_srv.port}", "subject": SUBJECT, "jetstream": True}]
    try:
        async with FakeBybit(ROWS, "5", start_index=OPEN_INDEX) as fake, \
                SinkDaemon(fake, random_artifact, SHARDS[0], sinks=sinks) as a, \
                SinkDaemon(fake, random_artifact, SHARDS[1], sinks=sinks) as b:
            await fake.step(BARS)
            want = 2 * 2 * BARS
            await wait_for(lambda: len(a.raw_lines) + len(b.raw_lines) == want, "both shards' lines")
            await wait_for(lambda: all(s.sent == want // 2 for d in (a, b) for s in d.service.sinks.sinks),
                           "every sink done")
            # Redis: two workers of one consumer group share the stream.
            redis_got: list[bytes] = []
            for worker in ("w1", "w2", "w1", "w2"):
                reply = await rc.xreadgroup(GROUP, worker, {STREAM: ">"}, count=7)
                for _, entries in reply:
                    for entry_id, fields in entries:
                        redis_got.append(fields[b"line"])
                        await rc.xack(STREAM, GROUP, entry_id)
            # NATS: one durable pull consumer (JetStream's consumer group) on the subject.
            sub = await js.pull_subscribe(SUBJECT, durable=GROUP)
            nats_got: list[bytes] = []
            while len(nats_got) < want:
                for msg in await sub.fetch(want - len(nats_got), timeout=5):
                    nats_got.append(msg.data)
                    await msg.ack()
            stdout = a.raw_lines + b.raw_lines
            for got in (redis_got, nats_got):
                assert sorted(got) == sorted(stdout) and len(set(got)) == want
                assert by_symbol(got) == by_symbol(stdout)  # per symbol, in the order it was written
            assert {json.loads(x)["symbol"] for x in a.raw_lines} == set(SHARDS[0])
            assert {json.loads(x)["symbol"] for x in b.raw_lines} == set(SHARDS[1])
            assert (await rc.xpending(STREAM, GROUP))["pending"] == 0
    finally:
        await rc.aclose()
        await nc.close()
