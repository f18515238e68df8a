"""The sink process: the sinks' event loop, apart from the daemon's, fed by a pipe of signal lines.

Started by :class:`daemon.aio.sinks.process.SinkProcess` as ``python -m daemon.aio.sinks.worker``. Its stdin
is the line pipe: the first line is a JSON description of the sinks (their ``[[sink]]`` tables, secrets and
``[backoff]``: secrets travel through the pipe, never argv), then come the signal lines exactly as written
to stdout. Its stdout is the status pipe back to the daemon: small JSON lines, the sinks' counters when they
changed (at most every ``REPORT_EVERY_S``, and every second regardless) and their log events as they happen,
which the daemon logs as its own. Lines are read with ``loop.add_reader`` and offered to every sink
(:class:`daemon.aio.sinks.SinkSet`) as they arrive, so each sink's worker sends a burst while it is still
being written.

It ends when stdin reaches EOF: on a clean stop the daemon closes the pipe and the sinks get ``drain_s`` to
send what they hold; if the daemon dies, EOF comes too, and the kernel kills this process at once
(``PR_SET_PDEATHSIG``). SIGINT and SIGTERM are ignored (a Ctrl-C on the terminal or systemd's stop reaches
the whole group): the daemon decides when the sinks stop, so lines already on stdout still go out. It asks
for the ``SCHED_BATCH`` policy where allowed, so that a line waking it does not preempt the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from dataclasses import asdict

__all__ = ["INIT_MAX_BYTES", "LineReader", "StatusPipe", "encode_init", "main"]

REPORT_EVERY_S = 0.1
HEARTBEAT_S = 1.0
INIT_MAX_BYTES = 1 << 20
# A status line longer than this could be written in part (PIPE_BUF is the kernel's atomic write size).
_PIPE_BUF = 4096
_PR_SET_PDEATHSIG = 1
_LINE_MAX_BYTES = 1 << 20  # a "line" longer than this without a newline is garbage: dropped


def encode_init(configs, secrets, backoff, drain_s: float) -> bytes:
    """The first line the daemon writes to the sink process: sink tables, their secrets, backoff, drain time."""
    sinks = [{"config": asdict(c), "secret": s} for c, s in zip(configs, secrets, strict=True)]
    return json.dumps({"sinks": sinks, "backoff": asdict(backoff), "drain_s": drain_s}).encode() + b"\n"


def _die_with_parent(parent_pid: int | None) -> None:
    # The kernel sends SIGKILL when the daemon dies; if it died before this call, exit now.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(0)


def _batch_scheduling() -> None:
    # SCHED_BATCH: woken by a line, this process does not preempt the daemon that wrote it (the kernel skips
    # wake-up preemption for batch tasks), so the daemon finishes its burst first. A seccomp filter that
    # refuses sched_setscheduler (~@resources; the shipped units allow it back) leaves the normal policy.
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


class StatusPipe:
    """Non-blocking JSON lines to the daemon; a message the pipe cannot take now is dropped and counted."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lost = 0
        os.set_blocking(fd, False)

    def send(self, msg: dict) -> None:
        """Write one message as one line (whole or not at all)."""
        data = json.dumps(msg, default=str).encode() + b"\n"
        if len(data) > _PIPE_BUF:
            self.lost += 1
            return
        try:
            os.write(self.fd, data)
        except OSError:  # full (the daemon is busy) or gone (EOF on stdin follows)
            self.lost += 1


class PipeLog:
    """The slice of structlog's bound-logger interface the sinks use, sending each event to the daemon."""

    def __init__(self, send, context: dict | None = None) -> None:
        self._send, self._context = send, context or {}

    def bind(self, **kw) -> PipeLog:
        return PipeLog(self._send, {**self._context, **kw})

    def _emit(self, level: str, event: str, kw: dict) -> None:
        self._send({"t": "log", "level": level, "event": event, **self._context, **kw})

    def info(self, event: str, **kw) -> None:
        self._emit("info", event, kw)

    def warning(self, event: str, **kw) -> None:
        self._emit("warning", event, kw)

    def error(self, event: str, **kw) -> None:
        self._emit("error", event, kw)


