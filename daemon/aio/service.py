"""``kdsignal run --config FILE``: the live daemon, wired under one ``asyncio.TaskGroup``.

Tasks: the WebSocket feed, one REST fill per symbol when needed (warm-up at start, catch-up after every
(re)subscription, backfill when a close arrives later than expected), and the periodic ``latency_summary``.
Confirmed candles are processed synchronously in the frame callback (no queue hop on the hot path).

Signals: SIGTERM/SIGINT stop cleanly (exit 0; a line is always written whole because the handler runs in
the event loop between callbacks); SIGHUP reloads the artifact (validated first, the old model keeps
running if the new one fails) and reopens the log file.

Exit codes: 0 after a clean stop, 78 (EX_CONFIG) for a bad configuration or artifact, which a supervisor
should not retry; anything unexpected propagates (crash-and-restart).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from typing import BinaryIO

import aiohttp
import structlog

from daemon.core.artifact import ArtifactError
from daemon.core.config import Config, ConfigError, load_config
from daemon.aio.feed import Feed
from daemon.core.model import Model
from daemon.aio.output import ReopenableFile, SignalWriter, configure_logging
from daemon.core.parser import KlineFrame, kline_topic
from daemon.core.pipeline import FILL, FillResult, Pipeline
from daemon.aio.prewarm import Prewarm
from daemon.aio.rest import RestClient, RestError
from daemon.ops.supervision import Supervision
from daemon.ops.files import remove_pid_file, write_pid_file

__all__ = ["EX_CONFIG", "Service", "StartupError", "add_arguments", "check_model", "run_cli"]

EX_CONFIG = 78


class StartupError(RuntimeError):
    """The daemon cannot start with this configuration or artifact."""


class _Stop(Exception):
    """Raised inside the task group to cancel every task on a stop signal."""


def check_model(cfg: Config, model: Model) -> None:
    """Refuse an artifact whose interval differs from the feed's."""
    if str(model.interval) != cfg.feed.interval:
        raise StartupError(f"artifact {cfg.model.artifact} is for interval {model.interval!r}, "
                           f"but [feed].interval is {cfg.feed.interval!r}")


