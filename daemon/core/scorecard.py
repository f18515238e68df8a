"""The live scorecard: how good the served predictions turn out to be, scored from the same stream (no I/O).

Every signal at bar ``t`` predicts the label of ``t``; that label is known ``h`` bars later, when bar
``t + h`` closes: the forward return ``log(close[t+h] / close[t])`` against the hold band
``max(band_k * vol[t] * sqrt(h), round_trip_cost)``, ``vol[t]`` the RMS of the ``vol_window`` one-bar log
returns ending at ``t``. The rule and its parameters come from the artifact manifest's ``labels`` section,
exactly as ``daemon.training.labels.make_labels`` applies them when training (a label whose window touches a
missing bar is not scored, as there).

Per symbol, over the last ``window_bars`` scored predictions, and overall (the symbols' windows pooled):
log loss, Brier score (sum over the three classes), hit rate of buy and of sell decisions (a decision is a
hit when the label turns out to be that class), and calibration buckets of the decided class's probability.
Each bar costs O(1) and does only what cannot wait: the label of the prediction made ``h`` bars ago, its log
loss, and the running log loss the degradation rule reads (rings allocated once, running sums). The other
figures are settled when read (``report``: a scrape or the periodic ``scorecard`` event) from the predictions
and labels the window keeps, so a read costs O(predictions scored since the last read), bounded by the window.

``model_degraded``: the live log loss is above the artifact's own held-out log loss plus ``band`` for
``degraded_after_bars`` consecutive scored bars (judged once the window holds that many). Only the worse
side counts: a model doing better than its report is not degraded. The expected log loss is the manifest's
lockbox figure when it has one, else its development (or, in older artifacts, out-of-sample) figure.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass

__all__ = ["CALIBRATION_BINS", "LabelRule", "Scorecard", "ScorecardUnavailable", "expected_log_loss"]

SELL, HOLD, BUY = 0, 1, 2
CALIBRATION_BINS = 10
_NAN = math.nan
_INF = math.inf
_log = math.log
_sqrt = math.sqrt
_EPS = 1e-15  # log loss clips probabilities here, as daemon.training.evaluate.log_loss does
# Paths in the manifest's metrics where a held-out student log loss may be found, best first.
_EXPECTED_PATHS = (("lockbox", "student", "log_loss"), ("development", "student", "log_loss"),
                   ("out_of_sample", "student", "log_loss"))


class ScorecardUnavailable(ValueError):
    """The artifact does not say how its labels are made, so its predictions cannot be scored live."""


@dataclass(frozen=True)
class LabelRule:
    """The label parameters of an artifact (``labels`` in its manifest)."""

    horizon_bars: int
    band_k: float
    vol_window: int
    round_trip_cost: float

    @classmethod
    def from_manifest(cls, manifest: dict) -> LabelRule:
        """Read the rule from a manifest; raise ScorecardUnavailable naming the missing or bad key."""
        labels = manifest.get("labels")
        if not isinstance(labels, dict):
            raise ScorecardUnavailable("manifest has no labels section")
        vals = {}
        for key, kind in (("horizon_bars", int), ("band_k", float), ("vol_window", int), ("round_trip_cost", float)):
            v = labels.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 \
                    or (kind is int and (v != int(v) or v < 1)):
                want = "positive integer" if kind is int else "number >= 0"
                raise ScorecardUnavailable(f"labels.{key} is {v!r}, expected a {want}")
            vals[key] = kind(v)
        if vals["vol_window"] < 2:
            raise ScorecardUnavailable(f"labels.vol_window is {vals['vol_window']}, expected >= 2")
        return cls(**vals)


def expected_log_loss(manifest: dict) -> float | None:
    """The artifact's held-out student log loss (lockbox first, then development), None if it has none."""
    metrics = manifest.get("metrics")
    for path in _EXPECTED_PATHS:
        node = metrics
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, (int, float)) and not isinstance(node, bool) and math.isfinite(node) and node > 0:
            return float(node)
    return None


