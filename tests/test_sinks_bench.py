"""The sinks part of ``kdsignal bench``: its latency arithmetic, and one small live run end to end."""

from __future__ import annotations

import pytest

from daemon.bench import markdown
from daemon.bench import sinks as bench
from tests.support import nats_server, redis_server


def test_consumer_latency_joins_lines_by_content():
    """Latency is arrival minus the same line's stdout stamp; lines never stamped are left out."""
    stamps = {b"a": 1_000_000, b"b": 2_000_000}
    got = [(1_500_000, b"a"), (2_100_000, b"b"), (9_000_000, b"from an earlier run")]
    c = bench.consumer_latency(stamps, got)
    assert c["n"] == 2 and c["max_us"] == 500.0 and c["seen_fraction"] == 1.0
    assert c["p50_us"] == pytest.approx(300.0)
    assert bench.consumer_latency(stamps, [])["p99_us"] is None


@pytest.mark.slow
def test_a_small_live_variant(tmp_path, random_artifact):
    """Five symbols with live Redis and NATS sinks: every recorded line reaches both consumers, and the part
    renders its tables."""
    (tmp_path / "r").mkdir()
    (tmp_path / "n").mkdir()
    redis, nats_ = redis_server(tmp_path / "r"), nats_server(tmp_path / "n", jetstream=False)
    redis.start()
    nats_.start()
    try:
        with bench.Consumers(redis.port, nats_.port) as consumers:
            row = bench.run_variant(tmp_path, random_artifact, "redis+nats", bench.sink_tables(redis.port, nats_.port),
                                    5, 0.2, 1.5, consumers, {"redis-server": redis.proc.pid})
        floors = {"client library": bench.floor(redis.port, nats_.port, n=20, gap_s=0.005),
                  "raw sockets": bench.raw_floor(redis.port, nats_.port, n=20, gap_s=0.005),
                  "pipe": {"pipe hop": bench.pipe_hop(n=20, gap_s=0.005)}}
    finally:
        redis.stop()
        nats_.stop()
    assert row["live_samples"] > 0 and row["p50_us"] > 0
    for sink in ("redis", "nats"):
        assert row["sinks"][sink]["dropped"] == 0 and row["sinks"][sink]["sent"] >= row["live_samples"]
        assert row["consumer"][sink]["seen_fraction"] == 1.0 and row["consumer"][sink]["p50_us"] > 0
    # Every floor saw each of its 20 lines once, and none of them before it was sent.
    for kind, by_consumer in floors.items():
        for c in by_consumer.values():
            assert c["n"] == 20 and c["seen_fraction"] == 1.0 and c["p50_us"] > 0, kind
    # The CPU of the processes beside the daemon, over the same window.
    assert set(row["others_cpu_percent"]) == {"fake exchange", "redis-server", "consumers"}
    assert all(v >= 0 for v in row["others_cpu_percent"].values())
    text = markdown.section_sinks({"parts": {"sinks": {"variants": [row], "floor": floors}}}, markdown=True)
    assert "| redis+nats | 5 |" in text and "floor: another process" in text and "floor: a line into a pipe" in text
    assert "floor: raw sockets" in text
    assert "fake exchange" in text and "/dev/cpu_dma_latency" in text
