"""The health/metrics endpoint on a real aiohttp server, scraped by a real client, parsed by prometheus_client."""

from __future__ import annotations

import json

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.core.parser import INTERVAL_MS as INTERVAL_CODE_MS
from daemon.ops.metrics import INFERENCE_BUCKETS_US, Metrics
from daemon.tools.fake_bybit import FakeBybit
from tests.support import OPEN_INDEX, InProcessDaemon, sample_rows

START_MS = 1_719_667_500_000  # a real 5m candle start
INTERVAL_MS = 300_000


class Clock:
    """A settable wall clock in seconds."""

    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
async def served():
    """A Metrics instance for two symbols served on 127.0.0.1:0, with its clock and an HTTP session."""
    clock = Clock(START_MS / 1e3)
    m = Metrics(symbols=("BTCUSDT", "ETHUSDT"), interval_ms=INTERVAL_MS, classes=("sell", "hold", "buy"), clock=clock)
    port = await m.start("127.0.0.1", 0)
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as session:
        yield m, clock, session
    await m.stop()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus text exposition keyed by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_counts_parse_with_prometheus_parser(served):
    """Each update method moves exactly its series, as read back through /metrics and the official parser."""
    m, clock, session = served
    m.sync_totals(frames=7, malformed=3, reconnects=1, gaps_backfilled=2, bars_backfilled=5, bars_unfilled=4,
                  signals_by_class={"buy": 2, "sell": 1}, signals_suppressed=6)
    m.sync_totals(frames=7, malformed=3, reconnects=1, gaps_backfilled=2, bars_backfilled=5, bars_unfilled=4,
                  signals_by_class={"buy": 2, "sell": 1}, signals_suppressed=6)  # the same totals again add nothing
    for us in (0.6, 0.9, 3.0, 5000.0):
        m.observe_inference_us(us)
    m.candle_closed("BTCUSDT", START_MS)
    clock.now_s = (START_MS + INTERVAL_MS) / 1e3 + 12.5
    async with session.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    got = samples(text)
    assert got[("kdsignal_frames_total", ())] == 7
    assert got[("kdsignal_malformed_frames_total", ())] == 3
    assert got[("kdsignal_reconnects_total", ())] == 1
    assert got[("kdsignal_gaps_backfilled_total", ())] == 2
    assert got[("kdsignal_bars_backfilled_total", ())] == 5
    assert got[("kdsignal_signals_suppressed_total", ())] == 6
    assert got[("kdsignal_bars_unfilled_total", ())] == 4
    assert got[("kdsignal_signals_total", (("signal", "buy"),))] == 2
    assert got[("kdsignal_signals_total", (("signal", "sell"),))] == 1
    assert got[("kdsignal_signals_total", (("signal", "hold"),))] == 0
    assert got[("kdsignal_inference_seconds_count", ())] == 4
    assert got[("kdsignal_inference_seconds_sum", ())] == pytest.approx(5004.5e-6)
    assert got[("kdsignal_inference_seconds_bucket", (("le", "1e-06"),))] == 2
    assert got[("kdsignal_inference_seconds_bucket", (("le", "4e-06"),))] == 3
    assert got[("kdsignal_inference_seconds_bucket", (("le", "+Inf"),))] == 4
    assert got[("kdsignal_last_candle_age_seconds", (("symbol", "BTCUSDT"),))] == pytest.approx(12.5)
    # A symbol that never closed a candle has no age sample rather than a made-up one.
    assert ("kdsignal_last_candle_age_seconds", (("symbol", "ETHUSDT"),)) not in got


async def test_histogram_buckets_are_microsecond_scale(served):
    """The latency histogram's finite buckets are exactly INFERENCE_BUCKETS_US expressed in seconds."""
    _m, _, session = served
    async with session.get("/metrics") as resp:
        families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    les = [s.labels["le"] for s in families["kdsignal_inference_seconds"].samples if s.name.endswith("_bucket")]
    assert [float(le) for le in les[:-1]] == pytest.approx([b * 1e-6 for b in INFERENCE_BUCKETS_US])
    assert les[-1] == "+Inf"
    assert INFERENCE_BUCKETS_US[0] < 1.0