class _Sums:
    """What a rolling window adds up to: the read-time figures (a symbol's window, or all symbols' pooled)."""

    __slots__ = ("n", "ll", "brier", "dec_n", "dec_hit", "cal_n", "cal_conf", "cal_hit")

    def __init__(self) -> None:
        self.n = 0
        self.ll = 0.0
        self.brier = 0.0
        self.dec_n = [0, 0, 0]  # by decided class
        self.dec_hit = [0, 0, 0]
        self.cal_n = [0] * CALIBRATION_BINS
        self.cal_conf = [0.0] * CALIBRATION_BINS
        self.cal_hit = [0] * CALIBRATION_BINS

    def merge(self, other: _Sums) -> None:
        self.n += other.n
        self.ll += other.ll
        self.brier += other.brier
        for mine, theirs in ((self.dec_n, other.dec_n), (self.dec_hit, other.dec_hit), (self.cal_n, other.cal_n),
                             (self.cal_conf, other.cal_conf), (self.cal_hit, other.cal_hit)):
            for i, v in enumerate(theirs):
                mine[i] += v

    def report(self) -> dict:
        n = self.n
        hit = {name: (self.dec_hit[k] / self.dec_n[k] if self.dec_n[k] else None)
               for name, k in (("buy", BUY), ("sell", SELL))}
        return {
            "n": n,
            "log_loss": self.ll / n if n else None,
            "brier": self.brier / n if n else None,
            "hit_rate": hit,
            "decisions": {"buy": self.dec_n[BUY], "sell": self.dec_n[SELL], "hold": self.dec_n[HOLD]},
            "calibration": [{"lo": b / CALIBRATION_BINS, "hi": (b + 1) / CALIBRATION_BINS, "n": self.cal_n[b],
                             "confidence": self.cal_conf[b] / self.cal_n[b] if self.cal_n[b] else None,
                             "accuracy": self.cal_hit[b] / self.cal_n[b] if self.cal_n[b] else None}
                            for b in range(CALIBRATION_BINS)],
        }


class _Symbol:
    """One symbol's state: the bar ring for labels, the scored window, and the running log loss."""

    __slots__ = ("name", "next_ms", "first_ms", "skew_ms", "duplicates", "run", "head", "prev", "r2_sum", "r2",
                 "bars", "total", "w_ll", "w_p", "w_y", "ll", "outside", "degraded", "applied", "sums",
                 "a_brier", "a_conf", "a_code")

    def __init__(self, name: str, size: int, window_bars: int) -> None:
        self.name = name
        self.next_ms: int | None = None  # start of the bar expected next; None before the first
        self.first_ms = 0
        self.skew_ms = 0  # off-grid milliseconds of bars that arrived late, so bars counts whole intervals
        self.duplicates = 0
        # Bar ring, indexed by `head` (one slot per present bar; Python's negative indices wrap it):
        # `run` present bars in a row end at the previous one, so a lag up to `run` reads a bar of that run
        # and a missing bar needs no slot, it just sets `run` to 0.
        self.run = 0
        self.head = 0
        self.prev = _NAN  # the previous close
        self.r2_sum = 0.0  # squared one-bar log returns of the last min(run - 1, vol_window) bars
        self.r2 = [0.0] * size  # squared one-bar log return per bar
        self.bars: list[tuple | None] = [None] * size  # (close, hold band, prediction or None) per bar
        # Scored window, slot `total % window_bars`: log loss, prediction and label per scored bar (with the
        # read-time side below about 60 bytes a slot, plus each prediction until it is settled)
        self.total = 0  # predictions ever scored
        self.w_ll = [0.0] * window_bars
        self.w_p: list[tuple | None] = [None] * window_bars  # released once settled
        self.w_y = bytearray(window_bars)
        self.ll = 0.0  # log loss over the window, kept per bar for the degradation rule
        self.outside = 0  # consecutive scored bars above the band
        self.degraded = False
        # Read-time side: the first `applied` scored predictions are in `sums`, each slot's share kept
        # (Brier, decided class's probability, decided class | hit << 2 | bin << 3) so it can leave again.
        self.applied = 0
        self.sums = _Sums()
        self.a_brier = array("d", bytes(8 * window_bars))
        self.a_conf = array("d", bytes(8 * window_bars))
        self.a_code = array("h", bytes(2 * window_bars))