class LineReader:
    """Split what the pipe delivers into lines (each with its newline) and hand each to ``publish``."""

    def __init__(self, fd: int, publish, on_eof) -> None:
        self.fd, self.publish, self.on_eof = fd, publish, on_eof
        self.received = 0
        self.garbage = 0
        self._buf = bytearray()

    def on_readable(self) -> None:
        """Read what is there (one call per wake-up, up to 64 KiB) and publish every whole line."""
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.on_eof()
            return
        self.feed(data)

    def feed(self, data: bytes) -> None:
        """Publish the whole lines of ``data`` (after what an earlier call left), keep the rest."""
        buf = self._buf
        buf += data
        end = buf.rfind(b"\n")
        if end < 0:
            if len(buf) > _LINE_MAX_BYTES:
                self.garbage += 1
                buf.clear()
            return
        chunk = bytes(buf[:end])
        del buf[:end + 1]
        publish = self.publish
        for line in chunk.split(b"\n"):
            publish(line + b"\n")
            self.received += 1


def _status(sinks, reader: LineReader, pipe: StatusPipe) -> dict:
    return {"t": "status", "received": reader.received, "status_lost": pipe.lost,
            "sinks": [{"sent": s.sent, "dropped": s.dropped, "errors": s.errors, "rejected": s.rejected,
                       "connects": s.connects, "up": s.up, "queued": s.queued,
                       "down_s": s.health()["down_s"], "last_error": (s.last_error or "")[:300]}
                      for s in sinks.sinks]}


async def _report(sinks, reader: LineReader, pipe: StatusPipe) -> None:
    last, sent_at = None, 0.0
    while True:
        await asyncio.sleep(REPORT_EVERY_S)
        msg = _status(sinks, reader, pipe)
        key = json.dumps(msg["sinks"]) + str(reader.received)
        now = time.monotonic()
        if key != last or now - sent_at >= HEARTBEAT_S:
            pipe.send(msg)
            last, sent_at = key, now


async def serve(init: dict, in_fd: int = 0, out_fd: int = 1, rest: bytes = b"") -> None:
    """Run the sinks ``init`` describes on lines from ``in_fd`` (``rest``: bytes already read) until EOF,
    reporting on ``out_fd``."""
    from daemon.aio.sinks import SinkSet, build_sink
    from daemon.core.config import BackoffConfig
    from daemon.core.sinks_config import KINDS

    pipe = StatusPipe(out_fd)
    log = PipeLog(pipe.send)
    backoff = BackoffConfig(**init["backoff"])
    sinks = SinkSet(build_sink(KINDS[d["config"]["kind"]](**d["config"]), secret=d["secret"], backoff=backoff,
                               log=log) for d in init["sinks"])
    loop = asyncio.get_running_loop()
    eof = asyncio.Event()
    reader = LineReader(in_fd, sinks.publish, eof.set)
    reader.feed(rest)
    os.set_blocking(in_fd, False)
    loop.add_reader(in_fd, reader.on_readable)
    runner = asyncio.create_task(sinks.run(), name="sinks")
    reporter = asyncio.create_task(_report(sinks, reader, pipe), name="sink-report")
    try:
        await eof.wait()
        loop.remove_reader(in_fd)
        drain_s = float(init.get("drain_s", 2.0))
        deadline = loop.time() + drain_s
        # A stop soon after the start: a sink still making its first connection gets the drain time too.
        while any(s.connects == 0 and s.errors == 0 for s in sinks.sinks) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await sinks.drain(max(0.0, deadline - loop.time()))
    finally:
        for task in (runner, reporter):
            task.cancel()
        await asyncio.gather(runner, reporter, return_exceptions=True)
        pipe.send(_status(sinks, reader, pipe))


def _read_init(fd: int) -> tuple[dict, bytes]:
    # The description and what follows it: lines the daemon wrote before this process started reading.
    buf = bytearray()
    while b"\n" not in buf:
        chunk = os.read(fd, 1 << 16)
        if not chunk or len(buf) > INIT_MAX_BYTES:
            raise ValueError("no sink description on stdin")
        buf += chunk
    first, _, rest = bytes(buf).partition(b"\n")
    return json.loads(first), rest


def main() -> int:
    """``python -m daemon.aio.sinks.worker``: stdin lines in, stdout status out (see the module docstring)."""
    parent = os.environ.get("KDSIGNAL_SINK_PARENT", "")
    _die_with_parent(int(parent) if parent.isdigit() else None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _batch_scheduling()
    try:
        init, rest = _read_init(0)
    except (OSError, ValueError) as exc:
        print(f"kdsignal sink process: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(init, rest=rest))
    except Exception as exc:  # noqa: BLE001 - reported in one line; the daemon restarts the process
        print(f"kdsignal sink process failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
