"""One (symbol, interval): closed candles in, at most one signal per bar out (layer 2: no I/O, no asyncio).

The pipeline keys bars by ``start_ms`` and tracks the next start it expects:

- a close for the expected start advances the model state (one numba call, timed) and yields a
  :class:`Signal` once the state is warm;
- a close for an earlier start is a duplicate (a repeated ``confirm:true``, or a bar REST already gave);
- a close for a later start means bars went missing: the close is held back and :data:`FILL` is returned,
  telling the I/O layer to fetch :meth:`Pipeline.fill_range` from REST and hand the candles to
  :meth:`Pipeline.apply_fill`. Backfilled bars are signalled in order, marked ``backfill: true``, before
  the held closes. While a fill is outstanding every close is held, so nothing overtakes it.

Before the first fill (warm-up) the state has no history: the first fill loads recent closed bars without
signalling them, so the first bar that closes after start-up already gets a signal.

A bar that REST cannot supply either is *not* bridged silently: it is reported in
:attr:`FillResult.unfilled` (the service logs ``gap_unfilled`` and counts it) and the model state steps over
it as a missing bar (NaN in, filled forward by the kernels' documented policy), so the rolling window stays
aligned in time. No signal is emitted for a bar that never arrived.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter_ns

from daemon.core.parser import Candle, interval_ms

__all__ = ["FILL", "FillResult", "Pipeline", "Signal"]

_NAN = float("nan")


class _Fill:
    """Sentinel type of :data:`FILL`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "FILL"


FILL = _Fill()


class Signal:
    """One signal event: a closed bar, the student's class and probabilities, and how long inference took."""

    __slots__ = ("symbol", "interval", "start_ms", "signal", "probs", "inference_ns", "model", "backfill",
                 "recv_ns", "close")

    def __init__(self, symbol: str, interval: str, start_ms: int, signal: str, probs: dict[str, float],
                 inference_ns: int, model: str, backfill: bool, recv_ns: int, close: float = _NAN) -> None:
        self.symbol = symbol
        self.interval = interval
        self.start_ms = start_ms
        self.signal = signal
        self.probs = probs  # class name -> probability
        self.inference_ns = inference_ns
        self.model = model
        self.backfill = backfill
        self.recv_ns = recv_ns  # perf_counter_ns when the frame carrying the close arrived (0: not live)
        self.close = close  # the bar's close: the live scorecard decides earlier signals' outcomes from it

    @property
    def inference_us(self) -> float:
        """Inference time in microseconds, rounded to nanoseconds."""
        return round(self.inference_ns / 1000.0, 3)

    def fields(self) -> dict:
        """The event as a dict, in the order of the output line."""
        return {"symbol": self.symbol, "interval": self.interval, "start": self.start_ms, "signal": self.signal,
                "probs": {"buy": self.probs["buy"], "hold": self.probs["hold"], "sell": self.probs["sell"]},
                "inference_us": self.inference_us, "model": self.model, "backfill": self.backfill}

    def to_line(self) -> str:
        """Render the JSON line (with the trailing newline). Floats use repr, so they round-trip exactly."""
        p = self.probs
        # Formatted by hand: symbols are validated alphanumerics and ids hex, and this runs per signal.
        return (f'{{"symbol": "{self.symbol}", "interval": "{self.interval}", "start": {self.start_ms}, '
                f'"signal": "{self.signal}", "probs": {{"buy": {p["buy"]!r}, "hold": {p["hold"]!r}, '
                f'"sell": {p["sell"]!r}}}, "inference_us": {self.inference_us!r}, "model": "{self.model}", '
                f'"backfill": {"true" if self.backfill else "false"}}}\n')


@dataclass
class FillResult:
    """What a fill produced: signals to write, missing bars to report, whether another fill is needed."""

    signals: list[Signal] = field(default_factory=list)
    backfilled: int = 0                                          # bars signalled from REST
    history: int = 0                                             # warm-up bars loaded without a signal
    unfilled: list[tuple[int, int]] = field(default_factory=list)  # (first missing start_ms, bars missing)
    duplicates: int = 0
    more: bool = False