class Scorecard:
    """Rolling live scores per symbol and overall; feed it every closed bar with its prediction, if any.

    Per bar (:meth:`on_bar`) only what the degradation rule needs is computed: the label of the prediction
    made ``h`` bars ago and its log loss. Brier score, decisions, hit rates and calibration buckets are
    settled when read (:meth:`report`), from the predictions and labels the window keeps.
    """

    def __init__(self, symbols, rule: LabelRule, interval_ms: int, *, window_bars: int = 2016, band: float = 0.05,
                 degraded_after_bars: int = 288, expected: float | None = None) -> None:
        if window_bars < 1 or degraded_after_bars < 1 or interval_ms <= 0:
            raise ValueError("window_bars, degraded_after_bars and interval_ms must be positive")
        self.rule = rule
        self.interval_ms = interval_ms
        self.window_bars = window_bars
        self.band = band
        self.degraded_after_bars = degraded_after_bars
        self.expected = expected
        self._sqrt_h = math.sqrt(rule.horizon_bars)
        self._h, self._vw = rule.horizon_bars, rule.vol_window
        self._band_k, self._cost = rule.band_k, rule.round_trip_cost
        self._scoring = rule.horizon_bars + rule.vol_window  # present bars in a row before one that scores
        # a lag reaches back at most max(h, vw) slots; one more keeps the slot being written apart
        size = max(rule.horizon_bars, rule.vol_window) + 1
        self._last = size - 1
        self.symbols = {s: _Symbol(s, size, window_bars) for s in symbols}
        # the pooled window's log loss, kept per bar for the overall degradation rule; the rest of the
        # overall figures are summed from the symbols' windows when read
        self._o_ll = 0.0
        self._o_n = 0
        self._need = min(degraded_after_bars, window_bars)
        self.overall_outside = 0
        self.overall_degraded = False
        self.events: list[dict] = []  # degradation changes since the last take_events()

    @classmethod
    def from_manifest(cls, symbols, manifest: dict, interval_ms: int, **kw) -> Scorecard:
        """A scorecard for an artifact: its label rule and its held-out log loss as the expectation."""
        return cls(symbols, LabelRule.from_manifest(manifest), interval_ms, expected=expected_log_loss(manifest), **kw)

    def set_model(self, manifest: dict) -> bool:
        """Judge against a newly served model; returns True if its label rule differs and the windows restarted."""
        rule = LabelRule.from_manifest(manifest)
        self.expected = expected_log_loss(manifest)
        if rule == self.rule:
            return False
        self.__init__(list(self.symbols), rule, self.interval_ms, window_bars=self.window_bars, band=self.band,
                      degraded_after_bars=self.degraded_after_bars, expected=self.expected)
        return True

    # ------------------------------------------------------------------ per bar
    def on_bar(self, symbol: str, start_ms: int, close: float, probs=None) -> None:
        """Take one closed bar of ``symbol`` and the (sell, hold, buy) probabilities predicted at it (or None)."""
        # One straight pass, state in locals, no helper call on the common path (the bar after the previous
        # one, everything warm): this runs for every bar.
        try:
            st = self.symbols[symbol]
        except KeyError:
            return
        if start_ms != st.next_ms and not self._off_grid(st, start_ms):
            return
        st.next_ms = start_ms + self.interval_ms
        if not 0.0 < close < _INF:  # no close: no label whose window holds this bar is scored
            st.run = 0
            return
        run = st.run
        prev = st.prev
        st.prev = close
        st.run = run + 1
        j = st.head
        st.head = j + 1 if j < self._last else 0
        if not run:
            st.r2_sum = 0.0
            return
        x = close / prev
        if not 0.0 < x < _INF:  # a return beyond float range (hostile prices): start a new run here
            st.run = 1
            st.r2_sum = 0.0
            return
        r = _log(x)
        r2 = r * r
        vw = self._vw
        r2s = st.r2
        # roll the band's window of squared returns r[t-vw+1..t]: drop r[t-vw] once it is in, add r[t]
        s = st.r2_sum - r2s[j - vw] + r2 if run > vw else st.r2_sum + r2
        st.r2_sum = s
        r2s[j] = r2
        if run < vw:
            return
        band = self._band_k * _sqrt((s if s > 0.0 else 0.0) / vw) * self._sqrt_h
        if band < self._cost:
            band = self._cost
        bars = st.bars
        bars[j] = (close, band, probs)
        if run < self._scoring:
            return
        # the prediction made h bars ago is decided by this close
        c0, b, p = bars[j - self._h]
        if p is None:
            return
        x = close / c0
        fwd = _log(x) if x > 0.0 else -_INF  # -inf as numpy.log gives, where math.log raises
        y = BUY if fwd > b else (SELL if fwd < -b else HOLD)
        q = p[y]
        if not _EPS <= q <= 1.0:  # clipped as daemon.training.evaluate.log_loss does
            q = min(max(q, _EPS), 1.0)
        ll = -_log(q)
        # into the scored window; the oldest scored bar leaves it once it is full
        tot = st.total
        window = self.window_bars
        k = tot % window
        w_ll = st.w_ll
        if tot >= window:
            old = w_ll[k]
            n = window
            lsum = st.ll = st.ll - old + ll
            self._o_ll += ll - old
        else:
            n = tot + 1
            lsum = st.ll = st.ll + ll
            self._o_ll += ll
            self._o_n += 1
        w_ll[k] = ll
        st.w_p[k] = p
        st.w_y[k] = y
        st.total = tot + 1
        limit = self.expected
        if limit is None:
            return
        limit += self.band
        # model_degraded, O(1): the symbol's window, then the pooled one; degraded implies outside > 0, so
        # the end of a run needs only that looked at
        need = self._need
        if n >= need:
            if lsum / n > limit:
                st.outside += 1
                if st.outside >= self.degraded_after_bars and not st.degraded:
                    st.degraded = True
                    self._event(st.name, True, lsum / n)
            elif st.outside:
                st.outside = 0
                if st.degraded:
                    st.degraded = False
                    self._event(st.name, False, lsum / n)
        n = self._o_n
        if n >= need:
            mean = self._o_ll / n
            if mean > limit:
                self.overall_outside += 1
                if self.overall_outside >= self.degraded_after_bars and not self.overall_degraded:
                    self.overall_degraded = True
                    self._event("*", True, mean)
            elif self.overall_outside:
                self.overall_outside = 0
                if self.overall_degraded:
                    self.overall_degraded = False
                    self._event("*", False, mean)

    def _off_grid(self, st: _Symbol, start_ms: int) -> bool:
        """A bar other than the one expected: the first (True), a repeat (counted, False) or one after a gap."""
        nxt = st.next_ms
        if nxt is None:
            st.first_ms = start_ms
            return True
        if start_ms < nxt:
            st.duplicates += 1
            return False
        missing, skew = divmod(start_ms - nxt, self.interval_ms)
        if missing:
            st.run = 0
        st.skew_ms += skew
        return True

    def _event(self, symbol: str, degraded: bool, live_log_loss: float) -> None:
        self.events.append({"symbol": symbol, "degraded": degraded, "live_log_loss": live_log_loss,
                            "expected_log_loss": self.expected, "band": self.band, "bars": self.degraded_after_bars})

    # ------------------------------------------------------------------ reading
    def _settle(self, st: _Symbol) -> _Sums:
        """Bring a symbol's read-time sums up to its scored window: O(predictions scored since the last read)."""
        tot, window = st.total, self.window_bars
        start = st.applied
        sums = st.sums
        if tot - start >= window:  # the whole window is new: start over rather than add and take away
            start = tot - window
            sums = st.sums = _Sums()
            leaving = False
        else:
            leaving = True
        w_p, w_y = st.w_p, st.w_y
        a_brier, a_conf, a_code = st.a_brier, st.a_conf, st.a_code
        dec_n, dec_hit, cal_n, cal_conf, cal_hit = sums.dec_n, sums.dec_hit, sums.cal_n, sums.cal_conf, sums.cal_hit
        brier_sum = sums.brier
        for s in range(start, tot):
            k = s % window
            if leaving and s >= window:  # the slot's previous prediction leaves the window
                code = a_code[k]
                o_dec, o_hit, o_b = code & 3, (code >> 2) & 1, code >> 3
                brier_sum -= a_brier[k]
                dec_n[o_dec] -= 1
                dec_hit[o_dec] -= o_hit
                cal_n[o_b] -= 1
                cal_conf[o_b] -= a_conf[k]
                cal_hit[o_b] -= o_hit
            p0, p1, p2 = w_p[k]
            w_p[k] = None
            y = w_y[k]
            # Brier over the three classes (the label's term is p - 1)
            e0 = p0 - (y == SELL)
            e1 = p1 - (y == HOLD)
            e2 = p2 - (y == BUY)
            brier = e0 * e0 + e1 * e1 + e2 * e2
            # argmax with ties to the lower index, like numpy.argmax
            if p0 >= p1 and p0 >= p2:
                dec, conf = SELL, p0
            elif p1 >= p2:
                dec, conf = HOLD, p1
            else:
                dec, conf = BUY, p2
            hit = 1 if dec == y else 0
            b = int(conf * CALIBRATION_BINS)
            if b >= CALIBRATION_BINS:
                b = CALIBRATION_BINS - 1
            brier_sum += brier
            dec_n[dec] += 1
            dec_hit[dec] += hit
            cal_n[b] += 1
            cal_conf[b] += conf
            cal_hit[b] += hit
            a_brier[k] = brier
            a_conf[k] = conf
            a_code[k] = dec | hit << 2 | b << 3
        sums.brier = brier_sum
        st.applied = tot
        sums.n = min(tot, window)
        sums.ll = st.ll
        return sums

    def settle(self) -> int:
        """Bring every symbol's read-time figures up to date (``report`` does it first); returns how many
        scored predictions that took in."""
        before = sum(st.applied for st in self.symbols.values())
        for st in self.symbols.values():
            self._settle(st)
        return sum(st.applied for st in self.symbols.values()) - before

    @property
    def degraded(self) -> bool:
        """True while the overall or any symbol's live log loss has stayed above the band long enough."""
        return self.overall_degraded or any(s.degraded for s in self.symbols.values())

    def take_events(self) -> list[dict]:
        """Degradation changes (``degraded`` true or false) since the last call, oldest first."""
        out, self.events = self.events, []
        return out

    def report(self) -> dict:
        """Everything, per symbol and overall: the ``scorecard`` log event's body and the metrics' source."""
        per = {name: self._settle(st) for name, st in self.symbols.items()}
        overall = _Sums()
        for sums in per.values():
            overall.merge(sums)
        out = {"expected_log_loss": self.expected, "band": self.band, "window_bars": self.window_bars,
               "degraded": self.degraded, "overall": {**overall.report(), "degraded": self.overall_degraded},
               "symbols": {}}
        for name, st in self.symbols.items():
            bars = 0 if st.next_ms is None else (st.next_ms - st.first_ms - st.skew_ms) // self.interval_ms
            out["symbols"][name] = {**per[name].report(), "degraded": st.degraded, "bars": bars,
                                    "duplicates": st.duplicates}
        return out
