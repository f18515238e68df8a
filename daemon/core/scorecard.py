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
Each bar is one compiled call, O(1): ``kernels.scorecard_step.scorecard_step``, which the served model
brings (``Model.scorecard_kernel``: built ahead of time into the student step's module, or JIT-compiled
when the model is), scores the prediction this close decides and keeps every sum of the window current,
in vectors this object owns (``kernels.scorecard_layout``). Nothing is left for read time: a report reads
the sums.

``model_degraded``: the live log loss is above the artifact's own held-out log loss plus ``band`` for
``degraded_after_bars`` consecutive scored bars (judged once the window holds that many). Only the worse
side counts: a model doing better than its report is not degraded. The expected log loss is the manifest's
lockbox figure when it has one, else its development (or, in older artifacts, out-of-sample) figure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kernels.scorecard_layout import (
    C_AFTER,
    C_BAND_K,
    C_BARS,
    C_COST,
    C_H,
    C_INTERVAL,
    C_LIMIT,
    C_NEED,
    C_O_DEGRADED,
    C_O_EVENT_LL,
    C_O_OUTSIDE,
    C_RING,
    C_SQRT_H,
    C_VW,
    C_WINDOW,
    CALIBRATION_BINS,
    CHANGED_OVERALL,
    CHANGED_SYMBOL,
    COMMON_SIZE,
    S_BRIER,
    S_CAL_CONF,
    S_CAL_HIT,
    S_CAL_N,
    S_DEC_HIT,
    S_DEC_N,
    S_DEGRADED,
    S_DUP,
    S_EVENT_LL,
    S_FIRST,
    S_HEADER,
    S_LL,
    S_NEXT,
    S_PREV,
    S_SKEW,
    S_TOTAL,
    symbol_state_size,
)

__all__ = ["CALIBRATION_BINS", "LabelRule", "Scorecard", "ScorecardUnavailable", "expected_log_loss"]

SELL, HOLD, BUY = 0, 1, 2
_NAN = math.nan
Step = Callable[..., int]  # kernels.scorecard_step.scorecard_step, as Model.scorecard_kernel holds it
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



class _Symbol:
    """One symbol's vector (``kernels.scorecard_layout``): bar ring, scored window and their running sums."""

    __slots__ = ("name", "state")

    def __init__(self, name: str, state: np.ndarray) -> None:
        self.name = name
        self.state = state

    @property
    def degraded(self) -> bool:
        """True while this symbol's live log loss has stayed above the band long enough."""
        return bool(self.state[S_DEGRADED])

    @property
    def duplicates(self) -> int:
        """Bars delivered again (or older than the last), ignored."""
        return int(self.state[S_DUP])