class Service:
    """The running daemon: feed, pipelines, REST fills and the signal writer."""

    def __init__(self, cfg: Config, model: Model, *, out: BinaryIO | None = None, log=None,
                 log_file: ReopenableFile | None = None,
                 load_model: Callable[[str], Model] = Model.load) -> None:
        check_model(cfg, model)
        self.cfg = cfg
        self.model = model
        self.log = log or structlog.get_logger("kdsignal")
        self.log_file = log_file
        self._load_model = load_model
        feed_cfg = cfg.feed
        self.pipelines = {s: Pipeline(s, feed_cfg.interval, model, warmup_extra_bars=cfg.rest.warmup_extra_bars)
                          for s in feed_cfg.symbols}
        self.writer = SignalWriter(out, self.log.bind(category=feed_cfg.category))
        self.feed = Feed(feed_cfg.ws_url, [kline_topic(feed_cfg.interval, s) for s in feed_cfg.symbols],
                         self._on_kline, ping_interval_s=feed_cfg.ping_interval_s,
                         pong_timeout_s=feed_cfg.pong_timeout_s, ack_timeout_s=feed_cfg.ack_timeout_s,
                         open_timeout_s=feed_cfg.open_timeout_s, subscribe_chunk=feed_cfg.subscribe_chunk,
                         backoff=cfg.backoff, on_subscribed=self._on_subscribed, log=self.log)
        self.rest: RestClient | None = None
        self.gaps_backfilled = 0
        self.unfilled_bars = 0
        self.reloads = 0
        self._reload_lock = asyncio.Lock()
        self._reloading: set[asyncio.Task] = set()
        self._tg: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self.started = asyncio.Event()  # set once the task group runs (tests wait on it)
        # Keeps the hot path's caches warm just before each expected burst of closes.
        self.prewarm = Prewarm(self) if feed_cfg.prewarm else None
        # sd_notify READY/WATCHDOG/STATUS/STOPPING and the optional /healthz + /metrics endpoint.
        self.supervision = Supervision(self)

    # ------------------------------------------------------------------ hot path
    def _on_kline(self, frame: KlineFrame, recv_ns: int) -> None:
        pipeline = self.pipelines.get(frame.symbol)
        if pipeline is None:  # a subscribed topic with another interval cannot happen; be safe
            return
        write = self.writer.write
        for candle in frame.closed:
            result = pipeline.on_close(candle, recv_ns)
            if result is None:
                continue
            if result is FILL:
                self._spawn_fill(pipeline, "gap")
            else:
                write(result)
                self.supervision.on_signal(result)
        if self.prewarm is not None:  # after the lines: not inside the measured tick-to-signal
            self.prewarm.on_close_frame(recv_ns)

    # ------------------------------------------------------------------ fills
    def _on_subscribed(self) -> None:
        # Catch up on what a reconnect may have cost; a refused topic has no stream to catch up with.
        refused = self.feed.stats.refused_topics
        for symbol, pipeline in self.pipelines.items():
            if kline_topic(pipeline.interval, symbol) not in refused and pipeline.begin_fill():
                self._spawn_fill(pipeline, "catch_up")

    def _spawn_fill(self, pipeline: Pipeline, reason: str) -> None:
        if self._tg is not None:
            self._tg.create_task(self._fill(pipeline, reason), name=f"fill-{pipeline.symbol}")

    async def _fill(self, p: Pipeline, reason: str) -> None:
        log = self.log.bind(symbol=p.symbol, interval=p.interval)
        while True:
            start_ms, end_ms, count = p.fill_range()
            try:
                candles = await self.rest.closed_klines(p.symbol, p.interval, start_ms=start_ms, end_ms=end_ms,
                                                        count=count)
            except RestError as exc:
                log.error("fill_failed", reason=reason, start_ms=start_ms, end_ms=end_ms, error=str(exc))
                res = p.fill_failed()
            else:
                res = p.apply_fill(candles)
            self._report(log, reason, res, p)
            if not res.more:
                return
            reason = "gap"

    def _report(self, log, reason: str, res: FillResult, p: Pipeline) -> None:
        if res.history:
            log.info("warmup_loaded", bars=res.history, next_start_ms=p.next_start_ms, warm=bool(p.state.warm))
        for first_ms, n in res.unfilled:
            self.unfilled_bars += n
            log.error("gap_unfilled", first_missing_start_ms=first_ms, bars=n, unfilled_total=self.unfilled_bars)
        if res.backfilled:
            self.gaps_backfilled += res.backfilled
            log.info("gap_backfilled", reason=reason, bars=res.backfilled, backfilled_total=self.gaps_backfilled)
            self.supervision.on_gap(res.backfilled)
        for sig in res.signals:
            self.writer.write(sig)
            self.supervision.on_signal(sig)

    # ------------------------------------------------------------------ signals
    def stop(self) -> None:
        """Ask the service to stop (SIGTERM/SIGINT)."""
        self._stop.set()

    def request_reload(self) -> None:
        """SIGHUP: reopen the log file at once, then reload the artifact in the background."""
        if self.log_file is not None:
            if self.log_file.reopen():  # on failure the old handle is kept, and the artifact still reloads
                self.log.info("log_reopened", file=self.log_file.path)
            else:
                self.log.error("log_reopen_failed", file=self.log_file.path, error=self.log_file.last_error)
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self._reloading.add(task)  # a reference, so the task is not collected mid-load
        task.add_done_callback(self._reloading.discard)

    async def reload(self) -> bool:
        """Swap in the artifact from disk if it validates; the old model serves until then and on failure.

        Loading runs in a worker thread: a new architecture may need its kernel built (seconds, in a child
        process), and the feed keeps being served meanwhile. Reloads run one at a time, in arrival order.
        """
        path = self.cfg.model.artifact
        async with self._reload_lock:
            try:
                model = await asyncio.to_thread(self._load_model, path)
                check_model(self.cfg, model)
            except Exception as exc:  # noqa: BLE001 - whatever fails, the old model keeps serving, and it is logged
                self.log.error("model_reload_failed", artifact=path, error=str(exc) or repr(exc), model=self.model.id)
                return False
            old, self.model = self.model, model
            for pipeline in self.pipelines.values():
                pipeline.set_model(model)
            self.supervision.on_model(model)
            self.reloads += 1
            self.log.info("model_reloaded", artifact=path, old_model=old.id, model=model.id,
                          kernel=model.kernel_note)
            return True

    # ------------------------------------------------------------------ main
    async def _summaries(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.log.latency_summary_s)
            self.log_summary()

    def log_summary(self) -> None:
        """Log ``latency_summary`` with counters of the period and the totals so far."""
        stats = self.feed.stats
        self.log.info("latency_summary", **(self.writer.latency.take() or {"n": 0}), signals=self.writer.written,
                      frames=stats.frames, malformed=stats.malformed, reconnects=max(0, stats.connects - 1),
                      gaps_backfilled=self.gaps_backfilled, unfilled_bars=self.unfilled_bars,
                      duplicates=sum(p.duplicates for p in self.pipelines.values()),
                      by_class=dict(self.writer.by_class))

    async def run(self) -> None:
        """Run until :meth:`stop`; the warm-up fills start at once, alongside the feed."""
        started_s = asyncio.get_running_loop().time()
        timeout = aiohttp.ClientTimeout(total=self.cfg.rest.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self.rest = RestClient(self.cfg.feed.rest_url, self.cfg.feed.category, session,
                                   backoff=self.cfg.backoff, max_attempts=self.cfg.rest.max_attempts,
                                   timeout_s=self.cfg.rest.timeout_s, page_limit=self.cfg.rest.page_limit,
                                   max_concurrent=self.cfg.rest.max_concurrent,
                                   log=self.log)
            self.log.info("daemon_started", symbols=list(self.pipelines), interval=self.cfg.feed.interval,
                          model=self.model.id, kernel=self.model.kernel_note, ws_url=self.cfg.feed.ws_url,
                          config=self.cfg.source)
            if self.cfg.metrics.beyond_loopback:
                self.log.warning("metrics_beyond_loopback", host=self.cfg.metrics.host, port=self.cfg.metrics.port)
            self.writer.attach(asyncio.get_running_loop())  # stdout writes never block the loop
            try:
                async with asyncio.TaskGroup() as tg:
                    self._tg = tg
                    for pipeline in self.pipelines.values():
                        if pipeline.begin_fill():
                            self._spawn_fill(pipeline, "warmup")
                    tg.create_task(self.feed.run(), name="feed")
                    tg.create_task(self._summaries(), name="latency-summary")
                    tg.create_task(self.supervision.run(), name="supervision")
                    if self.prewarm is not None:
                        tg.create_task(self.prewarm.run(), name="prewarm")
                    self.started.set()
                    await self._stop.wait()
                    self.supervision.stopping()
                    raise _Stop
            except* _Stop:
                pass
            finally:
                self._tg = None
                self.writer.detach()
        self.log_summary()
        self.log.info("daemon_stopped", signals=self.writer.written,
                      uptime_s=round(asyncio.get_running_loop().time() - started_s, 3))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the run options."""
    parser.add_argument("--config", default="config.toml", help="TOML configuration file (default config.toml)")


async def _main(service: Service) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, service.stop)
    loop.add_signal_handler(signal.SIGINT, service.stop)
    loop.add_signal_handler(signal.SIGHUP, service.request_reload)
    try:
        await service.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def run_cli(args: argparse.Namespace) -> int:
    """Load the configuration and the artifact, then serve until SIGTERM/SIGINT."""
    try:
        cfg = load_config(args.config)
        model = Model.load(cfg.model.artifact)
        check_model(cfg, model)
        log_file = configure_logging(cfg.log.file, cfg.log.level)
    except (ConfigError, ArtifactError, StartupError, OSError) as exc:
        print(f"kdsignal run: {exc}", file=sys.stderr)
        return EX_CONFIG
    if cfg.model.pid_file:  # lets `kdsignal retrain`/`rollback` SIGHUP us after switching models
        write_pid_file(cfg.model.pid_file)
    try:
        service = Service(cfg, model, log_file=log_file)
        asyncio.run(_main(service))
    finally:
        if cfg.model.pid_file:
            remove_pid_file(cfg.model.pid_file)
        if log_file is not None:
            with contextlib.suppress(OSError):
                log_file.flush()
                log_file.close()
    return 0
