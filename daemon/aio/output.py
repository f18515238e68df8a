"""Signal output and logging: whole JSON lines on stdout, the same events in a structlog log (JSON or console).

- :class:`SignalWriter` writes each signal as one line with a single write of bytes (a signal handler
  never runs in the middle of it: SIGTERM is handled by the event loop), records the
  frame-received-to-line-written latency, then logs ``signal_emitted`` with the same fields. A signal
  whose probabilities are not all finite is never printed: it is logged as ``signal_nonfinite`` and
  counted. Live, :meth:`SignalWriter.attach` makes stdout non-blocking: each line is one ``os.write``
  attempt, and what a slow reader cannot take waits in a bounded buffer that the event loop drains when
  the pipe has room (``loop.add_writer``). When the buffer is full, or the reader is gone, lines are
  dropped and counted (``dropped``, a rate-limited ``signal_dropped`` log event); the log file still has
  every signal, and the loop never blocks, so pings, fills and SIGTERM keep being served. Replay and tests
  use the writer without :meth:`attach`: plain blocking writes to any binary stream.
- :func:`configure_logging` sets structlog up once at start-up to render log lines into a
  :class:`ReopenableFile` (or a :class:`LogSink` on stderr when no file is configured): JSON, or structlog's
  console renderer for a person (``[log] format``; ``auto`` picks the console renderer when the log goes to a
  terminal). When stderr is systemd's journal stream (``JOURNAL_STREAM`` names its device and inode, see
  :func:`journal_stderr`), every line written to stderr starts with its sd-daemon priority (``<4>`` for a
  warning, sd-daemon(3)), so ``journalctl -p warning`` selects by level. A sink never
  raises: a failed write (a full disk, EIO) is counted, reported on stderr at most every
  ``notice_every_s``, and leaves the sink ``degraded`` until a write succeeds again; ``reopen()`` on SIGHUP
  lets logrotate move the file away and keeps the old handle when the new one cannot be opened.
  :func:`log_sink` returns the sink in use, for health checks.
- :class:`LatencyStats` keeps the latencies of one summary period for the ``latency_summary`` event.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import sys
import threading
import time
from time import perf_counter_ns
from typing import BinaryIO

import structlog

from daemon.core.config import LOG_FORMATS
from daemon.core.pipeline import Signal

__all__ = ["LatencyStats", "LogSink", "ReopenableFile", "SignalWriter", "configure_logging",
           "journal_priority", "journal_stderr", "log_sink"]


class LogSink:
    """A log target written one whole line per ``os.write``; it never raises, it counts what it lost.

    ``degraded`` is True while the latest write failed; ``write_errors`` counts failed writes (lines lost);
    ``last_error`` names the latest failure. :meth:`status` gives the three (and the path) as a dict.
    """

    def __init__(self, fd: int, path: str, *, notice_every_s: float = 10.0, notices_fd: int | None = 2,
                 notice_prefix: str = "") -> None:
        self.path = path
        self._fd = fd
        self._lock = threading.Lock()
        self.write_errors = 0
        self.degraded = False
        self.last_error: str | None = None
        self.notice_every_s = notice_every_s
        self._notices_fd = notices_fd  # where failures are reported (None: nowhere, the sink *is* stderr)
        self.notice_prefix = notice_prefix  # "<4>" when the notices go to the journal: a warning
        self._noticed_at = -float("inf")
        self._noticed_errors = 0

    def write(self, text: str) -> int:
        """Write ``text`` (one rendered log line); on failure count it and report it, never raise."""
        data = text.encode("utf-8", "replace")
        try:
            with self._lock:  # a worker thread may log too: lines must not interleave
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
        except OSError as exc:
            self._failed(exc)
            return 0
        if self.degraded:
            self.degraded = False
        return len(data)

    def flush(self) -> None:
        """Nothing to do: every line went out with its own system call."""

    def status(self) -> dict:
        """What a health check shows: ``{"path", "degraded", "write_errors", "last_error"}``."""
        return {"path": self.path, "degraded": self.degraded, "write_errors": self.write_errors,
                "last_error": self.last_error}

    def _failed(self, exc: OSError) -> None:
        self.write_errors += 1
        self.degraded = True
        name = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else type(exc).__name__
        self.last_error = f"{name}: {exc.strerror or exc}"
        now = time.monotonic()
        if self._notices_fd is None or now - self._noticed_at < self.notice_every_s:
            return
        lost = self.write_errors - self._noticed_errors
        self._noticed_at, self._noticed_errors = now, self.write_errors
        notice = (f"{self.notice_prefix}kdsignal: cannot write the log {self.path} ({self.last_error}); {lost} "
                  f"line(s) lost since the last notice, {self.write_errors} in all; signals continue on stdout\n")
        with contextlib.suppress(OSError):  # stderr gone too: nowhere left to say it
            os.write(self._notices_fd, notice.encode())

    def close(self) -> None:
        """Nothing owned here (the stderr sink); files override it."""


class ReopenableFile(LogSink):
    """An append-mode log file that can be opened again under the same name (logrotate)."""

    def __init__(self, path: str | os.PathLike, **kwargs) -> None:
        path = os.fspath(path)
        super().__init__(self._open(path), path, **kwargs)

    @staticmethod
    def _open(path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)

    def reopen(self) -> bool:
        """Open the path afresh (a rotated file is left to the rotator), then close the old handle.

        When the path cannot be opened (its folder gone, no space for a new inode, ...) the old handle is
        kept, the failure counted like a failed write, and False returned.
        """
        try:
            new = self._open(self.path)
        except OSError as exc:
            self._failed(exc)
            return False
        with self._lock:
            old, self._fd = self._fd, new
        os.close(old)
        return True

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


_sink: LogSink | None = None


def log_sink() -> LogSink | None:
    """The sink :func:`configure_logging` set up (the file, or stderr), for health checks; None before."""
    return _sink


# sd-daemon(3) priorities (syslog's): what journald files a "<N>"-prefixed stderr line under.
_PRIORITY = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4, "info": 6, "debug": 7}


def journal_priority(level: str) -> int:
    """The sd-daemon priority of a structlog level name (``"warning"`` -> 4); unknown names are notices (5)."""
    return _PRIORITY.get(level, 5)


def journal_stderr(fd: int = 2, env=None) -> bool:
    """True when ``fd`` is the stream systemd connected to the journal.

    systemd sets ``JOURNAL_STREAM=<device>:<inode>`` for a service whose stdout or stderr is the journal;
    the variable is inherited by child processes whose stderr may go elsewhere, so the descriptor's own
    device and inode must match it (what sd-daemon(3) and systemd.exec(5) prescribe).
    """
    raw = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    dev, sep, ino = raw.partition(":")
    if not sep or not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class _JournalPrefix:
    """Render with ``renderer``, then start every line of the result with the event's ``<N>`` priority."""

    def __init__(self, renderer) -> None:
        self.renderer = renderer

    def __call__(self, logger, method_name: str, event_dict: dict) -> str:
        prefix = f"<{journal_priority(event_dict.get('level', method_name))}>"
        text = self.renderer(logger, method_name, event_dict)
        # A console traceback spans lines and journald files each line as its own entry.
        return prefix + text.replace("\n", "\n" + prefix)


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def configure_logging(file: str = "", level: str = "info", fmt: str = "auto") -> ReopenableFile | None:
    """Configure structlog once at start-up: ``file`` (stderr when empty), ``level``, ``fmt``; return the file.

    ``fmt`` is ``"json"`` (one JSON object a line), ``"console"`` (structlog's ConsoleRenderer, coloured on a
    terminal) or ``"auto"`` (console when the log goes to a terminal, JSON otherwise: a file, a pipe, the
    journal). On the journal's stream each stderr line starts with its sd-daemon priority. Raises
    ``OSError`` when the file cannot be opened at all (the caller exits with a configuration error).
    """
    global _sink
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format is {fmt!r}, expected one of {', '.join(LOG_FORMATS)}")
    try:
        stderr_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a replaced sys.stderr (tests): the process's own
        stderr_fd = 2
    journal = journal_stderr(stderr_fd)
    if file:
        _sink = sink = ReopenableFile(file, notices_fd=stderr_fd, notice_prefix="<4>" if journal else "")
    else:
        sink = None
        _sink = LogSink(stderr_fd, "<stderr>", notices_fd=None)
    tty = _isatty(_sink._fd)
    console = fmt == "console" or (fmt == "auto" and tty)
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if console:
        # The console renderer formats exceptions itself (and warns when format_exc_info came first).
        renderer = structlog.dev.ConsoleRenderer(colors=tty)
    else:
        processors.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    processors.append(_JournalPrefix(renderer) if journal and sink is None else renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=_sink),
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
    """Write signal lines to a binary stream and log them; the same writer serves live and replay.

    Counters: ``written`` (lines handed to the output), ``dropped`` (lines the output could not take),
    ``nonfinite`` (signals refused because a probability was not finite), ``by_class``, ``suppressed``
    (signals the decision policy's ``emit`` mode kept back).
    """

    def __init__(self, stream: BinaryIO | None = None, log=None, publish=None, *,
                 max_pending_bytes: int = 256 << 10, notice_every_s: float = 10.0) -> None:
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.log = log
        # Sinks (daemon.aio.sinks.process.SinkProcess.publish): each line's bytes after stdout, one pipe write.
        self.publish = publish
        self.last_latency_ns = 0  # of the last live line (0 for a backfilled one); the metrics histogram reads it
        self.latency = LatencyStats()
        self.by_class: dict[str, int] = {}
        self.written = 0
        self.dropped = 0
        self.nonfinite = 0
        self.suppressed = 0
        self.max_pending_bytes = max_pending_bytes
        self.notice_every_s = notice_every_s
        self._fd: int | None = None  # set while attached: the non-blocking path
        self._flags: int | None = None
        self._loop = None
        self._pending = bytearray()  # bytes a slow reader has not taken yet (whole lines, plus one line's tail)
        self._broken = False
        self._noticed_at = -float("inf")
        self._noticed_drops = 0

    # ------------------------------------------------------------------ live (non-blocking) mode
    def attach(self, loop) -> bool:
        """Make the stream's fd non-blocking and drain what a slow reader leaves through ``loop``.

        Returns False (and stays blocking) for a stream without a file descriptor. :meth:`detach`
        restores the fd's flags: the open file description may be shared with the parent (a terminal).
        """
        try:
            fd = self.stream.fileno()
            self.stream.flush()
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
            return False
        self._fd, self._flags, self._loop = fd, flags, loop
        return True

    def detach(self) -> None:
        """One last non-blocking attempt at what is pending (the rest is counted as dropped), then restore
        the fd's flags. A stuck reader cannot hold up the exit."""
        fd = self._fd
        if fd is None:
            return
        if self._pending:
            self._drain()
        if self._pending:
            self._lose_pending("stdout still full at exit")
        self._fd = None
        with contextlib.suppress(OSError):  # the reader may have closed the descriptor already
            fcntl.fcntl(fd, fcntl.F_SETFL, self._flags)
        self._loop = None

    @property
    def pending_bytes(self) -> int:
        """Bytes waiting for a slow reader."""
        return len(self._pending)

    # ------------------------------------------------------------------ hot path
    def write(self, sig: Signal) -> None:
        """Write one whole line, then record its latency and log the event (nothing if the policy's ``emit``
        keeps it back: stdout, the log and the sinks see the same lines)."""
        if not sig.emit:
            self.suppressed += 1
            self.last_latency_ns = 0
            return
        # One test for every class (NaN and inf survive the sum, and times 0.0 they are NaN): never print them.
        if sum(sig.probs) * 0.0 != 0.0:
            self._refuse_nonfinite(sig)
            return
        line = sig.to_line().encode()
        fd = self._fd
        if fd is None:
            stream = self.stream
            stream.write(line)
            stream.flush()
            self.written += 1
        elif not self._pending and not self._broken:
            try:
                n = os.write(fd, line)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                self._output_failed(exc)
                self._drop(1, f"stdout failed: {exc.strerror or exc}")
                n = -1
            if n == len(line):
                self.written += 1
            elif n >= 0:
                self._enqueue(line, n)
        else:
            self._enqueue(line, 0)
        if sig.recv_ns:
            self.last_latency_ns = ns = perf_counter_ns() - sig.recv_ns
            self.latency.add(ns)
        else:
            self.last_latency_ns = 0
        if self.publish is not None:
            self.publish(line)
        self.by_class[sig.signal] = self.by_class.get(sig.signal, 0) + 1
        if self.log is not None:
            self.log.info("signal_emitted", **sig.fields())

    # ------------------------------------------------------------------ slow paths
    def _refuse_nonfinite(self, sig: Signal) -> None:
        self.nonfinite += 1
        if self.log is not None:
            self.log.error("signal_nonfinite", symbol=sig.symbol, interval=sig.interval, start=sig.start_ms,
                           signal=sig.signal, probs={k: repr(v) for k, v in zip(sig.classes, sig.probs, strict=True)},
                           model=sig.model, nonfinite_total=self.nonfinite)

    def _enqueue(self, line: bytes, sent: int) -> None:
        # The tail of a line that went out in part must follow it, or stdout would carry half a line.
        if self._broken:
            self._drop(1, "stdout closed by its reader")
            return
        if sent == 0 and len(self._pending) + len(line) > self.max_pending_bytes:
            self._drop(1, "stdout reader too slow: buffer full")
            return
        was_empty = not self._pending
        self._pending += line[sent:] if sent else line
        self.written += 1
        if was_empty and self._loop is not None:
            self._loop.add_writer(self._fd, self._drain)

    def _drain(self) -> None:
        pending = self._pending
        while pending:
            try:
                n = os.write(self._fd, pending)
            except BlockingIOError:
                return
            except OSError as exc:
                self._output_failed(exc)
                return
            del pending[:n]
        if self._loop is not None:
            self._loop.remove_writer(self._fd)

    def _output_failed(self, exc: OSError) -> None:
        # EPIPE: the reader is gone for good; any other error is treated the same (the line cannot go out).
        self._broken = True
        if self._pending:
            self._lose_pending(f"stdout failed: {exc.strerror or exc}")

    def _lose_pending(self, reason: str) -> None:
        lines = max(1, self._pending.count(b"\n"))
        self._pending.clear()
        self.written -= lines
        if self._loop is not None and self._fd is not None:
            self._loop.remove_writer(self._fd)
        self._drop(lines, reason)

    def _drop(self, lines: int, reason: str) -> None:
        self.dropped += lines
        now = time.monotonic()
        if self.log is None or now - self._noticed_at < self.notice_every_s:
            return
        since = self.dropped - self._noticed_drops
        self._noticed_at, self._noticed_drops = now, self.dropped
        self.log.warning("signal_dropped", reason=reason, dropped_since_last=since, dropped_total=self.dropped,
                         pending_bytes=len(self._pending))
