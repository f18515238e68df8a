"""One sink's machinery: a bounded queue filled from the hot path and a worker that sends and reconnects.

In the sink process (:mod:`daemon.aio.sinks.worker`) the line reader calls :meth:`Sink.offer` with the exact
bytes of each stdout line: a length check and a deque append, never an ``await``, so a slow or dead sink
cannot delay the other sinks or the reading of the pipe. A full queue drops the
new line and counts it. The worker task takes up to ``batch_max`` lines from the front, sends them (one
round trip for a burst of closes), and only then removes them, so a batch that fails is sent again once
the sink is back: delivery is at least once, and exactly once while the sink stays up. Any failure marks
the sink down, closes its connection and reconnects after a delay from ``[backoff]``, forever.

A subclass implements :meth:`connect`, :meth:`send` and :meth:`close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from itertools import islice

import structlog

from daemon.core.config import BackoffConfig
from daemon.core.sinks_config import SinkConfig, redacted

__all__ = ["Sink"]


class Sink:
    """A bounded queue of lines and the task that delivers them; counters for /metrics and /healthz."""

    kind = ""
    # True when send() must get one line at a time (a batch that failed half way must not be sent twice).
    one_at_a_time = False
    # False when a successful connect() proves nothing about the far end (a webhook's HTTP session): after a
    # failure the sink shows as down until a send succeeds, instead of flapping up and down between retries.
    connect_proves_up = True

    def __init__(self, cfg: SinkConfig, *, backoff: BackoffConfig | None = None, log=None) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.backoff = backoff or BackoffConfig()
        self.log = (log or structlog.get_logger("kdsignal.sinks")).bind(sink=cfg.name, kind=self.kind)
        self._queue: deque[bytes] = deque()
        self._max = cfg.queue_size
        self._wake = asyncio.Event()
        self._waiting = False
        # Counters (totals since start).
        self.offered = 0
        self.sent = 0
        self.dropped = 0
        self.errors = 0
        self.rejected = 0
        self.connects = 0
        self.up = False
        self.down_since_s: float | None = time.monotonic()
        self.last_error = "not connected yet"

    # --- hot path -----------------------------------------------------------------------------------------
    def offer(self, line: bytes) -> None:
        """Queue one line (with its newline) for sending, or drop and count it when the queue is full."""
        self.offered += 1
        q = self._queue
        if len(q) >= self._max:
            self.dropped += 1
            return
        q.append(line)
        if self._waiting:
            self._waiting = False
            self._wake.set()

    # --- what a subclass provides ---------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the connection (raise on failure)."""
        raise NotImplementedError

    async def send(self, lines: list[bytes]) -> int:
        """Deliver ``lines`` in order (each still ends with a newline); return how many the far end accepted.

        Raise to have the whole batch sent again after a reconnect. Lines the far end refused for good
        (counted in :attr:`rejected`) are not sent again.
        """
        raise NotImplementedError

    async def close(self) -> None:
        """Close the connection; must not raise."""

    # --- the worker --------------------------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Lines waiting (the batch in flight included)."""
        return len(self._queue)

    async def run(self) -> None:
        """Connect, send whatever is queued, reconnect with backoff after any failure; until cancelled."""
        delays = self.backoff.delays()
        timeout_s = self.cfg.timeout_s
        batch_max = 1 if self.one_at_a_time else self.cfg.batch_max
        q = self._queue
        try:
            while True:
                try:
                    async with asyncio.timeout(timeout_s):
                        await self.connect()
                    if self.connect_proves_up or not self.errors:
                        self._mark_up()
                        delays = self.backoff.delays()
                    while True:
                        if not q:
                            self._waiting = True
                            self._wake.clear()
                            await self._wake.wait()
                            continue
                        batch = list(islice(q, batch_max))
                        async with asyncio.timeout(timeout_s):
                            accepted = await self.send(batch)
                        for _ in batch:
                            q.popleft()
                        self.sent += accepted
                        if not self.up:
                            self._mark_up()
                            delays = self.backoff.delays()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - whatever fails, the sink retries; counted and logged
                    self._mark_down(exc)
                    await self._close_bounded()
                    await asyncio.sleep(next(delays))
        finally:
            self._waiting = False
            await self._close_bounded()

    async def _close_bounded(self) -> None:
        # A client library that never finishes closing must not hold up a reconnect or the daemon's stop.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.cfg.timeout_s):
                await self.close()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until the queue is empty (True) or ``timeout_s`` passed (False); used on a clean stop."""
        if not self.up:
            return not self._queue
        deadline = time.monotonic() + timeout_s
        # Lines leave the queue only once sent, so an empty queue means everything was delivered.
        while self._queue and self.up:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return not self._queue

    def _mark_up(self) -> None:
        self.connects += 1
        down_s = None if self.down_since_s is None else time.monotonic() - self.down_since_s
        self.up, self.down_since_s, self.last_error = True, None, ""
        if self.connects == 1:
            # Logged without user info or query: a webhook token may ride in the query.
            self.log.info("sink_connected", url=redacted(self.cfg.url), queued=len(self._queue))
        else:
            self.log.info("sink_reconnected", down_s=round(down_s or 0.0, 3), queued=len(self._queue),
                          dropped_total=self.dropped)

    def _mark_down(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self.up:
            self.up, self.down_since_s = False, time.monotonic()
            self.log.error("sink_down", error=self.last_error, queued=len(self._queue))
        else:
            self.log.warning("sink_connect_failed", error=self.last_error, queued=len(self._queue),
                             dropped_total=self.dropped)

    def health(self) -> dict:
        """This sink's entry of ``/healthz``."""
        down_s = None if self.down_since_s is None else round(time.monotonic() - self.down_since_s, 3)
        return {"kind": self.kind, "up": self.up, "down_s": down_s, "queued": len(self._queue),
                "sent": self.sent, "dropped": self.dropped, "errors": self.errors, "rejected": self.rejected,
                "last_error": self.last_error or None}

