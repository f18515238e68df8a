"""Sinks: every signal line written to stdout also goes to Redis Streams, NATS subjects or webhooks.

The service holds a :class:`daemon.aio.sinks.process.SinkProcess`: the signal writer calls its ``publish``
with the bytes of each line right after writing them to stdout (one non-blocking write to a pipe), and the
sinks run in a process of their own (:mod:`daemon.aio.sinks.worker`), so neither their work nor their
event loop's turns compete with the daemon's. There, :class:`SinkSet` runs one worker per sink
(:mod:`daemon.aio.sinks.base`). Both offer the same view: ``sinks`` (objects with the counters),
``collector()`` for ``/metrics`` and ``health()`` for ``/healthz``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from daemon.aio.sinks.base import Sink
from daemon.core.config import BackoffConfig, Config
from daemon.core.sinks_config import SinkConfig, read_secret

__all__ = ["Sink", "SinkGroup", "SinkSet", "build_sink", "make_sink"]


def make_sink(cfg: SinkConfig, *, backoff: BackoffConfig | None = None, log=None,
              environ: dict | None = None) -> Sink:
    """Build the sink a ``[[sink]]`` table describes; its secret is read now (``ConfigError`` if missing)."""
    return build_sink(cfg, secret=read_secret(cfg, environ), backoff=backoff, log=log)


def build_sink(cfg: SinkConfig, *, secret: str | None, backoff: BackoffConfig | None = None, log=None) -> Sink:
    """Build the sink a ``[[sink]]`` table describes, with its secret already read."""
    if cfg.kind == "redis":
        from daemon.aio.sinks.redis import RedisSink as cls
    elif cfg.kind == "nats":
        from daemon.aio.sinks.nats import NatsSink as cls
    else:
        from daemon.aio.sinks.webhook import WebhookSink as cls
    return cls(cfg, password=secret, backoff=backoff, log=log)


class SinkGroup:
    """What /metrics and /healthz read: ``sinks``, each with name, kind, up, last_error, the counters and
    ``health()``."""

    sinks: list
    restarts: int | None = None  # of the sink process (None: the sinks run in this process)

    def __len__(self) -> int:
        return len(self.sinks)

    def health(self) -> tuple[list[str], dict]:
        """(problems, ``{name: details}``) for ``/healthz``: a sink that is down is a problem."""
        problems = []
        for s in self.sinks:
            if not s.up:
                problems.append(f"sink {s.name} ({s.kind}) down: {s.last_error}")
        return problems, {s.name: s.health() for s in self.sinks}

    def collector(self) -> Collector:
        """A Prometheus collector of the per-sink counters, read at scrape time."""
        return _SinkCollector(self)


class SinkSet(SinkGroup):
    """Sinks running in this event loop (the sink process's); empty (and free) without ``[[sink]]``."""

    def __init__(self, sinks: Iterable[Sink] = ()) -> None:
        self.sinks = list(sinks)
        self._offers = tuple(s.offer for s in self.sinks)

    @classmethod
    def from_config(cls, cfg: Config, log=None, environ: dict | None = None) -> SinkSet:
        """The sinks of ``cfg.sinks`` with ``cfg.backoff``; raises ``ConfigError`` for a missing secret."""
        return cls(make_sink(s, backoff=cfg.backoff, log=log, environ=environ) for s in cfg.sinks)

    def publish(self, line: bytes) -> None:
        """Hand one written stdout line to every sink (never blocks; a full queue drops and counts)."""
        for offer in self._offers:
            offer(line)

    async def run(self) -> None:
        """Run every sink's worker until cancelled."""
        if not self.sinks:
            return
        async with asyncio.TaskGroup() as tg:
            for s in self.sinks:
                tg.create_task(s.run(), name=f"sink-{s.name}")

    async def drain(self, timeout_s: float = 2.0) -> None:
        """On a clean stop: give the sinks that are up ``timeout_s`` to send what is queued."""
        await asyncio.gather(*(s.drain(timeout_s) for s in self.sinks))



class _SinkCollector(Collector):
    def __init__(self, sinks: SinkGroup) -> None:
        self._sinks = sinks

    def collect(self) -> Iterator:
        labels = ["sink", "kind"]
        counters = (
            ("sent", "Signal lines the sink delivered"),
            ("dropped", "Signal lines dropped: the sink's queue or the pipe to the sink process was full, "
                        "or the sink process was down"),
            ("errors", "Failed connects and sends (each followed by a reconnect)"),
            ("rejected", "Signal lines the receiver refused for good (webhook 4xx)"),
            ("connects", "Successful connects, the first one included"),
        )
        for attr, text in counters:
            family = CounterMetricFamily(f"kdsignal_sink_{attr}", text, labels=labels)
            for s in self._sinks.sinks:
                family.add_metric([s.name, s.kind], getattr(s, attr))
            yield family
        up = GaugeMetricFamily("kdsignal_sink_up", "1 while the sink is connected", labels=labels)
        queued = GaugeMetricFamily("kdsignal_sink_queued", "Signal lines waiting for the sink", labels=labels)
        for s in self._sinks.sinks:
            up.add_metric([s.name, s.kind], 1.0 if s.up else 0.0)
            queued.add_metric([s.name, s.kind], s.queued)
        yield up
        yield queued
        restarts = self._sinks.restarts
        if restarts is not None:
            family = CounterMetricFamily("kdsignal_sink_process_restarts", "Times the sink process was restarted")
            family.add_metric([], restarts)
            yield family
