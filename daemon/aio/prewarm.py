"""Keep the frame-to-line path in the CPU caches just before the next burst of closed candles is due.

Closed candles arrive in bursts, one per kline interval (every symbol's close right after the interval
boundary). Between bursts the process waits, and its code and data leave the CPU caches: the first signal
of a burst took about ten times as long as the rest (about 140 us against 13 us; ``daemon/bench/idle.py``
and BENCHMARKS.md show the same path 20 times slower after 250 ms asleep, and nearly as slow after 250 ms
of spinning, so it is the caches, not the core waking up).

Bursts come at a steady period, so the next one can be predicted from the last few: from ``lead_s`` before
it is due until it starts (or ``max_wait_s`` after it was due), every ``step_s`` the warmer runs the live
path on copies: it parses the last close message the feed received, runs it through a scratch copy of that
symbol's pipeline (state copied from the served one, same model and kernel), writes the line through a
``SignalWriter`` to /dev/null, and makes a zero-length write to the real output (the same system call, no
bytes). It never touches the served state, the output's contents or any counter the daemon reports, and
costs a few tens of microseconds per step, only around the expected closes: the first signal of a burst
then takes 55-75 us instead of about 135 (BENCHMARKS.md). A failure in it logs ``prewarm_disabled`` and stops
only the warming.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from time import perf_counter_ns

from daemon.aio.output import SignalWriter
from daemon.core.parser import KlineFrame, parse_frame
from daemon.core.pipeline import Pipeline, Signal

QUIET_NS = 20_000_000  # a close after this long without one starts a new burst
MIN_BURSTS = 3  # burst starts needed before the period is trusted


class Prewarm:
    """Predicts the next burst of closes from the last ones and warms the path just before it."""

    def __init__(self, service, *, lead_s: float = 0.003, step_s: float = 0.001, max_wait_s: float = 1.0,
                 history: int = 8) -> None:
        self.service = service
        self.lead_ns = int(lead_s * 1e9)
        self.step_s = step_s
        self.max_wait_ns = int(max_wait_s * 1e9)
        self.starts: deque[int] = deque(maxlen=history)  # perf_counter_ns of recent burst starts
        self.warmups = 0
        self._last_close_ns = 0
        self._sample: str | bytes | None = None  # the first close message of the latest burst
        self._scratch: Pipeline | None = None  # a copy of a served pipeline, never served
        self._writer: SignalWriter | None = None  # to /dev/null, open while run() runs
        self._out_fd: int | None = None
        self._burst: asyncio.Event | None = None  # set at each burst start while run() runs

    # ------------------------------------------------------------------ hot path
    def on_close_frame(self, recv_ns: int) -> None:
        """Note a frame that carried closes (called by the service for every one)."""
        if recv_ns - self._last_close_ns >= QUIET_NS:
            self.starts.append(recv_ns)
            # The burst's first frame (the feed keeps the frame being handled): its symbol tends to come
            # first again, so warming with it also brings that symbol's own state into the caches.
            self._sample = self.service.feed.last_close_message
            if self._burst is not None:
                self._burst.set()
        self._last_close_ns = recv_ns

    # ------------------------------------------------------------------ prediction
    def next_due_ns(self, now_ns: int) -> int | None:
        """When the next burst should start: the last start plus whole median periods, not already past
        by more than ``max_wait_ns``; None until ``MIN_BURSTS`` bursts were seen."""
        if len(self.starts) < MIN_BURSTS:
            return None
        s = list(self.starts)
        periods = sorted(b - a for a, b in zip(s, s[1:]))
        period = periods[len(periods) // 2]
        due = s[-1] + period
        if due + self.max_wait_ns < now_ns:  # missed (the feed was down?): the next slot on the same grid
            due += ((now_ns - self.max_wait_ns - due) // period + 1) * period
        return due

    async def run(self) -> None:
        """Forever: sleep until just before the next burst is due, then warm until it starts."""
        self._burst = asyncio.Event()
        sink = open(os.devnull, "wb")  # noqa: SIM115 - closed in the finally below
        self._writer = SignalWriter(sink, log=None)
        try:
            self._out_fd = self.service.writer.stream.fileno()
        except (AttributeError, OSError, ValueError):  # an in-memory stream: nothing to warm there
            self._out_fd = None
        try:
            while True:
                now = perf_counter_ns()
                due = self.next_due_ns(now)
                if due is None:  # too few bursts yet: wait for the next one
                    self._burst.clear()
                    await self._burst.wait()
                    continue
                last = self.starts[-1]  # taken before sleeping: a burst that comes early ends the wait
                begin = due - self.lead_ns
                if begin > now:
                    await asyncio.sleep((begin - now) / 1e9)
                while self.starts[-1] == last and perf_counter_ns() < due + self.max_wait_ns:
                    try:
                        self.warm()
                    except Exception as exc:  # noqa: BLE001 - an optimisation must never stop the daemon
                        self.service.log.error("prewarm_disabled", error=repr(exc))
                        return
                    await asyncio.sleep(self.step_s)
                if self.starts[-1] == last:  # it never came: wait for the next one rather than spin
                    await asyncio.sleep(self.max_wait_ns / 1e9)
        finally:
            self._writer = None
            sink.close()

    # ------------------------------------------------------------------ the warm-up
    def warm(self) -> None:
        """Run the live path once on copies: parse, a scratch pipeline and state, a writer to /dev/null."""
        svc = self.service
        message = self._sample
        if message is None or self._writer is None:
            return
        frame = parse_frame(message, svc.feed.topic_cache)
        if type(frame) is not KlineFrame or not frame.closed:
            return
        served = svc.pipelines.get(frame.symbol)
        if served is None:
            return
        scratch = self._scratch
        if scratch is None or scratch.model is not served.model or scratch.symbol != served.symbol:
            scratch = self._scratch = Pipeline(served.symbol, served.interval, served.model)
        scratch.state.array[:] = served.state.array
        c = frame.closed[-1]
        scratch.next_start_ms = c.start_ms
        sig = scratch.on_close(c)
        if type(sig) is Signal:
            self._writer.write(sig)
        if self._out_fd is not None:
            # A zero-length write to the real output: the same syscall path, no bytes, no reader woken.
            os.write(self._out_fd, b"")
        self.warmups += 1
