"""``kdsignal run --config FILE``: the live daemon, wired under one ``asyncio.TaskGroup``.

The service drives one :class:`daemon.core.pipeline.Pipeline` per symbol: the feed's confirmed candles go in
synchronously in the frame callback (no queue hop on the hot path), and the service acts on the events that
come out: it writes each :class:`Signal`, performs each :class:`FetchHistory` through the REST client as a
task (at most one per symbol; a retry waits a backoff delay first), and logs the rest. Satellites
(supervision, metrics) get a :class:`daemon.ops.status.ServiceStatus` snapshot and a call per written signal.

Signals: SIGTERM/SIGINT stop cleanly (exit 0; a line is always written whole because the handler runs in
the event loop between callbacks), cancelling a reload in progress; closes still held for a fetch are logged
by count. SIGHUP reloads the artifact (validated first, the old model keeps running if the new one fails)
and reopens the log file. :func:`run_cli` catches all three from its first moment, before anything slow
(loading the artifact), so an early SIGHUP cannot end the process.

Exit codes (:mod:`daemon.core.exitcodes`): 0 after a clean stop, 78 for a bad configuration or artifact,
which a supervisor should not retry; anything unexpected propagates (crash-and-restart).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from functools import partial
from typing import BinaryIO

import aiohttp
import structlog

from daemon.aio.feed import Feed
from daemon.aio.output import ReopenableFile, SignalWriter, configure_logging
from daemon.aio.rest import RestClient, RestError
from daemon.aio.sinks.process import SinkProcess
from daemon.core.artifact import ArtifactError
from daemon.core.config import Config, ConfigError, load_config
from daemon.core.cpus import format_cpu_list
from daemon.core.exitcodes import EXIT_CONFIG, EXIT_OK
from daemon.core.model import Model
from daemon.core.parser import KlineFrame, kline_topic
from daemon.core.pipeline import (
    CloseRejected,
    FeaturesReset,
    FetchHistory,
    GapBackfilled,
    GapUnfilled,
    HistoryLoaded,
    Pipeline,
    Signal,
)
from daemon.core.policy import Policy
from daemon.core.policy import resolve as resolve_policy
from daemon.ops import early_signals
from daemon.ops.affinity import apply_cpu_config
from daemon.ops.early_signals import EarlySignals
from daemon.ops.files import remove_pid_file, write_pid_file
from daemon.ops.status import ServiceStatus
from daemon.ops.supervision import Supervision

__all__ = ["Service", "StartupError", "add_arguments", "check_model", "run_cli"]


class StartupError(RuntimeError):
    """The daemon cannot start with this configuration or artifact."""


class _Stop(Exception):
    """Raised inside the task group to cancel every task on a stop signal."""


def check_model(cfg: Config, model: Model) -> Policy:
    """Refuse an artifact whose interval differs from the feed's; return the ``[signal]`` policy for it
    (``ConfigError`` if the artifact cannot give the threshold it asks for)."""
    if str(model.interval) != cfg.feed.interval:
        raise StartupError(f"artifact {cfg.model.artifact} is for interval {model.interval!r}, "
                           f"but [feed].interval is {cfg.feed.interval!r}")
    return resolve_policy(cfg.signal, model)


async def _in_thread(fn: Callable, *args):
    """Run ``fn`` in a daemon thread: cancelling the await abandons it, and the process exit does not wait."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result, error) -> None:
        if not future.done():  # the awaiting task may have been cancelled meanwhile
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    def work() -> None:
        result = error = None
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task, which decides
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name=f"load-{getattr(fn, '__name__', 'fn')}", daemon=True).start()
    return await future


