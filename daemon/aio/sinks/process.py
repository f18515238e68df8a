"""The daemon's side of the sink process: one non-blocking pipe write per line, counters read back.

:class:`SinkProcess` is what the service holds when the configuration has ``[[sink]]`` tables. Its
:meth:`~SinkProcess.publish` is the whole cost of the sinks on the hot path: one ``os.write`` of the line's
bytes to a pipe (1 MiB where the kernel allows it). A pipe that cannot take the line (the sink process is
behind, stuck or not running) drops it and counts it against every sink: never a wait. The sinks run in
``python -m daemon.aio.sinks.worker``, started by :meth:`~SinkProcess.run` (a task of the service's task
group) and started again with ``[backoff]`` delays if it dies: the lines it held (queued, or in the pipe) are
counted as dropped, from its last report (which can be up to a report interval old, so the count errs high).

The process reports each sink's counters a few times a second over a second pipe; :class:`RemoteSink` holds
the latest, added to what earlier processes counted, so ``/metrics`` and ``/healthz`` read as before, and its
log events are logged here as the daemon's own (one log, one ``SIGHUP`` reopen). Secrets go to the process
in the first line of the line pipe, never in its argv or environment. It dies with the daemon: the pipe's
EOF ends it, and the kernel kills it if the daemon dies first (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time

import structlog

from daemon.aio.sinks import SinkGroup
from daemon.aio.sinks.worker import LineReader, encode_init
from daemon.core.config import BackoffConfig, Config
from daemon.core.cpus import format_cpu_list
from daemon.core.sinks_config import SinkConfig, read_secret

__all__ = ["RemoteSink", "SinkProcess"]

_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, named in the fcntl module only from Python 3.10 on some builds
PIPE_BYTES = 1 << 20  # the unprivileged maximum (/proc/sys/fs/pipe-max-size) by default
_COUNTERS = ("sent", "dropped", "errors", "rejected", "connects")
# A process that ran this long before dying starts again after the first backoff delay, not a longer one.
_HEALTHY_RUN_S = 30.0


class RemoteSink:
    """One sink as the daemon sees it: the sink process's latest report plus what earlier processes counted."""

    def __init__(self, cfg: SinkConfig, owner: SinkProcess) -> None:
        self.cfg, self.name, self.kind = cfg, cfg.name, cfg.kind
        self._owner = owner
        self._base = dict.fromkeys(_COUNTERS, 0)  # totals of the processes that ended
        self.report: dict = {}
        self.lost = 0  # lines a dead sink process held (queued or still in the pipe)

    def _count(self, key: str) -> int:
        return self._base[key] + int(self.report.get(key, 0))

    @property
    def sent(self) -> int:
        return self._count("sent")

    @property
    def dropped(self) -> int:
        return self._count("dropped") + self.lost + self._owner.pipe_dropped

    @property
    def errors(self) -> int:
        return self._count("errors")

    @property
    def rejected(self) -> int:
        return self._count("rejected")

    @property
    def connects(self) -> int:
        return self._count("connects")

    @property
    def up(self) -> bool:
        return bool(self.report.get("up", False))

    @property
    def queued(self) -> int:
        return int(self.report.get("queued", 0))

    @property
    def last_error(self) -> str:
        if not self.report:
            return self._owner.not_running
        return str(self.report.get("last_error") or "")

    def process_ended(self, unsent: int, why: str) -> None:
        """Fold the ended process's counters into the totals; ``unsent`` lines it held count as dropped."""
        for key in _COUNTERS:
            self._base[key] += int(self.report.get(key, 0))
        self.lost += unsent
        self.report = {}

    def health(self) -> dict:
        """This sink's entry of ``/healthz``."""
        return {"kind": self.kind, "up": self.up, "down_s": self.report.get("down_s"), "queued": self.queued,
                "sent": self.sent, "dropped": self.dropped, "errors": self.errors, "rejected": self.rejected,
                "last_error": self.last_error or None, "process_restarts": self._owner.restarts}


