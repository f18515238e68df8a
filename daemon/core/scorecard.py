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
Each bar costs O(1): fixed-size rings (Python lists, allocated once) and running sums.

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
    """Running sums of one rolling window (a symbol's, or all symbols' pooled)."""

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
    """One symbol's rings: recent closes and squared returns, pending predictions, the scored window."""

    def __init__(self, name: str, rule: LabelRule, window_bars: int) -> None:
        self.name = name
        h, vw = rule.horizon_bars, rule.vol_window
        self.size = max(h, vw) + 2  # ring of bars: reaches back to t - h and to the oldest return in the band
        # per bar: (close, squared one-bar log return, hold band, prediction made at it or None)
        self.slots: list[tuple] = [(math.nan, math.nan, math.nan, None)] * self.size
        self.window = window_bars
        # the scored window, one column each (about 26 bytes per slot, so a week per symbol stays small):
        # log loss, Brier, confidence of the decided class, and decided class | hit << 2 | bin << 3
        self.w_ll = array("d", bytes(8 * window_bars))
        self.w_brier = array("d", bytes(8 * window_bars))
        self.w_conf = array("d", bytes(8 * window_bars))
        self.w_code = array("h", bytes(2 * window_bars))
        self.w_head = 0
        self.sums = _Sums()
        self.bars = 0  # bars seen (including missing ones stepped over)
        self.last_missing = -(1 << 62)  # bar index of the latest missing bar
        self.r2_sum = 0.0  # squared one-bar log returns over the last vol_window bars
        self.r2_bad = 0  # returns in that window that are not finite
        self.next_start_ms: int | None = None
        self.outside = 0  # consecutive scored bars above the band
        self.degraded = False
        self.duplicates = 0


class Scorecard:
    """Rolling live scores per symbol and overall; feed it every closed bar with its prediction, if any."""

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
        self.symbols = {s: _Symbol(s, rule, window_bars) for s in symbols}
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
        st = self.symbols.get(symbol)
        if st is None:
            return
        nxt = st.next_start_ms
        if nxt is not None:
            if start_ms < nxt:
                st.duplicates += 1
                return
            missing = (start_ms - nxt) // self.interval_ms
            if missing > 0:
                for _ in range(min(missing, st.size)):  # beyond the ring every slot is stale anyway
                    self._step(st, math.nan, None)
                st.bars += missing - min(missing, st.size)
        st.next_start_ms = start_ms + self.interval_ms
        self._step(st, close, probs)

    def _step(self, st: _Symbol, close: float, probs) -> None:
        t = st.bars
        size = st.size
        slots = st.slots
        if not (0.0 < close < _INF):
            close = _NAN
            st.last_missing = t
        prev = slots[(t - 1) % size][0]
        if close == close and prev == prev:
            r = _log(close / prev)
            r2 = r * r
        else:
            r2 = _NAN
        # roll the band's window of squared returns r[t-vw+1..t]: add r[t], drop r[t-vw]
        vw = self._vw
        if t >= vw:
            old = slots[(t - vw) % size][1]
            if old == old:
                st.r2_sum -= old
            else:
                st.r2_bad -= 1
        if r2 == r2:
            st.r2_sum += r2
        else:
            st.r2_bad += 1
        if t >= vw and st.r2_bad == 0:
            band = self._band_k * _sqrt(max(st.r2_sum, 0.0) / vw) * self._sqrt_h
            if band < self._cost:
                band = self._cost
        else:
            band = _NAN
        slots[t % size] = (close, r2, band, probs)
        st.bars = t + 1
        # the prediction made h bars ago is decided by this close
        h = self._h
        if t >= h and st.last_missing < t - h - vw:
            c0, _, b, p = slots[(t - h) % size]
            if p is not None and b == b:
                fwd = _log(close / c0)
                self._score(st, p, BUY if fwd > b else (SELL if fwd < -b else HOLD))

    def _score(self, st: _Symbol, p, y: int) -> None:
        ll = -_log(min(max(p[y], _EPS), 1.0))
        e0 = p[0] - (y == SELL)
        e1 = p[1] - (y == HOLD)
        e2 = p[2] - (y == BUY)
        brier = e0 * e0 + e1 * e1 + e2 * e2
        # argmax with ties to the lower index, like numpy.argmax
        dec = 0 if (p[0] >= p[1] and p[0] >= p[2]) else (1 if p[1] >= p[2] else 2)
        conf = p[dec]
        hit = 1 if dec == y else 0
        b = int(conf * CALIBRATION_BINS)
        if b >= CALIBRATION_BINS:
            b = CALIBRATION_BINS - 1
        sums = st.sums
        k = st.w_head
        d_ll = ll
        if sums.n == st.window:  # the oldest scored bar leaves the window
            o_ll = st.w_ll[k]
            o_conf = st.w_conf[k]
            code = st.w_code[k]
            o_dec = code & 3
            o_hit = (code >> 2) & 1
            o_b = code >> 3
            d_ll -= o_ll
            sums.ll -= o_ll
            sums.brier -= st.w_brier[k]
            sums.dec_n[o_dec] -= 1
            sums.dec_hit[o_dec] -= o_hit
            sums.cal_n[o_b] -= 1
            sums.cal_conf[o_b] -= o_conf
            sums.cal_hit[o_b] -= o_hit
        else:
            sums.n += 1
            self._o_n += 1
        st.w_ll[k] = ll
        st.w_brier[k] = brier
        st.w_conf[k] = conf
        st.w_code[k] = dec | hit << 2 | b << 3
        k += 1
        st.w_head = k if k < st.window else 0
        sums.ll += ll
        sums.brier += brier
        sums.dec_n[dec] += 1
        sums.dec_hit[dec] += hit
        sums.cal_n[b] += 1
        sums.cal_conf[b] += conf
        sums.cal_hit[b] += hit
        self._o_ll += d_ll
        expected = self.expected
        if expected is None:
            return
        # model_degraded: symbol first, then the pooled window (both O(1))
        limit = expected + self.band
        need = self._need
        n = sums.n
        if n >= need:
            st.outside = st.outside + 1 if sums.ll / n > limit else 0
            bad = st.outside >= self.degraded_after_bars
            if bad != st.degraded:
                st.degraded = bad
                self._event(st.name, bad, sums.ll / n)
        n = self._o_n
        if n >= need:
            self.overall_outside = self.overall_outside + 1 if self._o_ll / n > limit else 0
            bad = self.overall_outside >= self.degraded_after_bars
            if bad != self.overall_degraded:
                self.overall_degraded = bad
                self._event("*", bad, self._o_ll / n)

    def _event(self, symbol: str, degraded: bool, live_log_loss: float) -> None:
        self.events.append({"symbol": symbol, "degraded": degraded, "live_log_loss": live_log_loss,
                            "expected_log_loss": self.expected, "band": self.band, "bars": self.degraded_after_bars})

    # ------------------------------------------------------------------ reading
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
        overall = _Sums()
        for st in self.symbols.values():
            overall.merge(st.sums)
        out = {"expected_log_loss": self.expected, "band": self.band, "window_bars": self.window_bars,
               "degraded": self.degraded, "overall": {**overall.report(), "degraded": self.overall_degraded},
               "symbols": {}}
        for name, st in self.symbols.items():
            out["symbols"][name] = {**st.sums.report(), "degraded": st.degraded, "bars": st.bars,
                                    "duplicates": st.duplicates}
        return out