async def test_healthz_503_until_connected_loaded_and_fresh(served):
    """/healthz answers 503 naming each missing condition, 200 once all hold, 503 again when candles go stale."""
    m, clock, session = served
    async with session.get("/healthz") as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["status"] == "unhealthy"
    assert body["problems"] == ["feed not connected", "no model loaded"]
    assert body["last_candle_age_s"] is None and body["candle_age_s"] == {"BTCUSDT": None, "ETHUSDT": None}

    m.set_feed_connected(True)
    m.set_model("abc123")
    m.candle_closed("ETHUSDT", START_MS)
    clock.now_s = (START_MS + INTERVAL_MS) / 1e3 + 2.0
    async with session.get("/healthz") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body == {
        "status": "ok", "feed_connected": True, "model_loaded": True, "model_id": "abc123",
        "model_degraded": False, "last_candle_age_s": 2.0, "max_candle_age_s": 630.0,
        "candle_age_s": {"BTCUSDT": None, "ETHUSDT": 2.0}, "uptime_s": 302.0, "problems": [],
    }

    clock.now_s += 700
    async with session.get("/healthz") as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["problems"] == ["no closed candle for 702 s (limit 630 s)"]
    m.set_feed_connected(False)
    async with session.get("/healthz") as resp:
        assert resp.status == 503
        assert (await resp.json())["feed_connected"] is False


async def test_healthz_goes_stale_when_no_candle_ever_closes(served):
    """Before any close, staleness counts from start-up, so a feed that never delivers turns unhealthy."""
    m, clock, session = served
    m.set_feed_connected(True)
    m.set_model("abc")
    async with session.get("/healthz") as resp:
        assert resp.status == 200
    clock.now_s += 631
    async with session.get("/healthz") as resp:
        assert resp.status == 503
        assert json.loads(await resp.text())["problems"] == ["no closed candle for 631 s (limit 630 s)"]


def test_backfilled_old_bar_does_not_age_symbol():
    """A backfilled older close never moves a symbol's last-close time backwards."""
    clock = Clock(START_MS / 1e3 + 1000)
    m = Metrics(symbols=("BTCUSDT",), interval_ms=INTERVAL_MS, clock=clock)
    m.candle_closed("BTCUSDT", START_MS)
    m.candle_closed("BTCUSDT", START_MS - 2 * INTERVAL_MS)
    assert m.candle_ages_s() == {"BTCUSDT": pytest.approx(700.0)}


def test_model_unloaded_and_registries_independent():
    """Two Metrics objects keep separate registries and set_model(None) reports no model."""
    a, b = Metrics(), Metrics()
    a.sync_totals(frames=1)
    a.set_model("x")
    a.set_model(None)
    got_a, got_b = samples(a.render().decode()), samples(b.render().decode())
    assert got_a[("kdsignal_frames_total", ())] == 1 and got_b[("kdsignal_frames_total", ())] == 0
    assert got_a[("kdsignal_model_loaded", ())] == 0
    assert a.health()[1]["model_id"] is None


async def test_start_on_busy_port_raises_and_leaves_nothing_running(served):
    """Binding a port already in use fails loudly instead of silently serving nothing."""
    m, _, _ = served
    other = Metrics()
    with pytest.raises(OSError):
        await other.start("127.0.0.1", m.port)
    assert other.port is None
    await other.stop()


async def test_on_scrape_syncs_external_totals(served):
    """on_scrape runs before each answer and sync_totals adds only what the external totals gained."""
    m, _, session = served
    totals = {"frames": 0, "malformed": 0, "reconnects": 0}
    m.on_scrape = lambda: m.sync_totals(**totals)
    totals.update(frames=10, malformed=2, reconnects=1)
    async with session.get("/metrics") as resp:
        got = samples(await resp.text())
    assert got[("kdsignal_frames_total", ())] == 10 and got[("kdsignal_malformed_frames_total", ())] == 2
    totals.update(frames=25)
    async with session.get("/metrics") as resp:
        got = samples(await resp.text())
    assert got[("kdsignal_frames_total", ())] == 25 and got[("kdsignal_reconnects_total", ())] == 1

    def broken() -> None:
        raise RuntimeError("stats gone")

    m.on_scrape = broken
    async with session.get("/metrics") as resp:
        assert resp.status == 200  # older numbers beat no answer


async def test_metrics_has_process_and_tick_to_signal(random_artifact):
    """/metrics carries the process's resident memory and CPU, and one tick-to-signal sample per live line."""
    async with FakeBybit(sample_rows(("BTCUSDT",), OPEN_INDEX + 20), "5", start_index=OPEN_INDEX) as fake, \
            InProcessDaemon(fake, random_artifact, ("BTCUSDT",)) as d:
        await fake.step(3)
        await d.wait_for_start("BTCUSDT", fake.open_start_ms - INTERVAL_CODE_MS["5"])
        text = d.service.supervision.metrics.render().decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and line[0] != "#"}
    assert values["process_resident_memory_bytes"] > 10e6 and values["process_cpu_seconds_total"] > 0
    assert values["kdsignal_tick_to_signal_seconds_count"] == 3
    assert 0 < values["kdsignal_tick_to_signal_seconds_sum"] < 3.0