class Service:
    """The running daemon: feed, pipelines, REST fetches and the signal writer."""

    def __init__(self, cfg: Config, model: Model, *, out: BinaryIO | None = None, log=None,
                 log_file: ReopenableFile | None = None,
                 load_model: Callable[[str], Model] | None = None, environ=None,
                 sinks: SinkProcess | None = None) -> None:
        self.policy = check_model(cfg, model)
        self.cfg = cfg
        self.model = model
        self.log = log or structlog.get_logger("kdsignal")
        self.log_file = log_file
        # A reload loads the way start-up did: the configured kernel, never a build (Model.load cannot build).
        self._load_model = load_model or partial(Model.load, kernel=cfg.model.kernel, kernel_dir=cfg.model.kernel_dir)
        feed_cfg = cfg.feed
        self.pipelines = {s: Pipeline(s, feed_cfg.interval, model, warmup_extra_bars=cfg.rest.warmup_extra_bars,
                                      policy=self.policy) for s in feed_cfg.symbols}
        self._logs = {s: self.log.bind(symbol=s, interval=feed_cfg.interval) for s in feed_cfg.symbols}
        # [[sink]]s: every stdout line also goes to Redis/NATS/webhooks, from a process of their own (daemon.aio.sinks).
        self.sinks = sinks if sinks is not None else SinkProcess.from_config(cfg, self.log)
        self.writer = SignalWriter(out, self.log.bind(category=feed_cfg.category),
                                   publish=self.sinks.publish if self.sinks else None)
        self.feed = Feed(feed_cfg.ws_url, [kline_topic(feed_cfg.interval, s) for s in feed_cfg.symbols],
                         self._on_kline, ping_interval_s=feed_cfg.ping_interval_s,
                         pong_timeout_s=feed_cfg.pong_timeout_s, ack_timeout_s=feed_cfg.ack_timeout_s,
                         open_timeout_s=feed_cfg.open_timeout_s, subscribe_chunk=feed_cfg.subscribe_chunk,
                         backoff=cfg.backoff, on_subscribed=self._on_subscribed, log=self.log)
        self.rest: RestClient | None = None
        self.reloads = 0
        self._reload_lock = asyncio.Lock()
        self._reloading: set[asyncio.Task] = set()
        self._retry_delays: dict[str, Iterator[float]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self.started = asyncio.Event()  # set once the task group runs (tests wait on it)
        # sd_notify READY/WATCHDOG/STATUS/STOPPING and the optional /healthz + /metrics endpoint. A frame is
        # overdue after twice the feed's dead-connection time plus the longest backoff.
        stale_after_s = 2 * (feed_cfg.ping_interval_s + feed_cfg.pong_timeout_s) + cfg.backoff.max_s
        self.supervision = Supervision(self.status, symbols=feed_cfg.symbols, interval_ms=feed_cfg.interval_ms,
                                       classes=model.classes, metrics_cfg=cfg.metrics, stale_after_s=stale_after_s,
                                       environ=environ, scorecard_cfg=cfg.scorecard, model=model)
        self._listener = self.supervision
        if self.sinks:  # per-sink counters in /metrics, per-sink state in /healthz
            self.supervision.metrics.registry.register(self.sinks.collector())
            self.supervision.metrics.health_parts["sinks"] = self.sinks.health

    # ------------------------------------------------------------------ hot path
    def _on_kline(self, frame: KlineFrame, recv_ns: int) -> None:
        pipeline = self.pipelines.get(frame.symbol)
        if pipeline is None:  # a subscribed topic with another interval cannot happen; be safe
            return
        receive = pipeline.receive_close
        for candle in frame.closed:
            receive(candle, recv_ns)
        for event in pipeline.events():  # _pump, inlined: this runs per frame
            if type(event) is Signal:
                self.writer.write(event)
                self._listener.on_signal(event, self.writer.last_latency_ns)
            else:
                self._on_event(pipeline, event)

    def _pump(self, pipeline: Pipeline) -> None:
        """Act on what the pipeline asked for or produced."""
        writer = self.writer
        listener = self._listener
        for event in pipeline.events():
            if type(event) is Signal:
                writer.write(event)
                listener.on_signal(event, writer.last_latency_ns)
            else:
                self._on_event(pipeline, event)

    def _on_event(self, p: Pipeline, event) -> None:
        log = self._logs[p.symbol]
        kind = type(event)
        if kind is FetchHistory:
            if self._tg is not None:  # the pipeline keeps at most one fetch out per symbol
                self._tg.create_task(self._fetch(p, event), name=f"fetch-{p.symbol}")
        elif kind is GapUnfilled:
            log.error("gap_unfilled", first_missing_start_ms=event.first_start_ms, bars=event.bars,
                      unfilled_total=p.bars_unfilled)
        elif kind is GapBackfilled:
            log.info("gap_backfilled", reason=event.reason, bars=event.bars, bars_backfilled_total=p.bars_backfilled,
                     gaps_backfilled_total=p.gaps_backfilled)
        elif kind is HistoryLoaded:
            log.info("warmup_loaded", bars=event.bars, next_start_ms=event.next_start_ms, warm=event.warm)
        elif kind is FeaturesReset:
            log.warning("features_reset", first_missing_start_ms=event.first_missing_start_ms, bars=event.bars,
                        resets_total=p.resets)
        elif kind is CloseRejected and (p.rejected <= 20 or p.rejected % 1000 == 0):  # a storm must not flood the log
            log.warning("close_rejected", start_ms=event.start_ms, reason=event.reason, rejected_total=p.rejected)

    # ------------------------------------------------------------------ fetches
    def _on_subscribed(self) -> None:
        # Catch up on what a reconnect may have cost; a refused topic has no stream to catch up with.
        refused = self.feed.stats.refused_topics
        for symbol, pipeline in self.pipelines.items():
            if kline_topic(pipeline.interval, symbol) not in refused and pipeline.resync():
                self._pump(pipeline)

    def _retry_delay_s(self, symbol: str, attempt: int) -> float:
        # The same capped exponential backoff as the REST client, restarted with each new need.
        if attempt <= 1 or symbol not in self._retry_delays:
            self._retry_delays[symbol] = self.cfg.backoff.delays()
        return next(self._retry_delays[symbol])

    async def _fetch(self, p: Pipeline, f: FetchHistory) -> None:
        log = self._logs[p.symbol]
        if f.attempt:
            delay_s = self._retry_delay_s(p.symbol, f.attempt)
            log.info("fetch_retry", reason=f.reason, attempt=f.attempt, retry_in_s=round(delay_s, 3))
            await asyncio.sleep(delay_s)
        try:
            candles = await self.rest.closed_klines(p.symbol, p.interval, start_ms=f.start_ms, end_ms=f.end_ms,
                                                    count=f.count)
        except RestError as exc:
            log.error("fetch_failed", reason=f.reason, start_ms=f.start_ms, end_ms=f.end_ms, error=str(exc))
            p.history_failed(str(exc))
        else:
            p.receive_history(candles)
        self._pump(p)

    # ------------------------------------------------------------------ signals
    def stop(self) -> None:
        """Ask the service to stop (SIGTERM/SIGINT); a reload in progress is abandoned."""
        self._stop.set()
        for task in list(self._reloading):
            task.cancel()

    def request_reload(self) -> None:
        """SIGHUP: reopen the log file at once, then reload the artifact in the background."""
        if self._stop.is_set():
            return
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

        Loading runs in a daemon thread, so the feed keeps being served meanwhile and a stop does not wait
        for it. Reloads run one at a time, in arrival order.
        """
        path = self.cfg.model.artifact
        async with self._reload_lock:
            try:
                model = await _in_thread(self._load_model, path)
                policy = check_model(self.cfg, model)
            except asyncio.CancelledError:
                self.log.warning("model_reload_cancelled", artifact=path, model=self.model.id)
                raise
            except Exception as exc:  # noqa: BLE001 - whatever fails, the old model keeps serving, and it is logged
                self.log.error("model_reload_failed", artifact=path, error=str(exc) or repr(exc), model=self.model.id)
                return False
            old, self.model, self.policy = self.model, model, policy
            for pipeline in self.pipelines.values():
                pipeline.set_model(model, policy)
            self.supervision.on_model(model)
            self.reloads += 1
            self.log.info("model_reloaded", artifact=path, old_model=old.id, model=model.id,
                          kernel=model.kernel_note)
            return True

    # ------------------------------------------------------------------ status
    def status(self) -> ServiceStatus:
        """A snapshot for the satellites; every total read from its owner."""
        stats = self.feed.stats
        ps = self.pipelines.values()
        return ServiceStatus(
            symbols=tuple(self.pipelines), interval=self.cfg.feed.interval,
            model_id=self.model.id if self.model is not None else None,
            feed_connected=stats.connected, feed_subscribed=stats.subscribed,
            warming_up=sum(p.awaiting_warmup for p in ps),
            frames=stats.frames, malformed=stats.malformed, reconnects=max(0, stats.connects - 1),
            signals=self.writer.written, signals_by_class=dict(self.writer.by_class),
            signals_suppressed=self.writer.suppressed,
            duplicates=sum(p.duplicates for p in ps), gaps_backfilled=sum(p.gaps_backfilled for p in ps),
            bars_backfilled=sum(p.bars_backfilled for p in ps), bars_unfilled=sum(p.bars_unfilled for p in ps),
            resets=sum(p.resets for p in ps), held=sum(p.held for p in ps))

    async def _summaries(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.log.latency_summary_s)
            self.log_summary()

    def log_summary(self) -> None:
        """Log ``latency_summary`` with counters of the period and the totals so far."""
        st = self.status()
        self.log.info("latency_summary", **(self.writer.latency.take() or {"n": 0}), signals=st.signals,
                      frames=st.frames, malformed=st.malformed, reconnects=st.reconnects,
                      gaps_backfilled=st.gaps_backfilled, bars_backfilled=st.bars_backfilled,
                      bars_unfilled=st.bars_unfilled, duplicates=st.duplicates, resets=st.resets,
                      by_class=dict(st.signals_by_class))

    # ------------------------------------------------------------------ main
    async def run(self) -> None:
        """Run until :meth:`stop`; the warm-up fetches start at once, alongside the feed."""
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
                          config=self.cfg.source, cpus=format_cpu_list(os.sched_getaffinity(0)),
                          sink_cpus=format_cpu_list(self.sinks.cpus) if self.sinks and self.sinks.cpus else None,
                          **self.policy.describe())
            if self.cfg.cpu.daemon and self.sinks and not self.sinks.cpus:
                self.log.warning("sink_process_shares_daemon_cpus", cpus=format_cpu_list(os.sched_getaffinity(0)))
            if self.cfg.metrics.beyond_loopback:
                self.log.warning("metrics_beyond_loopback", host=self.cfg.metrics.host, port=self.cfg.metrics.port)
            self.writer.attach(asyncio.get_running_loop())  # stdout writes never block the loop
            try:
                async with asyncio.TaskGroup() as tg:
                    self._tg = tg
                    if not self._stop.is_set():
                        self.sinks.start(asyncio.get_running_loop())  # before any line (run() restarts it)
                        for pipeline in self.pipelines.values():
                            if pipeline.resync():
                                self._pump(pipeline)
                        tg.create_task(self.feed.run(), name="feed")
                        tg.create_task(self._summaries(), name="latency-summary")
                        tg.create_task(self.supervision.run(), name="supervision")
                        tg.create_task(self.sinks.run(), name="sinks")
                    self.started.set()
                    await self._stop.wait()
                    self.supervision.stopping()
                    await self.sinks.drain(timeout_s=2.0)  # lines already on stdout reach the sinks that are up
                    raise _Stop
            except* _Stop:
                pass
            finally:
                self._tg = None
                self.writer.detach()
        self._log_held()
        self.log_summary()
        self.log.info("daemon_stopped", signals=self.writer.written,
                      uptime_s=round(asyncio.get_running_loop().time() - started_s, 3))

    def _log_held(self) -> None:
        held = {s: p.held for s, p in self.pipelines.items() if p.held}
        if held:  # closes that were waiting for a fetch: never signalled, say so
            self.log.warning("closes_dropped_at_stop", closes=sum(held.values()), by_symbol=held)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the run options."""
    parser.add_argument("--config", default="config.toml", help="TOML configuration file (default config.toml)")


async def _main(service: Service, early: EarlySignals | None = None) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, service.stop)
    loop.add_signal_handler(signal.SIGINT, service.stop)
    loop.add_signal_handler(signal.SIGHUP, service.request_reload)
    if early is not None and early.stop_requested:
        service.stop()
    try:
        await service.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)  # this puts the default action back, which would end us with 129
        if early is not None:
            early.catch()


