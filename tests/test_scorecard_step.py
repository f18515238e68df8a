"""The scorecard's compiled update: the ahead-of-time build equals the JIT form slot for slot, hostile bars included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from daemon.core.model import Model
from daemon.core.scorecard import LabelRule, Scorecard
from kernels.scorecard_layout import CALIBRATION_BINS, S_DUP, S_TOTAL
from kernels.scorecard_step import scorecard_entry
from tests.naive import scorecard_reference
from tests.support import DATA, load_csv, needs_jit

INTERVAL_MS = 300_000
RULE = LabelRule(horizon_bars=3, band_k=0.5, vol_window=20, round_trip_cost=0.0011)


def hostile_stream(n: int = 3000, off_grid: bool = True):
    """(symbol, start_ms, close, probs) from real candles, with gaps, repeats, an off-grid start (unless not
    ``off_grid``), bad closes and probs."""
    rng = np.random.default_rng(7)
    out = []
    for symbol in ("BTCUSDT", "ETHUSDT"):
        rows = load_csv(DATA / f"{symbol}-5m.csv")[:n]
        probs = rng.dirichlet((2.0, 5.0, 2.0), size=len(rows))
        for k, row in enumerate(rows):
            start, close, p = int(row[0]), float(row[4]), tuple(probs[k].tolist())
            if k % 97 == 5:
                continue  # a missing bar
            if k % 211 == 7:
                close = (math.nan, -1.0, math.inf, 0.0)[k % 4]
            if k % 53 == 3:
                p = None
            elif k % 61 == 4:
                p = (math.nan, 0.5, 0.5)
            elif k % 67 == 2:
                p = (0.0, 0.0, 1.0)  # a certain prediction: its log loss is clipped when wrong
            if k == 1500 and off_grid:
                start += 1234  # off the grid: late by a fraction of an interval
            out.append((symbol, start, close, p))
            if k % 89 == 1:
                out.append((symbol, start, close, p))  # repeated
    out.sort(key=lambda b: b[1])
    return out


@needs_jit
def test_built_update_equals_jit_in_every_slot(random_artifact):
    """Through a hostile stream, the module build-kernel compiled leaves every vector exactly as the JIT form does."""
    model = Model.load(random_artifact)
    aot = model.scorecard_kernel
    assert not hasattr(aot, "py_func") and aot.__module__.startswith("kdsignal_step_")  # pycc's, not numba's
    cards = [Scorecard(["BTCUSDT", "ETHUSDT"], RULE, INTERVAL_MS, step=step, window_bars=300, band=0.0,
                       degraded_after_bars=20, expected=0.9) for step in (aot, scorecard_entry())]
    events = [[], []]
    for bar in hostile_stream():
        for sc, ev in zip(cards, events, strict=True):
            sc.on_bar(*bar)
            ev += sc.take_events()
    for name in ("BTCUSDT", "ETHUSDT"):
        a, b = (sc.symbols[name].state for sc in cards)
        np.testing.assert_array_equal(a, b)
        assert a[S_TOTAL] > 300 and a[S_DUP] > 10
    assert events[0] == events[1] and events[0]
    assert cards[0].report() == cards[1].report()


@pytest.mark.parametrize("bad", [(math.nan, 0.2, 0.3), (0.5, math.inf, 0.1), None])
def test_predictions_that_are_not_finite_are_not_scored(bad):
    """A prediction with a non-finite probability (or none) is left out of every window, as offline."""
    sc = Scorecard(["BTCUSDT"], RULE, INTERVAL_MS, step=scorecard_entry(), window_bars=100)
    closes = 100.0 * np.exp(np.cumsum(np.random.default_rng(1).normal(0, 0.01, 60)))
    for k, c in enumerate(closes):
        sc.on_bar("BTCUSDT", k * INTERVAL_MS, float(c), bad if k == 30 else (0.2, 0.5, 0.3))
    # bars 20..56 are scorable (the band needs 20 returns, the label 3 bars ahead), bar 30 is not
    rep = sc.report()["symbols"]["BTCUSDT"]
    assert rep["n"] == len(range(20, 57)) - 1 and math.isfinite(rep["log_loss"])


@pytest.mark.parametrize("window", [250, 10_000])
def test_update_equals_the_numpy_reference_on_a_hostile_stream(window):
    """Gaps, repeats, bad closes and bad probabilities: every window's figures are the reference's (JIT or Python)."""
    sc = Scorecard(["BTCUSDT", "ETHUSDT"], RULE, INTERVAL_MS, step=scorecard_entry(), window_bars=window)
    fed = {"BTCUSDT": [], "ETHUSDT": []}
    for symbol, *bar in hostile_stream(off_grid=False):
        sc.on_bar(symbol, *bar)
        fed[symbol].append(bar)
    rep = sc.report()
    rows = {s: scorecard_reference(fed[s], window, interval_ms=INTERVAL_MS, horizon_bars=RULE.horizon_bars,
                                   band_k=RULE.band_k, vol_window=RULE.vol_window,
                                   round_trip_cost=RULE.round_trip_cost) for s in fed}
    rows["overall"] = {k: np.concatenate([rows[s][k] for s in fed]) for k in rows["BTCUSDT"]}
    for name, got in [*rep["symbols"].items(), ("overall", rep["overall"])]:
        want = rows[name]
        assert got["n"] == len(want["ll"]) > 200
        assert got["log_loss"] == pytest.approx(want["ll"].mean(), rel=1e-10)
        assert got["brier"] == pytest.approx(want["brier"].mean(), rel=1e-10)
        for side, code in (("buy", 2), ("sell", 0)):
            m = want["dec"] == code
            assert got["decisions"][side] == m.sum() > 0
            assert got["hit_rate"][side] == pytest.approx(want["hit"][m].mean())
        counts = np.bincount(want["bins"], minlength=CALIBRATION_BINS)
        assert got["calibration"]["count"] == counts.tolist()
