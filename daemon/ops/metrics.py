"""Health and Prometheus metrics: counters the daemon updates in-process, and an optional aiohttp endpoint.

``Metrics`` costs the hot path one histogram observation per signal; every running total (frames, signals
by class, gaps and bars backfilled, ...) is kept by its one owner and copied in at scrape time
(:meth:`Metrics.sync_totals`). It lives whether or not the HTTP endpoint is enabled (config
``[metrics] enabled/host/port``).
It owns its own ``CollectorRegistry`` rather than the process-global one, so two instances (tests, a
reload) never collide over metric names.

Endpoints (``await metrics.start(host, port)``):

``GET /healthz``
    JSON ``{"status", "feed_connected", "model_loaded", "model_id", "model_degraded", "last_candle_age_s", ...}``;
    200 when the feed is connected, a model is loaded and some symbol closed a candle within
    ``max_candle_age_s`` (counted from start-up until the first close), 503 otherwise with ``problems`` saying
    why. ``model_degraded`` (status ``"degraded"``, still 200) comes from the live scorecard.
``GET /metrics``
    Prometheus text format. Latency is in seconds, the Prometheus base unit, with buckets from 0.25 us up.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

__all__ = ["INFERENCE_BUCKETS_US", "Metrics"]

log = structlog.get_logger("kdsignal.metrics")

TICK_TO_SIGNAL_BUCKETS_US = (5.0, 10.0, 20.0, 30.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 20000.0, 100000.0)

# Sub-microsecond up to 10 ms: the top buckets catch GC pauses and page faults.
INFERENCE_BUCKETS_US = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1000.0, 10000.0)


class _CandleAgeCollector(Collector):
    """Age of each symbol's last closed candle, computed at scrape time so it keeps growing during an outage."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "kdsignal_last_candle_age_seconds",
            "Seconds since the end of the last closed candle, per symbol",
            labels=["symbol"],
        )
        for symbol, age_s in sorted(self._metrics.candle_ages_s().items()):
            if age_s is not None:
                family.add_metric([symbol], age_s)
        yield family


