"""The live daemon against the fake Bybit: each fault ends with every closed candle signalled exactly once,
with the same probabilities as ``kdsignal replay`` on the same candles."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from daemon.tools.fake_bybit import GARBAGE_FRAMES, FakeBybit
from tests.support import BAR_MS, OPEN_INDEX, InProcessDaemon, check_exactly_once, sample_rows, wait_until

SYMBOLS = ("BTCUSDT", "ETHUSDT")
ROWS = sample_rows(SYMBOLS, OPEN_INDEX + 50)


@pytest.fixture
async def fake():
    """A fake with real BTCUSDT and ETHUSDT bars, bar OPEN_INDEX open (OPEN_INDEX bars of REST history, 50 to play)."""
    async with FakeBybit(ROWS, "5", start_index=OPEN_INDEX) as f:
        yield f


async def test_clean_session_matches_replay(fake, random_artifact):
    """Without faults the first close after start is signalled and every line equals replay's."""
    async with InProcessDaemon(fake, random_artifact, SYMBOLS) as d:
        first = fake.open_start_ms
        await fake.step(6)
        assert await check_exactly_once(d, random_artifact, first, first + 5 * BAR_MS) == {s: [] for s in SYMBOLS}
        assert d.service.writer.latency.total == 12


async def test_garbage_frames(fake, random_artifact):
    """Garbage between bars is counted as malformed and never costs or duplicates a signal."""
    fake.faults.garbage_per_bar = len(GARBAGE_FRAMES)
    async with InProcessDaemon(fake, random_artifact, SYMBOLS) as d:
        first = fake.open_start_ms
        await fake.step(4)
        await check_exactly_once(d, random_artifact, first, first + 3 * BAR_MS)
        assert d.service.feed.stats.malformed >= 4 * (len(GARBAGE_FRAMES) - 1)


async def test_duplicate_closes(fake, random_artifact):
    """Repeated confirm:true pushes for a start (also after the next open) are not new bars."""
    fake.faults.duplicate_close = True
    async with InProcessDaemon(fake, random_artifact, SYMBOLS) as d:
        first = fake.open_start_ms
        await fake.step(4)
        await check_exactly_once(d, random_artifact, first, first + 3 * BAR_MS)
        await fake.step(1)
        await check_exactly_once(d, random_artifact, first, first + 4 * BAR_MS)
        assert sum(p.duplicates for p in d.service.pipelines.values()) >= 8


async def test_close_and_next_open_in_one_array(fake, random_artifact):
    """A close sharing its data array with the next bar's first update is signalled once."""
    fake.faults.merge_close_open = True
    async with InProcessDaemon(fake, random_artifact, SYMBOLS) as d:
        first = fake.open_start_ms
        await fake.step(4)
        await check_exactly_once(d, random_artifact, first, first + 3 * BAR_MS)


async def test_lost_close_is_backfilled(fake, random_artifact):
    """A close that never arrives is fetched from REST when the next one does, and marked backfill."""
    async with InProcessDaemon(fake, random_artifact, SYMBOLS) as d:
        first = fake.open_start_ms
        await fake.step(1)
        fake.lose_next_close()
        with capture_logs() as logs:
            await fake.step(3)
            backfilled = await check_exactly_once(d, random_artifact, first, first + 3 * BAR_MS)
        assert backfilled == {s: [first + BAR_MS] for s in SYMBOLS}
        assert any(e["event"] == "gap_backfilled" and e["bars"] == 1 for e in logs)


async def test_rest_429_then_500_then_good_data(fake, random_artifact):
    """REST answering 429 then 500 delays warm-up and a backfill but loses nothing."""
    fake.faults.rest_errors[:] = [429, 500]
    async with InProcessDaemon(fake, random_artifact, ("BTCUSDT",)) as d:
        first = fake.open_start_ms
        fake.lose_next_close()
        await fake.step(1)
        fake.faults.rest_errors[:] = [429, 500]
        await fake.step(2)
        backfilled = await check_exactly_once(d, random_artifact, first, first + 2 * BAR_MS, ("BTCUSDT",))
        assert backfilled == {"BTCUSDT": [first]}
        assert d.service.rest.retries == 4 and not fake.faults.rest_errors


async def test_server_drop_with_refusals(fake, random_artifact):
    """Bars played while the server is down and refusing are caught up from REST after reconnecting."""
    async with InProcessDaemon(fake, random_artifact, SYMBOLS) as d:
        first = fake.open_start_ms
        await fake.step(2)
        await d.wait_for_start("ETHUSDT", first + BAR_MS)
        await fake.drop(refuse_next=3)
        await fake.step(2)
        await d.ready()
        await fake.step(2)
        backfilled = await check_exactly_once(d, random_artifact, first, first + 5 * BAR_MS)
        assert backfilled == {s: [first + 2 * BAR_MS, first + 3 * BAR_MS] for s in SYMBOLS}
        assert fake.connections_refused == 3 and d.service.feed.stats.connects >= 2


async def test_half_open_stall(fake, random_artifact):
    """A connection that goes silent without closing is noticed by the missing pong and replaced."""
    async with InProcessDaemon(fake, random_artifact, SYMBOLS) as d:
        first = fake.open_start_ms
        await fake.step(1)
        await d.wait_for_start("ETHUSDT", first)
        fake.stall()
        await fake.step(2)
        await d.ready()
        await fake.step(2)
        backfilled = await check_exactly_once(d, random_artifact, first, first + 4 * BAR_MS)
        assert backfilled == {s: [first + BAR_MS, first + 2 * BAR_MS] for s in SYMBOLS}
        assert d.service.feed.stats.connects >= 2


