"""Signal output and logging: whole JSON lines on stdout, the same events in a structlog JSON log file.

- :class:`SignalWriter` writes each signal as one line with a single ``write`` + ``flush`` of bytes (a
  signal handler never runs in the middle of it: SIGTERM is handled by the event loop), records the
  frame-received-to-line-written latency, then logs ``signal_emitted`` with the same fields.
- :func:`configure_logging` sets structlog up once at start-up to render JSON lines into a
  :class:`ReopenableFile` (or stderr when no file is configured); ``reopen()`` on SIGHUP lets logrotate
  move the file away.
- :class:`LatencyStats` keeps the latencies of one summary period for the ``latency_summary`` event.
"""

from __future__ import annotations

import logging
import os
import sys
from time import perf_counter_ns
from typing import BinaryIO

import structlog

from daemon.core.pipeline import Signal

__all__ = ["LatencyStats", "ReopenableFile", "SignalWriter", "configure_logging"]


class ReopenableFile:
    """An append-mode text file that can be closed and opened again under the same name (logrotate)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - owned for the process lifetime

    def write(self, text: str) -> int:
        """Write text to the current file."""
        return self._file.write(text)

    def flush(self) -> None:
        """Flush the current file."""
        self._file.flush()

    def reopen(self) -> None:
        """Open the path afresh (a rotated file is left to the rotator), then close the old handle."""
        new = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        old, self._file = self._file, new
        old.close()

    def close(self) -> None:
        """Flush and close."""
        self._file.close()


def configure_logging(file: str = "", level: str = "info") -> ReopenableFile | None:
    """Configure structlog to write JSON lines to ``file`` (stderr when empty); return the file handle."""
    sink = ReopenableFile(file) if file else None
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=sink if sink is not None else sys.stderr),
        cache_logger_on_first_use=False,
    )
    return sink


class LatencyStats:
    """Latencies (ns) of the current summary period; :meth:`take` returns p50/p99/max in µs and resets."""

    def __init__(self) -> None:
        self._ns: list[int] = []
        self.total = 0

    def add(self, ns: int) -> None:
        """Record one latency in nanoseconds."""
        self._ns.append(ns)
        self.total += 1

    def take(self) -> dict | None:
        """Summarise and reset; None when nothing was recorded."""
        if not self._ns:
            return None
        xs = sorted(self._ns)
        self._ns = []
        n = len(xs)

        def q(p: float) -> float:
            return round(xs[min(n - 1, int(p * n))] / 1000.0, 3)

        return {"n": n, "p50_us": q(0.50), "p99_us": q(0.99), "max_us": round(xs[-1] / 1000.0, 3)}


class SignalWriter:
    """Write signal lines to a binary stream and log them; the same writer serves live and replay."""

    def __init__(self, stream: BinaryIO | None = None, log=None, publish=None) -> None:
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.log = log
        # Sinks (daemon.aio.sinks.SinkSet.publish): gets each line's bytes after stdout, never blocks.
        self.publish = publish
        self.last_latency_ns = 0  # of the last live line (0 for a backfilled one); the metrics histogram reads it
        self.latency = LatencyStats()
        self.by_class: dict[str, int] = {}
        self.written = 0

    def write(self, sig: Signal) -> None:
        """Write one whole line, then record its latency and log the event."""
        stream = self.stream
        line = sig.to_line().encode()
        stream.write(line)
        stream.flush()
        if sig.recv_ns:
            self.last_latency_ns = ns = perf_counter_ns() - sig.recv_ns
            self.latency.add(ns)
        else:
            self.last_latency_ns = 0
        if self.publish is not None:
            self.publish(line)
        self.written += 1
        self.by_class[sig.signal] = self.by_class.get(sig.signal, 0) + 1
        if self.log is not None:
            self.log.info("signal_emitted", **sig.fields())