class Pipeline:
    """De-duplicate, order and gap-check the closed candles of one (symbol, interval) and run the model."""

    def __init__(self, symbol: str, interval: str, model, *, warmup_extra_bars: int = 5) -> None:
        self.symbol = symbol
        self.interval = interval
        self.interval_ms = interval_ms(interval)
        self.model = model
        self.state = model.new_state()
        self.warmup_count = int(model.warmup_bars) + warmup_extra_bars
        self.next_start_ms: int | None = None  # None until the first fill (or a cold start)
        self.filling = False
        self._held: dict[int, tuple[Candle, int]] = {}  # start_ms -> (close, recv_ns) while a fill is out
        self._fill_end: int | None = None  # first held start when the outstanding fill was requested
        self._names = tuple(model.classes)
        # Counters for logs and metrics.
        self.signals = 0
        self.duplicates = 0
        self.backfilled = 0
        self.unfilled_bars = 0

    # ------------------------------------------------------------------ live path
    def on_close(self, candle: Candle, recv_ns: int = 0) -> Signal | _Fill | None:
        """Take one confirmed candle: a :class:`Signal`, :data:`FILL` (fetch a range first), or None."""
        start = candle.start_ms
        nxt = self.next_start_ms
        if start == nxt and not self.filling:
            return self._advance(candle, False, recv_ns)
        if nxt is not None and start < nxt:
            self.duplicates += 1
            return None
        if start in self._held:
            self.duplicates += 1
            return None
        self._held[start] = (candle, recv_ns)
        if self.filling:
            return None
        self.filling = True
        return FILL

    def start_cold(self, start_ms: int) -> None:
        """Expect ``start_ms`` next with no history (replay from a file): the state warms on these bars."""
        self.next_start_ms = start_ms

    def begin_fill(self) -> bool:
        """Mark a fill as outstanding (warm-up, or catch-up after a reconnect); False if one already is."""
        if self.filling:
            return False
        self.filling = True
        return True

    def fill_range(self) -> tuple[int | None, int | None, int | None]:
        """Return ``(start_ms, end_ms, count)`` for the REST call the outstanding fill needs.

        Warm-up: the latest ``count`` closed bars before the first held close (or up to now).
        Otherwise: every closed bar from the expected start up to the first held close (or up to now).
        """
        self._fill_end = min(self._held) if self._held else None
        end = None if self._fill_end is None else self._fill_end - 1
        if self.next_start_ms is None:
            return None, end, self.warmup_count
        return self.next_start_ms, end, None

    def apply_fill(self, candles: list[Candle]) -> FillResult:
        """Process the closed candles REST returned for :meth:`fill_range`, then the held closes."""
        res = FillResult()
        if self.next_start_ms is None:
            # Warm-up: history only, nothing signalled. A hole between history and the first held close is
            # left to a follow-up fill (REST may lag the stream by a moment).
            first_held = min(self._held) if self._held else None
            for c in candles:
                if first_held is None or c.start_ms < first_held:
                    self.state.update(c.open, c.high, c.low, c.close, c.volume)
                    self.next_start_ms = c.start_ms + self.interval_ms
                    res.history += 1
            if self.next_start_ms is None:  # no history at all: start cold at the first held close
                self.next_start_ms = first_held
        else:
            stop = min(self._held) if self._held else None
            for c in candles:
                if c.start_ms < self.next_start_ms:
                    res.duplicates += 1
                    continue
                if stop is not None and c.start_ms >= stop:
                    break
                self._step_over_missing(c.start_ms, res)  # a hole inside what REST returned
                self._emit(self._advance(c, True, 0), res)
                res.backfilled += 1
            if self._fill_end is not None:  # REST was asked up to the held close: what it lacked is missing
                self._step_over_missing(min(self._fill_end, stop), res)
        if self.next_start_ms is not None:
            self._drain_held(res)
        else:
            self.filling = False
        self._fill_end = None
        self.backfilled += res.backfilled
        self.duplicates += res.duplicates
        return res

    def fill_failed(self) -> FillResult:
        """REST could not deliver the range: report it as missing and carry on with the held closes."""
        res = FillResult()
        if self.next_start_ms is None:
            if not self._held:  # nothing to anchor on yet; the next close asks again
                self.filling = False
                return res
            self.next_start_ms = min(self._held)  # cold start: the state warms on live bars
        elif self._held:  # nothing else will bring the bars before the first held close
            self._step_over_missing(min(self._held), res)
        self._fill_end = None
        self._drain_held(res)
        return res

    def set_model(self, model) -> None:
        """Serve another model from the next bar on; the rolling features carry over (SIGHUP reload)."""
        self.state = self.state.rebind(model)
        self.model = model
        self._names = tuple(model.classes)

    # ------------------------------------------------------------------ internals
    def _advance(self, c: Candle, backfill: bool, recv_ns: int) -> Signal | None:
        state = self.state
        t0 = perf_counter_ns()
        k = state.update(c.open, c.high, c.low, c.close, c.volume)
        t1 = perf_counter_ns()
        self.next_start_ms = c.start_ms + self.interval_ms
        if k < 0:  # warming up (or no valid bar yet)
            return None
        p = state.probs
        names = self._names
        self.signals += 1
        return Signal(self.symbol, self.interval, c.start_ms, names[k],
                      {names[0]: float(p[0]), names[1]: float(p[1]), names[2]: float(p[2])},
                      t1 - t0, self.model.id, backfill, recv_ns, c.close)

    @staticmethod
    def _emit(sig: Signal | None, res: FillResult) -> None:
        if sig is not None:
            res.signals.append(sig)

    def _step_over_missing(self, upto_ms: int, res: FillResult) -> None:
        # Bars from next_start_ms up to (not including) upto_ms never arrived from anywhere.
        nxt = self.next_start_ms
        if upto_ms <= nxt:
            return
        n = (upto_ms - nxt) // self.interval_ms
        res.unfilled.append((nxt, n))
        self.unfilled_bars += n
        for _ in range(n):
            self.state.update(_NAN, _NAN, _NAN, _NAN, _NAN)
        self.next_start_ms = nxt + n * self.interval_ms

    def _drain_held(self, res: FillResult) -> None:
        for start in sorted(self._held):
            if start > self.next_start_ms:  # another hole: it needs its own fill
                res.more = True
                return
            c, recv_ns = self._held.pop(start)
            if start < self.next_start_ms:
                res.duplicates += 1
                continue
            self._emit(self._advance(c, False, recv_ns), res)
        self.filling = False