async def test_refused_topic(fake, random_artifact):
    """A topic the server refuses is reported while the other symbols keep being signalled."""
    fake.faults.refused_symbols.add("ETHUSDT")
    with capture_logs() as logs:
        async with InProcessDaemon(fake, random_artifact, ("BTCUSDT", "ETHUSDT", "NOPEUSDT")) as d:
            first = fake.open_start_ms
            await fake.step(3)
            await check_exactly_once(d, random_artifact, first, first + 2 * BAR_MS, ("BTCUSDT",))
            assert d.service.feed.stats.refused_topics == {"kline.5.ETHUSDT", "kline.5.NOPEUSDT"}
    refused = {e["topic"] for e in logs if e["event"] == "topic_refused"}
    assert refused == {"kline.5.ETHUSDT", "kline.5.NOPEUSDT"}
    assert not [x for x in d.lines if x["symbol"] != "BTCUSDT"]


async def test_gap_rest_cannot_fill_is_reported(fake, random_artifact):
    """A bar missing from the stream and from REST is logged as gap_unfilled and never signalled."""
    async with InProcessDaemon(fake, random_artifact, ("BTCUSDT",)) as d:
        first = fake.open_start_ms
        hole = first + BAR_MS
        await fake.step(1)
        fake.lose_next_close()
        del fake.rows["BTCUSDT"][hole]  # REST will not have it either
        with capture_logs() as logs:
            await fake.step(3)
            await d.wait_for_start("BTCUSDT", first + 3 * BAR_MS)
        assert d.starts("BTCUSDT") == [first, first + 2 * BAR_MS, first + 3 * BAR_MS]
        unfilled = [e for e in logs if e["event"] == "gap_unfilled"]
        assert [(e["first_missing_start_ms"], e["bars"], e["log_level"]) for e in unfilled] == [(hole, 1, "error")]
        assert d.service.status().bars_unfilled == 1


async def test_latency_summary_is_logged(fake, random_artifact):
    """The periodic latency summary carries p50/p99/max and the counters."""
    with capture_logs() as logs:
        async with InProcessDaemon(fake, random_artifact, ("BTCUSDT",)) as d:
            await fake.step(2)
            await d.wait_for_start("BTCUSDT", fake.open_start_ms - BAR_MS)
            await wait_until(lambda: any(e["event"] == "latency_summary" and e["n"] > 0 for e in logs),
                             what="a latency summary with samples")
    summary = next(e for e in logs if e["event"] == "latency_summary" and e["n"] > 0)
    assert summary["p50_us"] <= summary["p99_us"] <= summary["max_us"] and summary["frames"] > 0
    signal_events = [e for e in logs if e["event"] == "signal_emitted"]
    assert [e["start"] for e in signal_events] == d.starts("BTCUSDT")


async def test_sighup_reload_keeps_old_model_on_bad_artifact(fake, random_artifact, tmp_path):
    """reload() with a broken artifact keeps serving the old model; a good one takes over from the next bar."""
    from tests.support import write_random_artifact

    async with InProcessDaemon(fake, random_artifact, ("BTCUSDT",)) as d:
        old_id = d.service.model.id
        random_artifact.write_bytes(b"not an artifact")
        with capture_logs() as logs:
            assert await d.service.reload() is False
        assert [e["event"] for e in logs] == ["model_reload_failed"]
        await fake.step(1)
        await d.wait_for_start("BTCUSDT", fake.open_start_ms - BAR_MS)
        assert d.lines[-1]["model"] == old_id
        new_id = write_random_artifact(random_artifact, seed=7)
        assert await d.service.reload() is True
        await fake.step(1)
        await d.wait_for_start("BTCUSDT", fake.open_start_ms - BAR_MS)
        assert d.lines[-1]["model"] == new_id != old_id


async def test_reload_of_an_unbuilt_architecture_keeps_the_old_model(fake, random_artifact):
    """Reloading an artifact whose step nobody built is refused with the command to run; the old model serves on."""
    from tests.support import write_random_artifact

    async with InProcessDaemon(fake, random_artifact, ("BTCUSDT",)) as d:
        old_id = d.service.model.id
        write_random_artifact(random_artifact, seed=9, architecture=((11, 13, 3), ("relu", "linear")))
        with capture_logs() as logs:
            assert await d.service.reload() is False
        assert [e["event"] for e in logs] == ["model_reload_failed"]
        assert f"kdsignal build-kernel --artifact {random_artifact}" in logs[0]["error"]
        await fake.step(1)
        await d.wait_for_start("BTCUSDT", fake.open_start_ms - BAR_MS)
        assert d.lines[-1]["model"] == old_id and d.service.model.id == old_id


async def test_refused_topic_is_not_caught_up_after_a_reconnect(fake, random_artifact):
    """A refused symbol gets no REST catch-up on reconnect, so it never yields signals of its own."""
    fake.faults.refused_symbols.add("ETHUSDT")
    async with InProcessDaemon(fake, random_artifact, SYMBOLS) as d:
        first = fake.open_start_ms
        await fake.step(1)
        await fake.drop()
        await fake.step(1)
        await d.ready()
        await fake.step(1)
        await check_exactly_once(d, random_artifact, first, first + 2 * BAR_MS, ("BTCUSDT",))
    assert not [x for x in d.lines if x["symbol"] != "BTCUSDT"]


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
