"""One (symbol, interval): closed candles in, events out (core: no I/O, no asyncio).

The pipeline is a protocol object in the style of ``websockets``' Sans-I/O core: the I/O layer feeds it
what happened and acts on what it asks for.

- in: :meth:`Pipeline.receive_close` (a confirmed candle from the stream), :meth:`Pipeline.receive_history`
  (the candles REST returned for the last :class:`FetchHistory`), :meth:`Pipeline.history_failed` (REST gave
  up on it), :meth:`Pipeline.resync` (at start and after every (re)subscription: fetch what is missing);
- out: :meth:`Pipeline.events` returns what happened since the last call, in order: :class:`Signal`,
  :class:`FetchHistory` (perform it, then call one of the two answers), :class:`GapUnfilled`,
  :class:`HistoryLoaded`, :class:`GapBackfilled`, :class:`FeaturesReset`, :class:`CloseRejected`.

It is in one of two stages (:class:`Stage`). ``WARMUP``: the features hold no usable history; the next fetch
asks for the latest ``warmup_count`` closed bars, which are loaded without a signal, so the first bar that
closes after them is signalled. ``SERVING``: the features are continuous up to ``next_start_ms``, the bar
expected next; a close for it advances the model (one compiled call, timed) and is signalled once warm.

In ``SERVING``, a close for an earlier start is a duplicate (a repeated ``confirm:true``, or a bar REST already
gave). A close for a later start means bars went missing: it is held and one :class:`FetchHistory` asks
for the bars between; they are signalled in order, marked ``backfill: true``, before the held closes (which
carry ``late_ms``: how long they waited). At most one fetch is out at a time, and while it is out every close
is held, so nothing overtakes it. A hole longer than the feature window (``max_gap_bars``) is not stepped
over bar by bar: the features are reset and re-warmed from REST in one request, so a gap of any length
costs the same.

A bar that REST cannot supply either is *not* bridged silently: it is reported as :class:`GapUnfilled` and
the features step over it as a missing bar (NaN in, filled forward by the kernels' documented policy), so
the rolling window stays aligned in time; no signal is emitted for a bar that never arrived. Every fetch
either makes progress or ends in such a report, so no sequence of closes makes the pipeline ask forever; a
warm-up that fails is asked again with ``attempt`` counting up, which the I/O layer turns into a backoff.

With ``fetches_history=False`` (replay from a file, which is the whole record) no fetch is ever asked for:
the first close starts the features cold and a hole is reported and stepped over at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from time import perf_counter_ns

from daemon.core.intervals import interval_ms
from daemon.core.parser import Candle

__all__ = [
    "CloseRejected",
    "FeaturesReset",
    "FetchHistory",
    "GapBackfilled",
    "GapUnfilled",
    "HistoryLoaded",
    "Pipeline",
    "Signal",
    "Stage",
]

_NAN = float("nan")

# probs rendering per class tuple, e.g. '"sell": %r, "hold": %r, "buy": %r' (built once per tuple of names)
_PROBS_FORMATS: dict[tuple[str, ...], str] = {}


def _probs_format(classes: tuple[str, ...]) -> str:
    fmt = _PROBS_FORMATS[classes] = ", ".join(f'"{name}": %r' for name in classes)
    return fmt


class Signal:
    """One signal: a closed bar, the student's class and probabilities, and how long inference took.

    ``classes`` are the artifact's class names and ``probs`` the probabilities in that order. ``late_ms`` is
    set only on a stream close that was held while a fetch ran: how long it waited in the daemon.
    """

    __slots__ = ("symbol", "interval", "start_ms", "signal", "classes", "probs", "inference_ns", "model",
                 "backfill", "recv_ns", "late_ms", "close")

    def __init__(self, symbol: str, interval: str, start_ms: int, signal: str, classes: tuple[str, ...],
                 probs: tuple[float, ...], inference_ns: int, model: str, backfill: bool, recv_ns: int,
                 late_ms: int | None = None, close: float = _NAN) -> None:
        self.symbol = symbol
        self.interval = interval
        self.start_ms = start_ms
        self.signal = signal
        self.classes = classes
        self.probs = probs
        self.inference_ns = inference_ns
        self.model = model
        self.backfill = backfill
        self.recv_ns = recv_ns  # perf_counter_ns when the frame carrying the close arrived (0: not live)
        self.late_ms = late_ms
        self.close = close  # the bar's close (not in the line): the live scorecard decides outcomes from it

    @property
    def inference_us(self) -> float:
        """Inference time in microseconds, rounded to nanoseconds."""
        return round(self.inference_ns / 1000.0, 3)

    def fields(self) -> dict:
        """The event as a dict, in the order of the output line."""
        out = {"symbol": self.symbol, "interval": self.interval, "start": self.start_ms, "signal": self.signal,
               "probs": dict(zip(self.classes, self.probs, strict=True)), "inference_us": self.inference_us,
               "model": self.model, "backfill": self.backfill}
        if self.late_ms is not None:
            out["late_ms"] = self.late_ms
        return out

    def to_line(self) -> str:
        """Render the JSON line (with the trailing newline). Floats use repr, so they round-trip exactly."""
        # Formatted by hand: symbols are validated alphanumerics, ids hex, class names the artifact's
        # validated names, and this runs per signal.
        try:
            fmt = _PROBS_FORMATS[self.classes]
        except KeyError:
            fmt = _probs_format(self.classes)
        probs = fmt % self.probs
        late = "" if self.late_ms is None else f', "late_ms": {self.late_ms}'
        return (f'{{"symbol": "{self.symbol}", "interval": "{self.interval}", "start": {self.start_ms}, '
                f'"signal": "{self.signal}", "probs": {{{probs}}}, "inference_us": {self.inference_us!r}, '
                f'"model": "{self.model}", "backfill": {"true" if self.backfill else "false"}{late}}}\n')


class Stage(Enum):
    """Whether the features hold usable history."""

    WARMUP = "warmup"    # no usable history: the next fetch loads the latest bars, unsignalled
    SERVING = "serving"  # continuous up to next_start_ms


@dataclass(frozen=True, slots=True)
class FetchHistory:
    """Ask REST for closed candles; answer with :meth:`Pipeline.receive_history` or :meth:`Pipeline.history_failed`.

    With ``start_ms``: the candles starting in ``[start_ms, end_ms]`` (``end_ms`` None: up to now), at most the
    latest ``count``. Without: the latest ``count`` closed candles ending at ``end_ms`` (or now). ``attempt`` > 0
    means the same need failed or could not progress before: wait a backoff delay before asking.
    """

    start_ms: int | None
    end_ms: int | None
    count: int
    attempt: int
    reason: str  # "warmup", "reset", "gap" or "catch_up"


@dataclass(frozen=True, slots=True)
class GapUnfilled:
    """``bars`` bars from ``first_start_ms`` on never arrived from anywhere: stepped over, not signalled."""

    first_start_ms: int
    bars: int


@dataclass(frozen=True, slots=True)
class HistoryLoaded:
    """A warm-up loaded ``bars`` closed bars without signalling them; ``next_start_ms`` is expected next."""

    bars: int
    next_start_ms: int | None
    warm: bool


@dataclass(frozen=True, slots=True)
class GapBackfilled:
    """One fetch filled a gap (``reason`` "gap" or "catch_up") with ``bars`` bars from REST, each signalled."""

    bars: int
    reason: str


@dataclass(frozen=True, slots=True)
class FeaturesReset:
    """A hole of ``bars`` bars from ``first_missing_start_ms`` was longer than the feature window: the features
    were reset, and none of those bars is signalled (the latest of them may re-warm the features)."""

    first_missing_start_ms: int
    bars: int


@dataclass(frozen=True, slots=True)
class CloseRejected:
    """A close that cannot belong to this series (off the interval grid) was dropped."""

    start_ms: int
    reason: str


class Pipeline:
    """De-duplicate, order and gap-check the closed candles of one (symbol, interval) and run the model."""

    def __init__(self, symbol: str, interval: str, model, *, warmup_extra_bars: int = 5,
                 fetches_history: bool = True) -> None:
        self.symbol = symbol
        self.interval = interval
        self.interval_ms = interval_ms(interval)
        self.model = model
        self.state = model.new_state()
        self.warmup_count = int(model.warmup_bars) + warmup_extra_bars
        # A longer hole resets the features instead of stepping over it: nothing of the window would be left.
        self.max_gap_bars = int(model.warmup_bars)
        self.fetches_history = fetches_history
        self.stage = Stage.WARMUP
        self.next_start_ms: int | None = None  # the bar expected next (SERVING only)
        self.fetch: FetchHistory | None = None  # the one outstanding request
        self._held: dict[int, tuple[Candle, int]] = {}  # start_ms -> (close, recv_ns) while a fetch is out
        self._events: list = []
        self._failures = 0  # consecutive failed warm-up fetches
        self.last_fetch_error = ""
        self._classes = tuple(model.classes)
        self._model_id = model.id
        # Counters (this object is their one owner; the service sums them for logs and metrics).
        self.duplicates = 0        # closes for a bar already processed or already held
        self.gaps_backfilled = 0   # fetches that filled a gap with at least one bar
        self.bars_backfilled = 0   # bars those fetches signalled
        self.bars_unfilled = 0     # bars stepped over as missing
        self.resets = 0            # times the features were reset by a long hole
        self.rejected = 0          # closes dropped as not belonging to the series

    # ------------------------------------------------------------------ in
    def receive_close(self, candle: Candle, recv_ns: int = 0) -> None:
        """Take one confirmed candle from the stream (``recv_ns``: when its frame arrived)."""
        if candle.start_ms == self.next_start_ms and self.fetch is None:  # the per-bar path
            sig = self._advance(candle, False, recv_ns, None)
            if sig is not None:
                self._events.append(sig)
            return
        self._receive_other(candle, recv_ns)

    def receive_history(self, candles: list[Candle]) -> None:
        """Take the closed candles (oldest first) REST returned for the outstanding :class:`FetchHistory`."""
        fetch = self.fetch
        if fetch is None:  # nothing was asked: a stale answer
            return
        self.fetch = None
        if self.stage is Stage.WARMUP:
            self._load_history(candles)
            self._after_history()
        else:
            self._backfill(candles, fetch)
            self._release()

    def history_failed(self, error: str = "") -> None:
        """REST gave up on the outstanding :class:`FetchHistory` (its retries are spent); ``error`` says why."""
        if self.fetch is None:
            return
        self.fetch = None
        self.last_fetch_error = error
        if self.stage is Stage.WARMUP:
            self._failures += 1  # asked again, the I/O layer backs off by attempt
            self._request(self._failures)
        elif self._held:  # nothing else will bring the bars before the first held close
            self._bridge(min(self._held))
            self._release()

    def resync(self) -> bool:
        """Fetch what is missing (at start: the warm-up; after a reconnect: what closed meanwhile).

        False when a fetch is already out (it covers this) or there is nothing to fetch from.
        """
        if self.fetch is not None or not self.fetches_history:
            return False
        self._request(0)
        return True

    def events(self) -> list:
        """Return the events since the last call, oldest first (iterate it at once; do not keep it)."""
        ev = self._events
        if ev:
            self._events = []
        return ev

    def set_model(self, model) -> None:
        """Serve another model from the next bar on; the rolling features carry over (SIGHUP reload)."""
        self.state = self.state.rebind(model)
        self.model = model
        self._classes = tuple(model.classes)
        self._model_id = model.id

    @property
    def held(self) -> int:
        """Stream closes waiting for the outstanding fetch."""
        return len(self._held)

    @property
    def awaiting_warmup(self) -> bool:
        """True while the first warm-up fetch is out and has not failed yet (readiness waits for it)."""
        return self.stage is Stage.WARMUP and self.fetch is not None and self._failures == 0

    # ------------------------------------------------------------------ internals
    def _receive_other(self, candle: Candle, recv_ns: int) -> None:
        start = candle.start_ms
        held = self._held
        iv = self.interval_ms
        if self.stage is Stage.SERVING:
            if start < self.next_start_ms:
                self.duplicates += 1
                return
            anchor = self.next_start_ms
        else:
            anchor = next(iter(held)) if held else start
        if (start - anchor) % iv:
            # Off this series' grid: holding it would ask REST for a range that can never close the hole.
            self.rejected += 1
            self._events.append(CloseRejected(start, f"start {start} is off the {self.interval} grid of {anchor}"))
            return
        if start in held:
            self.duplicates += 1
            return
        if not self.fetches_history:
            if self.stage is Stage.WARMUP:
                self.stage = Stage.SERVING
                self.next_start_ms = start
            self._bridge(start)
            sig = self._advance(candle, False, recv_ns, None)
            if sig is not None:
                self._events.append(sig)
            return
        held[start] = (candle, recv_ns)
        if len(held) > self.max_gap_bars:
            # Bounded: the oldest held bar is one REST can give (as history or backfill) when it is needed.
            del held[min(held)]
        if self.fetch is None:
            self._request(0)

    def _request(self, attempt: int) -> None:
        held = self._held
        first = min(held) if held else None
        end = None if first is None else first - 1
        if self.stage is Stage.SERVING:
            nxt = self.next_start_ms
            if first is None:
                fetch = FetchHistory(nxt, None, self.warmup_count, attempt, "catch_up")
            else:
                bars = (first - nxt) // self.interval_ms
                if bars > self.max_gap_bars:
                    self._reset(nxt, bars)
                    fetch = FetchHistory(None, end, self.warmup_count, attempt, "reset")
                else:
                    fetch = FetchHistory(nxt, end, bars, attempt, "gap")
        else:
            fetch = FetchHistory(None, end, self.warmup_count, attempt, "warmup")
        self.fetch = fetch
        self._events.append(fetch)

    def _reset(self, first_missing_ms: int, bars: int) -> None:
        self.state = self.model.new_state()
        self.stage = Stage.WARMUP
        self.next_start_ms = None
        self.resets += 1
        self._events.append(FeaturesReset(first_missing_ms, bars))

    def _load_history(self, candles: list[Candle]) -> None:
        held = self._held
        first_held = min(held) if held else None
        update = self.state.update
        n = 0
        last = None
        for c in candles:
            if first_held is not None and c.start_ms >= first_held:
                break
            update(c.open, c.high, c.low, c.close, c.volume)
            last = c.start_ms
            n += 1
        self._failures = 0
        if last is not None:
            self.stage = Stage.SERVING
            self.next_start_ms = last + self.interval_ms
        elif first_held is not None:  # no history at all (a new listing): the features warm on live bars
            self.stage = Stage.SERVING
            self.next_start_ms = first_held
        self._events.append(HistoryLoaded(n, self.next_start_ms, bool(self.state.warm)))

    def _after_history(self) -> None:
        held = self._held
        if self.stage is Stage.WARMUP or not held:
            return
        # REST's history ends at its own clock: a held close more than the window beyond it cannot be a real
        # bar of the stream (a start far in the future); dropping it keeps the symbol on the live grid.
        limit = self.next_start_ms + self.max_gap_bars * self.interval_ms
        for start in sorted(held):
            if start > limit:
                del held[start]
                self.rejected += 1
                self._events.append(CloseRejected(start, f"start {start} is beyond the exchange's latest closed "
                                                         f"bar by more than {self.max_gap_bars} bars"))
        if held and min(held) > self.next_start_ms:
            # REST may lag the stream by a moment: ask once more for the hole, after a backoff delay; that
            # answer bridges whatever is still missing, so this cannot repeat.
            self._request(1)
            return
        self._release()

    def _backfill(self, candles: list[Candle], fetch: FetchHistory) -> None:
        held = self._held
        stop = min(held) if held else None
        nxt = self.next_start_ms
        if fetch.end_ms is None and candles and len(candles) >= fetch.count and candles[0].start_ms > nxt:
            # A catch-up cut short by its count: more bars closed meanwhile than the window holds (the count
            # exceeds max_gap_bars). Re-warm on the latest of them instead of backfilling them.
            self._reset(nxt, (candles[-1].start_ms - nxt) // self.interval_ms + 1)
            self._load_history(candles)
            return
        events = self._events
        n = 0
        iv = self.interval_ms
        for c in candles:
            if c.start_ms < self.next_start_ms:
                self.duplicates += 1
                continue
            if stop is not None and c.start_ms >= stop:
                break
            if (c.start_ms - nxt) % iv:  # off the grid: stepping to it would shift every later bar
                self.rejected += 1
                events.append(CloseRejected(c.start_ms, f"REST start {c.start_ms} is off the {self.interval} grid"))
                continue
            self._bridge(c.start_ms)  # a hole inside what REST returned
            sig = self._advance(c, True, 0, None)
            n += 1
            if sig is not None:
                events.append(sig)
        if n:
            self.gaps_backfilled += 1
            self.bars_backfilled += n
            events.append(GapBackfilled(n, fetch.reason))
        if fetch.end_ms is not None:  # REST was asked up to a held close: what it lacked is missing
            upto = fetch.end_ms + 1 if stop is None else min(fetch.end_ms + 1, stop)
            self._bridge(upto)

    def _bridge(self, upto_ms: int) -> None:
        # Bars from next_start_ms up to (not including) upto_ms never arrived from anywhere.
        nxt = self.next_start_ms
        iv = self.interval_ms
        bars = (upto_ms - nxt) // iv
        if bars <= 0:
            return
        self.bars_unfilled += bars
        self._events.append(GapUnfilled(nxt, bars))
        if bars > self.max_gap_bars:  # nothing of the window would survive: start cold at upto_ms
            self._reset(nxt, bars)
            self.stage = Stage.SERVING
            self.next_start_ms = upto_ms
            return
        update = self.state.update
        for _ in range(bars):
            update(_NAN, _NAN, _NAN, _NAN, _NAN)
        self.next_start_ms = nxt + bars * iv

    def _release(self) -> None:
        held = self._held
        if not held:
            return
        events = self._events
        now_ns = perf_counter_ns()
        for start in sorted(held):
            if start > self.next_start_ms:  # another hole: it needs its own fetch
                self._request(0)
                return
            c, recv_ns = held.pop(start)
            if start < self.next_start_ms:
                self.duplicates += 1
                continue
            sig = self._advance(c, False, recv_ns, (now_ns - recv_ns) // 1_000_000 if recv_ns else 0)
            if sig is not None:
                events.append(sig)

    def _advance(self, c: Candle, backfill: bool, recv_ns: int, late_ms: int | None) -> Signal | None:
        state = self.state
        t0 = perf_counter_ns()
        k = state.update(c.open, c.high, c.low, c.close, c.volume)
        t1 = perf_counter_ns()
        self.next_start_ms = c.start_ms + self.interval_ms
        if k < 0:  # warming up (or no valid bar yet)
            return None
        classes = self._classes
        return Signal(self.symbol, self.interval, c.start_ms, classes[k], classes, tuple(state.probs.tolist()),
                      t1 - t0, self._model_id, backfill, recv_ns, late_ms, c.close)