class SinkProcess(SinkGroup):
    """The sinks, run by a child process fed through a pipe; empty (and free) without ``[[sink]]``."""

    def __init__(self, configs: list[SinkConfig], secrets: list[str | None], *, backoff: BackoffConfig | None = None,
                 log=None, drain_s: float = 2.0, notice_every_s: float = 10.0,
                 argv: list[str] | None = None, pipe_bytes: int = PIPE_BYTES,
                 cpus: frozenset[int] | None = None) -> None:
        self.configs, self._secrets = list(configs), list(secrets)
        self.cpus = cpus  # where the process runs ([cpu], daemon.core.cpus); None: where the daemon runs
        self.backoff = backoff or BackoffConfig()
        self.log = (log or structlog.get_logger("kdsignal")).bind(component="sinks")
        self.drain_s = drain_s
        self.pipe_bytes = pipe_bytes
        self.notice_every_s = notice_every_s
        self.argv = argv or [sys.executable, "-m", "daemon.aio.sinks.worker"]
        self.sinks = [RemoteSink(c, self) for c in self.configs]
        self.restarts = 0
        self.pipe_dropped = 0  # lines no sink process took: pipe full, or no process running
        self.written = 0  # lines written to the current process
        self.received = 0  # of those, what it last reported having read
        self.not_running = "sink process not started yet"
        self.proc: subprocess.Popen | None = None
        self._fd = -1
        self._status_fd = -1
        self._tail = b""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ended: asyncio.Event | None = None
        self._stopping = False
        self._noticed_at = -float("inf")
        self._noticed_drops = 0

    @classmethod
    def from_config(cls, cfg: Config, log=None, environ: dict | None = None,
                    cpus: frozenset[int] | None = None) -> SinkProcess:
        """The sinks of ``cfg.sinks``; their secrets are read now (``ConfigError`` if one is missing)."""
        return cls(list(cfg.sinks), [read_secret(s, environ) for s in cfg.sinks], backoff=cfg.backoff, log=log,
                   cpus=cpus)

    @property
    def pid(self) -> int | None:
        """The running sink process's id (None between processes)."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    # ------------------------------------------------------------------ hot path
    def publish(self, line: bytes) -> None:
        """Hand one written stdout line to the sink process: one non-blocking write, or a counted drop."""
        fd = self._fd
        if fd < 0 or self._tail:
            self._drop("sink process not running" if fd < 0 else "sink process behind: pipe full")
            return
        try:
            n = os.write(fd, line)
        except BlockingIOError:
            self._drop("sink process behind: pipe full")
            return
        except OSError:  # EPIPE: the process is gone; run() notices and starts another
            self._drop("sink process not running")
            return
        self.written += 1
        if n < len(line):  # only a line longer than PIPE_BUF can go in part: its tail must follow it
            self._tail = line[n:]
            self._loop.add_writer(fd, self._write_tail)

    def _write_tail(self) -> None:
        try:
            n = os.write(self._fd, self._tail)
        except BlockingIOError:
            return
        except OSError:
            n = len(self._tail)
        self._tail = self._tail[n:]
        if not self._tail:
            self._loop.remove_writer(self._fd)

    def _drop(self, reason: str) -> None:
        self.pipe_dropped += 1
        now = time.monotonic()
        if now - self._noticed_at < self.notice_every_s:
            return
        since = self.pipe_dropped - self._noticed_drops
        self._noticed_at, self._noticed_drops = now, self.pipe_dropped
        self.log.warning("sink_lines_dropped", reason=reason, dropped_since_last=since,
                         dropped_total=self.pipe_dropped)

    # ------------------------------------------------------------------ the process
    def _start(self) -> None:
        loop = self._loop
        r, w = os.pipe2(os.O_CLOEXEC)
        sr, sw = os.pipe2(os.O_CLOEXEC)
        try:
            with contextlib.suppress(OSError):  # a lower limit (pipe-max-size) leaves the default 64 KiB
                fcntl.fcntl(w, _F_SETPIPE_SZ, self.pipe_bytes)
            env = {**os.environ, "KDSIGNAL_SINK_PARENT": str(os.getpid())}
            # stdin: the line pipe; stdout: the status pipe; stderr: the daemon's (a one-line fatal error).
            self.proc = subprocess.Popen(self.argv, stdin=r, stdout=sw, env=env, close_fds=True)
        except BaseException:
            for fd in (r, w, sr, sw):
                os.close(fd)
            raise
        os.close(r)
        os.close(sw)
        if self.cpus:
            # From here, at once: the child's interpreter start and imports run off the daemon's CPU too.
            try:
                os.sched_setaffinity(self.proc.pid, self.cpus)
            except OSError as exc:  # costs latency, not signals: it runs where the daemon runs
                self.log.warning("sink_cpus_refused", cpus=format_cpu_list(self.cpus), error=exc.strerror or str(exc))
        # Written before any line, while the pipe is empty: the description always fits.
        init = memoryview(encode_init(self.configs, self._secrets, self.backoff, self.drain_s))
        while init:
            init = init[os.write(w, init):]
        os.set_blocking(w, False)
        os.set_blocking(sr, False)
        self._fd, self._status_fd = w, sr
        self.written = self.received = 0
        self._ended = asyncio.Event()
        # The status pipe is read as the sink process reads its line pipe: whole lines, a runaway one dropped.
        loop.add_reader(sr, LineReader(sr, self._on_status_line, self._on_status_eof).on_readable)
        self.log.info("sink_process_started", pid=self.proc.pid, sinks=[s.name for s in self.sinks],
                      restarts=self.restarts)

    def _on_status_eof(self) -> None:
        # The process closed its end: it has exited (or is about to).
        self._loop.remove_reader(self._status_fd)
        self._ended.set()

    def _on_status_line(self, raw: bytes) -> None:
        try:
            msg = json.loads(raw)
        except ValueError:
            return
        if isinstance(msg, dict):
            self._handle(msg)

    def _handle(self, msg: dict) -> None:
        kind = msg.pop("t", None)
        if kind == "status":
            reports = msg.get("sinks")
            if isinstance(reports, list) and len(reports) == len(self.sinks):
                for sink, report in zip(self.sinks, reports, strict=True):
                    if isinstance(report, dict):
                        sink.report = report
                self.received = int(msg.get("received", self.received))
        elif kind == "log":
            level = msg.pop("level", "info")
            event = msg.pop("event", "sink_event")
            method = getattr(self.log, level if level in ("info", "warning", "error") else "info")
            method(event, **msg)

    def _close_fds(self) -> None:
        loop = self._loop
        if self._fd >= 0:
            if self._tail and loop is not None:
                loop.remove_writer(self._fd)
            self._tail = b""
            os.close(self._fd)
            self._fd = -1
        if self._status_fd >= 0:
            if loop is not None:
                loop.remove_reader(self._status_fd)
            os.close(self._status_fd)
            self._status_fd = -1

    async def _reap(self, timeout_s: float) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if proc.poll() is None:
            proc.kill()
        return proc.wait()

    def _ended_unexpectedly(self, rc: int | None) -> None:
        why = f"sink process exited with status {rc}"
        in_pipe = max(0, self.written - self.received)
        lost = {}
        for sink in self.sinks:
            unsent = sink.queued + in_pipe
            lost[sink.name] = unsent
            sink.process_ended(unsent, why)
        self.restarts += 1
        self.not_running = why
        self.log.error("sink_process_exited", status=rc, lines_lost=lost, restarts=self.restarts)

    def start(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Start the sink process now (before the first line can be written); False if it could not start.

        :meth:`run` calls it too; the service calls it first, so lines written before :meth:`run`'s first
        turn go into the pipe instead of being dropped.
        """
        self._loop = loop
        if not self.sinks or self.proc is not None or self._stopping:
            return self.proc is not None
        try:
            self._start()
        except OSError as exc:
            self.not_running = f"cannot start the sink process: {exc.strerror or exc}"
            self.log.error("sink_process_failed", error=self.not_running)
            return False
        return True

    async def run(self) -> None:
        """Start the sink process and start it again whenever it dies, until cancelled or drained."""
        if not self.sinks:
            return
        loop = asyncio.get_running_loop()
        delays = self.backoff.delays()
        try:
            while not self._stopping:
                started = loop.time()
                if self.start(loop):
                    await self._ended.wait()
                    self._close_fds()
                    rc = await self._reap(5.0)
                    self.proc = None
                    if self._stopping:
                        break
                    self._ended_unexpectedly(rc)
                if loop.time() - started > _HEALTHY_RUN_S:
                    delays = self.backoff.delays()
                await asyncio.sleep(next(delays))
        finally:
            self._close_fds()
            proc, self.proc = self.proc, None
            if proc is not None and proc.poll() is None:
                proc.kill()  # an abnormal stop (no drain): nothing may outlive the daemon
            if proc is not None:
                proc.wait()

    async def drain(self, timeout_s: float = 2.0) -> None:
        """On a clean stop: close the line pipe; the process sends what it holds (``drain_s``) and exits."""
        self._stopping = True
        if self._fd < 0 or self._ended is None:
            return
        if self._tail and self._loop is not None:
            self._loop.remove_writer(self._fd)
        os.close(self._fd)  # EOF: the process drains, reports once more and exits
        self._fd, self._tail = -1, b""
        with contextlib.suppress(TimeoutError):
            # The process may still be starting (imports): give it that time on top of the drain.
            async with asyncio.timeout(max(timeout_s, self.drain_s) + 3.0):
                await self._ended.wait()
