"""What a supervisor sees of a running :class:`daemon.aio.service.Service`: sd_notify, watchdog, metrics endpoint.

The service owns one :class:`Supervision` and calls four things: :meth:`run` as a task of its task group,
:meth:`on_signal` after each signal line is written, :meth:`on_gap` when REST filled a gap, and
:meth:`stopping` when a stop was requested. Everything else is read from the service at check time (the
feed's counters, the pipelines' fill state), so the per-frame hot path gains no calls.

- ``READY=1`` once the feed is subscribed and every symbol's warm-up fill has finished.
- ``WATCHDOG=1`` at ``WATCHDOG_USEC / 2`` while the loop keeps time and some frame (a kline push or a pong)
  arrived within ``stale_after_s``; by default twice the feed's own dead-connection time plus the longest
  backoff, so a feed that stays down through several reconnect attempts gets the process restarted.
- ``STATUS=`` lines: symbols, signals so far, last inference time, feed state.
- ``/healthz`` and ``/metrics`` when ``[metrics] enabled = true``.
- The live scorecard (:mod:`daemon.core.scorecard`, ``[scorecard]``): fed in :meth:`on_signal`, so after the
  line is written; read by ``/metrics`` at scrape time; a ``scorecard`` log event every ``period_s``;
  ``model_degraded`` / ``model_recovered`` logged when the live log loss leaves or re-enters its band.
  :meth:`on_model` tells it a reload happened (the new artifact brings its own expectation and label rule).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

import structlog

from daemon.core.scorecard import Scorecard, ScorecardUnavailable
from daemon.ops.metrics import Metrics
from daemon.ops.sdnotify import Activity, Notifier, Watchdog

if TYPE_CHECKING:
    from daemon.core.pipeline import Signal
    from daemon.aio.service import Service

__all__ = ["Supervision"]

log = structlog.get_logger("kdsignal.supervision")


class Supervision:
    """systemd notifications, the health-gated watchdog and the optional metrics endpoint of one service."""

    def __init__(self, service: Service, *, environ: Mapping[str, str] | None = None,
                 stale_after_s: float | None = None) -> None:
        self.service = service
        cfg = service.cfg
        self.notifier = Notifier.from_env(environ)
        self.metrics = Metrics(symbols=cfg.feed.symbols, interval_ms=cfg.feed.interval_ms)
        self.metrics.on_scrape = self._sync_metrics
        feed = cfg.feed
        self.stale_after_s = (stale_after_s if stale_after_s is not None
                              else 2 * (feed.ping_interval_s + feed.pong_timeout_s) + cfg.backoff.max_s)
        self._activity = Activity()
        self._frames_seen = 0
        self.watchdog = Watchdog(self.notifier, self.frames_fresh, status=self.status_text)
        self.ready_sent = False
        self.last_inference_us: float | None = None
        self.scorecard: Scorecard | None = None
        self.scorecard_note = "disabled by [scorecard] enabled = false"
        self.on_model(service.model, announce=False)  # run() says it, after daemon_started

    def on_model(self, model, *, announce: bool = True) -> None:
        """A model is being served (start-up or reload): score its predictions against its own expectation."""
        scfg = self.service.cfg.scorecard
        if not scfg.enabled or model is None:
            return
        try:
            if self.scorecard is None:
                feed = self.service.cfg.feed
                self.scorecard = Scorecard.from_manifest(feed.symbols, model.manifest, feed.interval_ms,
                                                         window_bars=scfg.window_bars, band=scfg.band,
                                                         degraded_after_bars=scfg.degraded_after_bars)
            elif self.scorecard.set_model(model.manifest):
                log.info("scorecard_restarted", model=model.id, reason="the new model's label rule differs")
            self.scorecard_note = ""
        except ScorecardUnavailable as exc:
            # predictions whose label rule is unknown cannot be scored; an older model's windows would mislead
            self.scorecard = None
            self.scorecard_note = f"artifact {model.id}: {exc}"
            if announce:
                log.warning("scorecard_unavailable", model=model.id, reason=str(exc))
        self.metrics.scorecard = self.scorecard

    # --- called by the service --------------------------------------------------------------------------------

    def on_signal(self, sig: Signal) -> None:
        """Count a written signal (after the line is out, so it costs the latency budget nothing)."""
        self.last_inference_us = sig.inference_us
        m = self.metrics
        m.signal(sig.signal)
        m.observe_inference_us(sig.inference_us)
        m.candle_closed(sig.symbol, sig.start_ms)
        sc = self.scorecard
        if sc is not None:
            p = sig.probs
            sc.on_bar(sig.symbol, sig.start_ms, sig.close, (p["sell"], p["hold"], p["buy"]))
            if sc.events:
                for e in sc.take_events():
                    if e["degraded"]:
                        log.warning("model_degraded", model=sig.model, **e)
                    else:
                        log.info("model_recovered", model=sig.model, **e)

    def on_gap(self, bars: int) -> None:
        """Count one gap filled from REST with ``bars`` closed candles."""
        self.metrics.gap_backfilled(bars)

    def stopping(self) -> None:
        """Tell systemd the daemon is shutting down."""
        self.notifier.stopping(f"stopping after {self.service.writer.written} signals")

    async def run(self) -> None:
        """Serve metrics if enabled, send READY when warm, then keep the watchdog and status going."""
        mcfg = self.service.cfg.metrics
        if self.scorecard is None and self.service.cfg.scorecard.enabled:
            log.warning("scorecard_unavailable", model=self.service.model.id, reason=self.scorecard_note)
        period = asyncio.get_running_loop().create_task(self._scorecard_events(), name="scorecard-events")
        try:
            if mcfg.enabled:
                try:
                    await self.metrics.start(mcfg.host, mcfg.port)
                except OSError as exc:  # the signals matter more than the endpoint: log loudly, keep running
                    log.error("metrics_listen_failed", host=mcfg.host, port=mcfg.port, error=str(exc))
            if self.notifier.enabled:
                while not self.is_ready():
                    await asyncio.sleep(0.05)
                self.ready_sent = self.notifier.ready(self.status_text())
                log.info("sd_ready", status=self.status_text())
                await self.watchdog.run()
            await asyncio.Event().wait()  # keep the metrics endpoint up until the task group cancels us
        finally:
            period.cancel()
            await self.metrics.stop()
            self.notifier.close()

    async def _scorecard_events(self) -> None:
        while True:
            await asyncio.sleep(self.service.cfg.scorecard.period_s)
            self.log_scorecard()

    def log_scorecard(self) -> None:
        """Log the ``scorecard`` event: rolling live scores overall and per symbol, against the expectation."""
        sc = self.scorecard
        if sc is None:
            return
        rep = sc.report()
        per = {s: {k: r[k] for k in ("n", "log_loss", "brier", "hit_rate", "degraded")}
               for s, r in rep["symbols"].items()}
        log.info("scorecard", model=self.service.model.id, expected_log_loss=rep["expected_log_loss"],
                 band=rep["band"], window_bars=rep["window_bars"], degraded=rep["degraded"],
                 overall=rep["overall"], symbols=per)

    # --- checks ---------------------------------------------------------------------------------------------------

    def is_ready(self) -> bool:
        """Subscribed, and no symbol still waiting for its warm-up history."""
        svc = self.service
        return svc.feed.stats.subscribed and not any(p.filling for p in svc.pipelines.values())

    def frames_fresh(self) -> bool:
        """True while some frame arrived within ``stale_after_s`` (checked at each watchdog tick)."""
        frames = self.service.feed.stats.frames
        if frames != self._frames_seen:
            self._frames_seen = frames
            self._activity.mark()
        return self._activity.age_s() < self.stale_after_s

    def status_text(self) -> str:
        """One line for ``systemctl status``."""
        svc = self.service
        symbols = list(svc.pipelines)
        shown = ",".join(symbols[:4]) + (f",+{len(symbols) - 4}" if len(symbols) > 4 else "")
        latency = "-" if self.last_inference_us is None else f"{self.last_inference_us:.2f} us"
        stats = svc.feed.stats
        feed = "subscribed" if stats.subscribed else ("connected" if stats.connected else "disconnected")
        text = (f"{len(symbols)} symbols ({shown}) interval {svc.cfg.feed.interval}; "
                f"{svc.writer.written} signals; last inference {latency}; feed {feed}")
        quiet_s = self._activity.age_s()
        if quiet_s >= self.stale_after_s:
            text += f"; no frames for {quiet_s:.0f} s"
        return text

    def _sync_metrics(self) -> None:
        svc = self.service
        stats = svc.feed.stats
        self.metrics.sync_totals(frames=stats.frames, malformed=stats.malformed,
                                 reconnects=max(0, stats.connects - 1))
        self.metrics.set_feed_connected(stats.subscribed)
        self.metrics.set_model(svc.model.id if svc.model is not None else None)
