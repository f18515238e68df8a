"""Sinks: every signal line written to stdout also goes to Redis Streams, NATS subjects or webhooks.

:class:`SinkSet` is what the service holds. The signal writer calls :meth:`SinkSet.publish` with the bytes
of each line right after writing them to stdout (a deque append per sink, no ``await``); :meth:`SinkSet.run`
is a task of the service's task group, running one worker per sink (:mod:`daemon.aio.sinks.base`);
:meth:`SinkSet.collector` feeds ``/metrics`` and :meth:`SinkSet.health` feeds ``/healthz``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from daemon.aio.sinks.base import Sink
from daemon.core.config import BackoffConfig, Config
from daemon.core.sinks_config import SinkConfig, read_secret

__all__ = ["Sink", "SinkSet", "make_sink"]


def make_sink(cfg: SinkConfig, *, backoff: BackoffConfig | None = None, log=None,
              environ: dict | None = None) -> Sink:
    """Build the sink a ``[[sink]]`` table describes; its secret is read now (``ConfigError`` if missing)."""
    secret = read_secret(cfg, environ)
    if cfg.kind == "redis":
        from daemon.aio.sinks.redis import RedisSink as cls
    elif cfg.kind == "nats":
        from daemon.aio.sinks.nats import NatsSink as cls
    else:
        from daemon.aio.sinks.webhook import WebhookSink as cls
    return cls(cfg, password=secret, backoff=backoff, log=log)


class SinkSet:
    """All configured sinks; empty (and free) when the configuration has no ``[[sink]]``."""

    def __init__(self, sinks: Iterable[Sink] = ()) -> None:
        self.sinks = list(sinks)
        self._offers = tuple(s.offer for s in self.sinks)

    @classmethod
    def from_config(cls, cfg: Config, log=None, environ: dict | None = None) -> SinkSet:
        """The sinks of ``cfg.sinks`` with ``cfg.backoff``; raises ``ConfigError`` for a missing secret."""
        return cls(make_sink(s, backoff=cfg.backoff, log=log, environ=environ) for s in cfg.sinks)

    def __len__(self) -> int:
        return len(self.sinks)

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


class _SinkCollector(Collector):
    def __init__(self, sinks: SinkSet) -> None:
        self._sinks = sinks

    def collect(self) -> Iterator:
        labels = ["sink", "kind"]
        counters = (
            ("sent", "Signal lines the sink delivered"),
            ("dropped", "Signal lines dropped because the sink's queue was full"),
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
