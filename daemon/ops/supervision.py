"""What a supervisor sees of a running daemon: sd_notify, watchdog, metrics endpoint.

:class:`Supervision` knows the service only through what it is handed: a callable returning a
:class:`daemon.ops.status.ServiceStatus` snapshot (read at a watchdog tick or a scrape, so the per-frame
hot path gains no calls), :meth:`on_signal` after each signal line is written, and :meth:`stopping` when a
stop was requested. :meth:`run` runs as a task of the service's task group.

- ``READY=1`` once the feed is subscribed and no symbol waits for its first warm-up fetch.
- ``WATCHDOG=1`` at ``WATCHDOG_USEC / 2`` while the loop keeps time and some frame (a kline push or a pong)
  arrived within ``stale_after_s`` (the caller passes twice the feed's dead-connection time plus the longest
  backoff, so a feed that stays down through several reconnect attempts gets the process restarted).
- ``STATUS=`` lines: symbols, signals so far, last inference time, feed state.
- ``/healthz`` and ``/metrics`` when ``[metrics] enabled = true``.
- The live scorecard (:mod:`daemon.core.scorecard`, ``[scorecard]``): fed in :meth:`on_signal`, so after the
  line is written; read by ``/metrics`` at scrape time; a ``scorecard`` log event every ``period_s``;
  ``model_degraded`` / ``model_recovered`` logged when the live log loss leaves or re-enters its band.
  :meth:`on_model` tells it a reload happened (the new artifact brings its own expectation and label rule).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

import structlog

from daemon.core.config import MetricsConfig, ScorecardConfig
from daemon.core.pipeline import Signal
from daemon.core.scorecard import Scorecard, ScorecardUnavailable
from daemon.ops.metrics import Metrics
from daemon.ops.sdnotify import Activity, Notifier, Watchdog
from daemon.ops.status import ServiceStatus

__all__ = ["Supervision"]

log = structlog.get_logger("kdsignal.supervision")


class Supervision:
    """systemd notifications, the health-gated watchdog and the optional metrics endpoint of one service."""

    def __init__(self, status: Callable[[], ServiceStatus], *, symbols: Sequence[str], interval_ms: int,
                 classes: Sequence[str], metrics_cfg: MetricsConfig, stale_after_s: float,
                 environ: Mapping[str, str] | None = None, scorecard_cfg: ScorecardConfig | None = None,
                 model=None) -> None:
        self.status = status
        self.metrics_cfg = metrics_cfg
        self.notifier = Notifier.from_env(environ)
        self.metrics = Metrics(symbols=symbols, interval_ms=interval_ms, classes=classes)
        self.metrics.on_scrape = self._sync_metrics
        self.stale_after_s = stale_after_s
        self._activity = Activity()
        self._frames_seen = 0
        self.watchdog = Watchdog(self.notifier, self.frames_fresh, status=self.status_text)
        self.ready_sent = False
        self.last_inference_us: float | None = None
        self.scorecard_cfg = scorecard_cfg or ScorecardConfig()
        self._symbols, self._interval_ms = tuple(symbols), interval_ms
        self.scorecard: Scorecard | None = None
        self.scorecard_note = "disabled by [scorecard] enabled = false"
        if model is not None:
            self.on_model(model, announce=False)  # run() says it, after daemon_started

    def on_model(self, model, *, announce: bool = True) -> None:
        """A model is being served (start-up or reload): score its predictions against its own expectation."""
        scfg = self.scorecard_cfg
        if not scfg.enabled:
            return
        try:
            if self.scorecard is None:
                self.scorecard = Scorecard.from_manifest(self._symbols, model.manifest, self._interval_ms,
                                                         step=model.scorecard_kernel,
                                                         window_bars=scfg.window_bars, band=scfg.band,
                                                         degraded_after_bars=scfg.degraded_after_bars)
            elif self.scorecard.set_model(model.manifest, model.scorecard_kernel):
                log.info("scorecard_restarted", model=model.id, reason="the new model's label rule differs")
            self.scorecard_note = ""
        except ScorecardUnavailable as exc:
            # predictions whose label rule is unknown cannot be scored; an older model's windows would mislead
            self.scorecard = None
            self.scorecard_note = f"artifact {model.id}: {exc}"
            if announce:
                log.warning("scorecard_unavailable", model=model.id, reason=str(exc))
        self.metrics.scorecard = self.scorecard

    # --- told by the service ------------------------------------------------------------------------------

    def on_signal(self, sig: Signal, tick_to_signal_ns: int = 0) -> None:
        """Take a written signal (after the line is out, so it costs the latency budget nothing) and, for a
        live one, its frame-to-line latency."""
        self.last_inference_us = sig.inference_us
        self.metrics.observe_inference_us(sig.inference_us)
        if tick_to_signal_ns:
            self.metrics.observe_tick_to_signal_ns(tick_to_signal_ns)
        self.metrics.candle_closed(sig.symbol, sig.start_ms)
        sc = self.scorecard
        if sc is not None:
            # probs in the artifact's sell, hold, buy order; an alpha model's line has none to score
            sc.on_bar(sig.symbol, sig.start_ms, sig.close, sig.probs if sig.readout is None else None)
            if sc.events:
                for e in sc.take_events():
                    if e["degraded"]:
                        log.warning("model_degraded", model=sig.model, **e)
                    else:
                        log.info("model_recovered", model=sig.model, **e)

    def stopping(self) -> None:
        """Tell systemd the daemon is shutting down."""
        self.notifier.stopping(f"stopping after {self.status().signals} signals")

    async def run(self) -> None:
        """Serve metrics if enabled, send READY when warm, then keep the watchdog and status going."""
        mcfg = self.metrics_cfg
        if self.scorecard is None and self.scorecard_cfg.enabled:
            log.warning("scorecard_unavailable", model=self.status().model_id, reason=self.scorecard_note)
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
            await asyncio.sleep(self.scorecard_cfg.period_s)
            self.log_scorecard()

    def log_scorecard(self) -> None:
        """Log the ``scorecard`` event: rolling live scores overall and per symbol, against the expectation."""
        sc = self.scorecard
        if sc is None:
            return
        rep = sc.report(detail=False)
        log.info("scorecard", model=self.status().model_id, expected_log_loss=rep["expected_log_loss"],
                 band=rep["band"], window_bars=rep["window_bars"], degraded=rep["degraded"],
                 overall=rep["overall"], symbols=rep["symbols"])

    # --- checks ---------------------------------------------------------------------------------------------------

    def is_ready(self) -> bool:
        """Subscribed, and no symbol still waiting for its first warm-up history."""
        return self.status().ready

    def frames_fresh(self) -> bool:
        """True while some frame arrived within ``stale_after_s`` (checked at each watchdog tick)."""
        frames = self.status().frames
        if frames != self._frames_seen:
            self._frames_seen = frames
            self._activity.mark()
        return self._activity.age_s() < self.stale_after_s

    def status_text(self) -> str:
        """One line for ``systemctl status``."""
        st = self.status()
        symbols = st.symbols
        shown = ",".join(symbols[:4]) + (f",+{len(symbols) - 4}" if len(symbols) > 4 else "")
        latency = "-" if self.last_inference_us is None else f"{self.last_inference_us:.2f} us"
        text = (f"{len(symbols)} symbols ({shown}) interval {st.interval}; "
                f"{st.signals} signals; last inference {latency}; feed {st.feed_state}")
        quiet_s = self._activity.age_s()
        if quiet_s >= self.stale_after_s:
            text += f"; no frames for {quiet_s:.0f} s"
        return text

    def _sync_metrics(self) -> None:
        st = self.status()
        self.metrics.sync_totals(frames=st.frames, malformed=st.malformed, reconnects=st.reconnects,
                                 gaps_backfilled=st.gaps_backfilled, bars_backfilled=st.bars_backfilled,
                                 bars_unfilled=st.bars_unfilled, signals_by_class=st.signals_by_class,
                                 signals_suppressed=st.signals_suppressed)
        self.metrics.set_feed_connected(st.feed_subscribed)
        self.metrics.set_model(st.model_id)