def run_cli(args: argparse.Namespace) -> int:
    """Load the configuration and the artifact, then serve until SIGTERM/SIGINT."""
    early = early_signals.install()  # normally already done by daemon.cli, before the imports
    try:
        return _run(args, early)
    finally:
        early.restore()


def _run(args: argparse.Namespace, early: EarlySignals) -> int:
    try:
        cfg = load_config(args.config)
        sink_cpus = apply_cpu_config(cfg.cpu.daemon, cfg.cpu.sinks)  # first: later threads and children inherit it
        model = Model.load(cfg.model.artifact, kernel=cfg.model.kernel, kernel_dir=cfg.model.kernel_dir)
        check_model(cfg, model)
        log_file = configure_logging(cfg.log.file, cfg.log.level, cfg.log.format)
        # Reads the sinks' secrets: a missing one is a configuration error.
        sinks = SinkProcess.from_config(cfg, cpus=sink_cpus)
    except (ConfigError, ArtifactError, StartupError, OSError) as exc:
        print(f"kdsignal run: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if early.stop_requested:  # stopped while loading: nothing was started, nothing to flush
        if log_file is not None:
            with contextlib.suppress(OSError):
                log_file.close()
        return EXIT_OK
    if cfg.model.pid_file:  # lets `kdsignal retrain`/`rollback` SIGHUP us after switching models
        write_pid_file(cfg.model.pid_file)
    try:
        service = Service(cfg, model, log_file=log_file, sinks=sinks)
        asyncio.run(_main(service, early))
    finally:
        if cfg.model.pid_file:
            remove_pid_file(cfg.model.pid_file)
        if log_file is not None:
            with contextlib.suppress(OSError):
                log_file.flush()
                log_file.close()
    return EXIT_OK
