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
lockbox figure when it has one, else its out-of-sample figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["LabelRule", "Scorecard", "ScorecardUnavailable", "expected_log_loss", "CALIBRATION_BINS"]

SELL, HOLD, BUY = 0, 1, 2
CALIBRATION_BINS = 10
_EPS = 1e-15  # log loss clips probabilities here, as daemon.training.evaluate.log_loss does
# Paths in the manifest's metrics where a held-out student log loss may be found, best first.
_EXPECTED_PATHS = (("lockbox", "student", "log_loss"), ("lockbox", "log_loss"),
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
                raise ScorecardUnavailable(f"labels.{key} is {v!r}, expected a {'positive integer' if kind is int else 'number >= 0'}")
            vals[key] = kind(v)
        if vals["vol_window"] < 2:
            raise ScorecardUnavailable(f"labels.vol_window is {vals['vol_window']}, expected >= 2")
        return cls(**vals)


def expected_log_loss(manifest: dict) -> float | None:
    """The artifact's held-out student log loss (lockbox first, else out of sample), None if it has none."""
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

    def add(self, sign: int, ll: float, brier: float, dec: int, hit: int, b: int, conf: float) -> None:
        self.n += sign
        self.ll += sign * ll
        self.brier += sign * brier
        self.dec_n[dec] += sign
        self.dec_hit[dec] += sign * hit
        self.cal_n[b] += sign
        self.cal_conf[b] += sign * conf
        self.cal_hit[b] += sign * hit

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
        self.close = [math.nan] * self.size
        self.r2 = [0.0] * self.size
        self.band = [math.nan] * self.size
        self.p = [(math.nan, math.nan, math.nan)] * self.size  # prediction made at each bar (NaN: none)
        self.window = window_bars
        self.w_ll = [0.0] * window_bars
        self.w_brier = [0.0] * window_bars
        self.w_dec = [0] * window_bars
        self.w_hit = [0] * window_bars
        self.w_bin = [0] * window_bars
        self.w_conf = [0.0] * window_bars
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
        self.symbols = {s: _Symbol(s, rule, window_bars) for s in symbols}
        self.overall = _Sums()
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
        rule = self.rule
        t = st.bars
        size = st.size
        i = t % size
        if not (close > 0.0 and close < math.inf):
            close = math.nan
            st.last_missing = t
        prev = st.close[(t - 1) % size]
        r2 = math.log(close / prev) ** 2 if t > 0 and close == close and prev == prev else math.nan
        # roll the band's window of squared returns: add r[t], drop r[t - vol_window]
        vw = rule.vol_window
        old = st.r2[(t - vw) % size] if t >= vw else 0.0
        if t >= vw:
            if old == old:
                st.r2_sum -= old
            else:
                st.r2_bad -= 1
        if r2 == r2:
            st.r2_sum += r2
        else:
            st.r2_bad += 1
        st.r2[i] = r2
        st.close[i] = close
        # returns r[1..t]: the window r[t-vw+1..t] exists from t = vw on
        if t >= vw and st.r2_bad == 0:
            st.band[i] = max(rule.band_k * math.sqrt(max(st.r2_sum, 0.0) / vw) * self._sqrt_h, rule.round_trip_cost)
        else:
            st.band[i] = math.nan
        st.p[i] = probs if probs is not None else (math.nan, math.nan, math.nan)
        st.bars = t + 1
        # the prediction made h bars ago is decided by this close
        h = rule.horizon_bars
        if t >= h and st.last_missing < t - h - vw:
            j = (t - h) % size
            p = st.p[j]
            b = st.band[j]
            if p[0] == p[0] and b == b:
                fwd = math.log(close / st.close[j])
                y = BUY if fwd > b else (SELL if fwd < -b else HOLD)
                self._score(st, p, y)

    def _score(self, st: _Symbol, p, y: int) -> None:
        ll = -math.log(min(max(p[y], _EPS), 1.0))
        e0 = p[0] - (y == SELL)
        e1 = p[1] - (y == HOLD)
        e2 = p[2] - (y == BUY)
        brier = e0 * e0 + e1 * e1 + e2 * e2
        # argmax with ties to the lower index, like numpy.argmax
        dec = 0 if (p[0] >= p[1] and p[0] >= p[2]) else (1 if p[1] >= p[2] else 2)
        conf = p[dec]
        hit = 1 if dec == y else 0
        b = min(int(conf * CALIBRATION_BINS), CALIBRATION_BINS - 1)
        sums, overall = st.sums, self.overall
        k = st.w_head
        if sums.n == st.window:  # the oldest scored bar leaves the window
            args = (st.w_ll[k], st.w_brier[k], st.w_dec[k], st.w_hit[k], st.w_bin[k], st.w_conf[k])
            sums.add(-1, *args)
            overall.add(-1, *args)
        st.w_ll[k], st.w_brier[k], st.w_dec[k], st.w_hit[k], st.w_bin[k], st.w_conf[k] = ll, brier, dec, hit, b, conf
        st.w_head = k + 1 if k + 1 < st.window else 0
        sums.add(1, ll, brier, dec, hit, b, conf)
        overall.add(1, ll, brier, dec, hit, b, conf)
        if self.expected is not None:
            self._judge(st, sums)

    def _judge(self, st: _Symbol, sums: _Sums) -> None:
        limit = self.expected + self.band
        need = min(self.degraded_after_bars, self.window_bars)
        if sums.n >= need:
            st.outside = st.outside + 1 if sums.ll / sums.n > limit else 0
            bad = st.outside >= self.degraded_after_bars
            if bad != st.degraded:
                st.degraded = bad
                self._event(st.name, bad, sums)
        o = self.overall
        if o.n >= need:
            self.overall_outside = self.overall_outside + 1 if o.ll / o.n > limit else 0
            bad = self.overall_outside >= self.degraded_after_bars
            if bad != self.overall_degraded:
                self.overall_degraded = bad
                self._event("*", bad, o)

    def _event(self, symbol: str, degraded: bool, sums: _Sums) -> None:
        self.events.append({"symbol": symbol, "degraded": degraded, "live_log_loss": sums.ll / sums.n,
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
        out = {"expected_log_loss": self.expected, "band": self.band, "window_bars": self.window_bars,
               "degraded": self.degraded, "overall": {**self.overall.report(), "degraded": self.overall_degraded},
               "symbols": {}}
        for name, st in self.symbols.items():
            out["symbols"][name] = {**st.sums.report(), "degraded": st.degraded, "bars": st.bars,
                                    "duplicates": st.duplicates}
        return out