class Scorecard:
    """Rolling live scores per symbol and overall; feed it every closed bar with its prediction, if any.

    ``step`` is the compiled per-bar update (``Model.scorecard_kernel``); each :meth:`on_bar` is one call
    of it, and :meth:`report` reads the sums it keeps.
    """

    def __init__(self, symbols, rule: LabelRule, interval_ms: int, *, step: Step, window_bars: int = 2016,
                 band: float = 0.05, degraded_after_bars: int = 288, expected: float | None = None) -> None:
        if window_bars < 1 or degraded_after_bars < 1 or interval_ms <= 0:
            raise ValueError("window_bars, degraded_after_bars and interval_ms must be positive")
        self.rule = rule
        self.interval_ms = interval_ms
        self.window_bars = window_bars
        self.band = band
        self.degraded_after_bars = degraded_after_bars
        self._step = step
        c = self._common = np.zeros(COMMON_SIZE)
        c[C_H], c[C_VW], c[C_BAND_K], c[C_COST] = rule.horizon_bars, rule.vol_window, rule.band_k, rule.round_trip_cost
        c[C_WINDOW], c[C_AFTER], c[C_INTERVAL] = window_bars, degraded_after_bars, interval_ms
        c[C_NEED] = min(degraded_after_bars, window_bars)
        c[C_SQRT_H] = math.sqrt(rule.horizon_bars)
        # a lag reaches back at most max(h, vw) slots; one more keeps the slot being written apart
        ring = max(rule.horizon_bars, rule.vol_window) + 1
        c[C_RING] = ring
        self.expected = expected
        # one row per symbol (each row a C-contiguous vector, as the kernel takes), so a report reads every
        # symbol's sums at once
        names = list(dict.fromkeys(symbols))
        self._block = np.zeros((len(names), symbol_state_size(ring, window_bars)))
        self._block[:, S_NEXT] = _NAN  # no bar yet
        self._block[:, S_PREV] = _NAN
        self.symbols = {s: _Symbol(s, self._block[i]) for i, s in enumerate(names)}
        self._states = {s: st.state for s, st in self.symbols.items()}  # what on_bar looks up
        self.events: list[dict] = []  # degradation changes since the last take_events()
        self._brief: tuple[float, dict] | None = None  # (bars taken, report(detail=False)) of the last such read

    @property
    def expected(self) -> float | None:
        """The held-out log loss the live one is judged against (None: not judged)."""
        return self._expected

    @expected.setter
    def expected(self, value: float | None) -> None:
        self._expected = value
        self._brief = None  # the figures judged against the old value are stale
        self._common[C_LIMIT] = _NAN if value is None else value + self.band

    @classmethod
    def from_manifest(cls, symbols, manifest: dict, interval_ms: int, *, step: Step, **kw) -> Scorecard:
        """A scorecard for an artifact: its label rule and its held-out log loss as the expectation."""
        return cls(symbols, LabelRule.from_manifest(manifest), interval_ms, step=step,
                   expected=expected_log_loss(manifest), **kw)

    def set_model(self, manifest: dict, step: Step | None = None) -> bool:
        """Judge against a newly served model (and run its ``step``, if given); returns True if its label rule
        differs and the windows restarted."""
        rule = LabelRule.from_manifest(manifest)
        self.expected = expected_log_loss(manifest)
        if step is not None:
            self._step = step
        if rule == self.rule:
            return False
        self.__init__(list(self.symbols), rule, self.interval_ms, step=self._step, window_bars=self.window_bars,
                      band=self.band, degraded_after_bars=self.degraded_after_bars, expected=self.expected)
        return True

    # ------------------------------------------------------------------ per bar
    def on_bar(self, symbol: str, start_ms: int, close: float, probs=None) -> None:
        """Take one closed bar of ``symbol`` and the (sell, hold, buy) probabilities predicted at it (or None)."""
        state = self._states.get(symbol)
        if state is None:
            return
        if probs is None:
            changed = self._step(state, self._common, start_ms, close, _NAN, _NAN, _NAN)
        else:
            p0, p1, p2 = probs
            changed = self._step(state, self._common, start_ms, close, p0, p1, p2)
        if changed:
            self._changed(symbol, state, changed)

    def _changed(self, symbol: str, state: np.ndarray, changed: int) -> None:
        c = self._common
        if changed & CHANGED_SYMBOL:
            self._event(symbol, bool(state[S_DEGRADED]), float(state[S_EVENT_LL]))
        if changed & CHANGED_OVERALL:
            self._event("*", bool(c[C_O_DEGRADED]), float(c[C_O_EVENT_LL]))

    def _event(self, symbol: str, degraded: bool, live_log_loss: float) -> None:
        self.events.append({"symbol": symbol, "degraded": degraded, "live_log_loss": live_log_loss,
                            "expected_log_loss": self.expected, "band": self.band, "bars": self.degraded_after_bars})

    # ------------------------------------------------------------------ reading
    @property
    def overall_degraded(self) -> bool:
        """True while the pooled live log loss has stayed above the band long enough."""
        return bool(self._common[C_O_DEGRADED])

    @property
    def overall_outside(self) -> int:
        """Consecutive scored bars the pooled live log loss has been above the band."""
        return int(self._common[C_O_OUTSIDE])

    @property
    def degraded(self) -> bool:
        """True while the overall or any symbol's live log loss has stayed above the band long enough."""
        return self.overall_degraded or any(s[S_DEGRADED] for s in self._states.values())

    def take_events(self) -> list[dict]:
        """Degradation changes (``degraded`` true or false) since the last call, oldest first."""
        out, self.events = self.events, []
        return out

    def report(self, detail: bool = True) -> dict:
        """Everything, per symbol and overall: the ``scorecard`` log event's body and the metrics' source.

        Per window: ``n`` scored predictions, mean ``log_loss`` and ``brier``, ``hit_rate`` and ``decisions``
        of buy and sell (and hold), and ``calibration`` in the training report's shape
        (``daemon.training.evaluate.reliability``: per bin of the decided class's probability, mean
        ``confidence``, ``accuracy`` and ``count``; None where a bin or window is empty); per symbol also
        ``degraded``, ``bars`` and ``duplicates``. ``detail=False`` leaves out what the daemon exports only
        for the pooled window (each symbol's decisions and calibration, bars and duplicates): the read of a
        ``/metrics`` scrape and of the ``scorecard`` event, at a fraction of the cost. With no bar taken since
        the last such read it returns that read's dict again (scrapes usually come more often than bars):
        read it, do not change it."""
        bars_taken = self._common[C_BARS]
        if not detail and self._brief is not None and self._brief[0] == bars_taken:
            return self._brief[1]
        window, interval = self.window_bars, self.interval_ms
        head = self._block[:, :S_HEADER]
        rows = head.tolist()
        pooled = head.sum(axis=0).tolist()  # only its sums and counts are read
        symbols = {}
        n_all = 0
        degraded = self.overall_degraded
        for name, v in zip(self.symbols, rows, strict=True):
            n = min(int(v[S_TOTAL]), window)
            n_all += n
            if detail:
                fig = symbols[name] = _window(v, n)
                nxt = v[S_NEXT]
                fig["bars"] = 0 if nxt != nxt else int((nxt - v[S_FIRST] - v[S_SKEW]) // interval)
                fig["duplicates"] = int(v[S_DUP])
            else:
                fig = symbols[name] = _means(v, n)
            fig["degraded"] = v[S_DEGRADED] != 0.0
            degraded = degraded or fig["degraded"]
        overall = _window(pooled, n_all)
        overall["degraded"] = self.overall_degraded
        out = {"expected_log_loss": self.expected, "band": self.band, "window_bars": window, "degraded": degraded,
               "overall": overall, "symbols": symbols}
        if not detail:
            self._brief = (bars_taken, out)
        return out


def _means(v: list, n: int) -> dict:
    """A window's size and means, from its header values ``v``: what is exported per symbol."""
    dec_n, dec_hit = v[S_DEC_N:S_DEC_N + 3], v[S_DEC_HIT:S_DEC_HIT + 3]
    return {"n": n, "log_loss": v[S_LL] / n if n else None, "brier": v[S_BRIER] / n if n else None,
            "hit_rate": {"buy": _mean(dec_hit[BUY], dec_n[BUY]), "sell": _mean(dec_hit[SELL], dec_n[SELL])}}


def _window(v: list, n: int) -> dict:
    """One window's figures from its header values ``v`` (a symbol's, or the symbols' added up) and its size."""
    out = _means(v, n)
    dec_n = v[S_DEC_N:S_DEC_N + 3]
    cal_n = v[S_CAL_N:S_CAL_N + CALIBRATION_BINS]
    out["decisions"] = {"buy": int(dec_n[BUY]), "sell": int(dec_n[SELL]), "hold": int(dec_n[HOLD])}
    out["calibration"] = {"confidence": list(map(_mean, v[S_CAL_CONF:S_CAL_CONF + CALIBRATION_BINS], cal_n)),
                          "accuracy": list(map(_mean, v[S_CAL_HIT:S_CAL_HIT + CALIBRATION_BINS], cal_n)),
                          "count": list(map(int, cal_n))}
    return out


def _mean(total: float, count: float) -> float | None:
    """A mean, None where there is nothing to average; the count decides, not the sum (one added to and taken
    from again may keep a rounding residue)."""
    return total / count if count else None