class _ScorecardCollector(Collector):
    """The live scorecard's rolling figures, read at scrape time (symbol "all": every symbol's window pooled)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sc = self._metrics.scorecard
        ll = GaugeMetricFamily("kdsignal_live_log_loss", "Rolling live log loss of the served predictions",
                               labels=["symbol"])
        brier = GaugeMetricFamily("kdsignal_live_brier", "Rolling live Brier score (sum over classes)",
                                  labels=["symbol"])
        hit = GaugeMetricFamily("kdsignal_live_hit_rate", "Share of buy/sell decisions whose outcome was that class",
                                labels=["symbol", "signal"])
        scored = GaugeMetricFamily("kdsignal_live_scored_bars", "Predictions in the rolling window", labels=["symbol"])
        degraded = GaugeMetricFamily("kdsignal_model_degraded",
                                     "1 while live log loss has stayed above the artifact's expected band")
        if sc is not None:
            rep = sc.report(detail=False)
            rows = [("all", rep["overall"]), *sorted(rep["symbols"].items())]
            for symbol, r in rows:
                scored.add_metric([symbol], r["n"])
                if r["log_loss"] is not None:
                    ll.add_metric([symbol], r["log_loss"])
                    brier.add_metric([symbol], r["brier"])
                for side in ("buy", "sell"):
                    if r["hit_rate"][side] is not None:
                        hit.add_metric([symbol, side], r["hit_rate"][side])
            degraded.add_metric([], 1.0 if rep["degraded"] else 0.0)
        yield from (ll, brier, hit, scored, degraded)


class Metrics:
    """Counters, gauges and the inference latency histogram of one daemon, plus its HTTP endpoint."""

    def __init__(
        self,
        *,
        symbols: Iterable[str] = (),
        interval_ms: int = 0,
        classes: Iterable[str] = (),
        max_candle_age_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.interval_ms = interval_ms
        # A healthy feed closes a candle every interval; allow one missed close and Bybit's ~1 s delay.
        self.max_candle_age_s = max_candle_age_s if max_candle_age_s is not None else 2 * interval_ms / 1e3 + 30.0
        self._clock = clock
        self.started_s = clock()
        self._last_close_end_s: dict[str, float | None] = {s: None for s in symbols}
        self._connected = False
        self.model_id: str | None = None

        r = self.registry = CollectorRegistry(auto_describe=True)
        self._inference = Histogram(
            "kdsignal_inference_seconds", "Student inference time per closed bar",
            buckets=tuple(b * 1e-6 for b in INFERENCE_BUCKETS_US), registry=r,
        )
        # From the frame's arrival to its signal line written and flushed (the daemon's own clock).
        self._tick_to_signal = Histogram(
            "kdsignal_tick_to_signal_seconds", "Frame received to signal line written, live closes",
            buckets=tuple(b * 1e-6 for b in TICK_TO_SIGNAL_BUCKETS_US), registry=r,
        )
        # process_resident_memory_bytes, process_cpu_seconds_total, open fds... read from /proc at scrape time.
        ProcessCollector(registry=r)
        self._frames = Counter("kdsignal_frames", "WebSocket frames received", registry=r)
        self._malformed = Counter("kdsignal_malformed_frames", "Frames counted and skipped as malformed", registry=r)
        self._reconnects = Counter("kdsignal_reconnects", "WebSocket reconnects", registry=r)
        self._gaps = Counter("kdsignal_gaps_backfilled", "Gaps in closed candles filled from REST", registry=r)
        self._backfilled = Counter("kdsignal_bars_backfilled", "Closed candles fetched from REST and signalled",
                                   registry=r)
        self._unfilled = Counter("kdsignal_bars_unfilled", "Closed candles neither the stream nor REST had",
                                 registry=r)
        self._signals = Counter("kdsignal_signals", "Signals emitted, by class", ["signal"], registry=r)
        self._suppressed = Counter("kdsignal_signals_suppressed",
                                   "Signals the decision policy's emit mode kept back (not written)", registry=r)
        for cls in classes:  # the artifact's classes, present from the first scrape so rate() works at once
            self._signals.labels(signal=cls)
        self._connected_g = Gauge("kdsignal_feed_connected", "1 while the WebSocket is connected and subscribed",
                                  registry=r)
        self._model_g = Gauge("kdsignal_model_loaded", "1 while a model is loaded", registry=r)
        self._model_info = Info("kdsignal_model", "The artifact being served", registry=r)
        r.register(_CandleAgeCollector(self))
        self.scorecard = None  # a daemon.core.scorecard.Scorecard, set by supervision when one runs
        r.register(_ScorecardCollector(self))
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        # Called before each /healthz or /metrics answer, so totals kept elsewhere (the feed's frame counters)
        # can be copied in at scrape time instead of costing a call per frame.
        self.on_scrape: Callable[[], None] | None = None
        self._synced: dict[object, int] = {}
        # More /healthz parts, by key: each returns (problems, details); the sinks register one.
        self.health_parts: dict[str, Callable[[], tuple[list[str], dict]]] = {}

    # --- updates from the daemon (hot path: keep them trivial) -------------------------------------------

    def observe_inference_us(self, inference_us: float) -> None:
        """Record one inference time in microseconds."""
        self._inference.observe(inference_us * 1e-6)

    def observe_tick_to_signal_ns(self, ns: int) -> None:
        """Record one frame-to-line latency in nanoseconds."""
        self._tick_to_signal.observe(ns * 1e-9)

    def candle_closed(self, symbol: str, start_ms: int) -> None:
        """Note that ``symbol`` closed the candle starting at ``start_ms`` (ages count from its end)."""
        end_s = (start_ms + self.interval_ms) / 1e3
        prev = self._last_close_end_s.get(symbol)
        if prev is None or end_s > prev:  # a backfilled older bar must not make the symbol look stale
            self._last_close_end_s[symbol] = end_s

    def set_feed_connected(self, connected: bool) -> None:
        """Record whether the feed is connected and subscribed."""
        self._connected = connected
        self._connected_g.set(1 if connected else 0)

    def set_model(self, model_id: str | None) -> None:
        """Record the loaded model's id (None when no model is loaded)."""
        self.model_id = model_id
        self._model_g.set(0 if model_id is None else 1)
        self._model_info.info({"model": model_id or ""})

    # --- reading --------------------------------------------------------------------------------------------

    def candle_ages_s(self) -> dict[str, float | None]:
        """Seconds since each symbol's last closed candle ended (None before its first close)."""
        now = self._clock()
        return {s: None if end is None else max(0.0, now - end) for s, end in self._last_close_end_s.items()}

    def health(self) -> tuple[bool, dict]:
        """Return (healthy, JSON-ready details) for ``/healthz``."""
        ages = self.candle_ages_s()
        known = [a for a in ages.values() if a is not None]
        freshest = min(known) if known else None
        # Before the first close the clock runs from start-up, so a feed that never delivers goes unhealthy too.
        staleness = freshest if freshest is not None else self._clock() - self.started_s
        problems = []
        if not self._connected:
            problems.append("feed not connected")
        if self.model_id is None:
            problems.append("no model loaded")
        if staleness > self.max_candle_age_s:
            problems.append(f"no closed candle for {staleness:.0f} s (limit {self.max_candle_age_s:.0f} s)")
        parts = {}
        for key, part in self.health_parts.items():
            more, parts[key] = part()
            problems += more
        # A drifting model is flagged but stays 200: a restart cannot fix it, a retrain or a rollback can.
        degraded = bool(self.scorecard is not None and self.scorecard.degraded)
        body = {
            "status": "unhealthy" if problems else ("degraded" if degraded else "ok"),
            "model_degraded": degraded,
            "feed_connected": self._connected,
            "model_loaded": self.model_id is not None,
            "model_id": self.model_id,
            "last_candle_age_s": None if freshest is None else round(freshest, 3),
            "max_candle_age_s": self.max_candle_age_s,
            "candle_age_s": {s: None if a is None else round(a, 3) for s, a in sorted(ages.items())},
            "uptime_s": round(self._clock() - self.started_s, 3),
            **parts,
            "problems": problems,
        }
        return not problems, body

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric, totals kept elsewhere copied in first."""
        self._refresh()
        return generate_latest(self.registry)

    # --- HTTP endpoint ---------------------------------------------------------------------------------------

    def _refresh(self) -> None:
        if self.on_scrape is not None:
            try:
                self.on_scrape()
            except Exception as exc:  # noqa: BLE001 - a scrape must still answer; the numbers are just older
                log.error("metrics_refresh_failed", error=repr(exc))

    def sync_totals(self, *, frames: int = 0, malformed: int = 0, reconnects: int = 0, gaps_backfilled: int = 0,
                    bars_backfilled: int = 0, bars_unfilled: int = 0,
                    signals_by_class: Mapping[str, int] | None = None, signals_suppressed: int = 0) -> None:
        """Add what running totals kept by their owners gained since the last sync (no per-event calls)."""
        pairs: list[tuple[object, Counter, int]] = [
            ("frames", self._frames, frames), ("malformed", self._malformed, malformed),
            ("reconnects", self._reconnects, reconnects), ("gaps_backfilled", self._gaps, gaps_backfilled),
            ("bars_backfilled", self._backfilled, bars_backfilled), ("bars_unfilled", self._unfilled, bars_unfilled),
            ("signals_suppressed", self._suppressed, signals_suppressed)]
        for cls, total in (signals_by_class or {}).items():
            pairs.append((("signals", cls), self._signals.labels(signal=cls), total))
        for key, counter, total in pairs:
            gained = total - self._synced.get(key, 0)
            if gained > 0:
                counter.inc(gained)
                self._synced[key] = total

    async def _healthz(self, request: web.Request) -> web.Response:
        self._refresh()
        ok, body = self.health()
        return web.Response(status=200 if ok else 503, text=json.dumps(body), content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve ``/healthz`` and ``/metrics`` on host:port (0 picks a free port); return the bound port."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        # Scrapes every few seconds would drown the structured log; errors are still logged by aiohttp.
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("metrics_listening", host=host, port=self.port)
        return self.port

    async def stop(self) -> None:
        """Stop the HTTP endpoint (the counters stay usable)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
