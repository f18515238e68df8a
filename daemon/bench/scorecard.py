"""Scorecard cost: what ``daemon.core.scorecard.Scorecard.on_bar`` adds per closed bar, off the signal path.

Five symbols of real 5m candles from ``data/`` interleaved as the live feed delivers them, every bar with a
prediction (probabilities drawn once from a seeded Dirichlet; the cost does not depend on their values), the
default window (``[scorecard] window_bars``). Two figures: the per-call latency (one timed call per sample,
so it includes the clock's own cost) and the mean over an untimed batch loop (total time / calls).

``on_bar`` leaves the Brier score, decisions and calibration buckets to read time, so a second row shows
that deferred work per scored prediction: the stream fed again with ``Scorecard.settle`` every
``SETTLE_EVERY`` bars, one sample per settle (its time over the predictions it took in); its batch mean
is the settles' total time over all bars. The two batch means add up to the scorecard's whole cost per bar
(``total_per_bar_us``), whatever the read cadence; the fixed cost of building a report is per read, not per
bar (``report_us``: one report with nothing left to settle).
"""

from __future__ import annotations

import time

import numpy as np

from daemon.core.config import ScorecardConfig
from daemon.core.scorecard import LabelRule, Scorecard

from .bars import DATA, load_csv
from .timing import latency_entry

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "ADAUSDT", "BNBUSDT")
RULE = LabelRule(horizon_bars=3, band_k=0.5, vol_window=20, round_trip_cost=0.0011)
SETTLE_EVERY = 60  # bars (12 per symbol) between reads; any cadence settles the same predictions once


def _stream() -> list[tuple[str, int, float, tuple[float, float, float]]]:
    rng = np.random.default_rng(0)
    per = {s: load_csv(DATA / f"{s}-5m.csv") for s in SYMBOLS}
    n = min(len(v) for v in per.values())
    probs = rng.dirichlet((2.0, 5.0, 2.0), size=(n, len(SYMBOLS)))
    return [(s, int(per[s][i, 0]), float(per[s][i, 4]), tuple(float(x) for x in probs[i, j]))
            for i in range(n) for j, s in enumerate(SYMBOLS)]


def _fresh() -> Scorecard:
    cfg = ScorecardConfig()
    return Scorecard(SYMBOLS, RULE, 300_000, window_bars=cfg.window_bars, band=cfg.band,
                     degraded_after_bars=cfg.degraded_after_bars, expected=1.0)


def run(rounds: int = 3) -> dict:
    """The scorecard part: per-call latency and batch mean of ``on_bar`` over ``rounds`` passes of the stream."""
    bars = _stream()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        sc = _fresh()
        on_bar = sc.on_bar
        for s, start, close, p in bars:
            t0 = clock()
            on_bar(s, start, close, p)
            samples.append(clock() - t0)
    batch = []
    for _ in range(rounds):
        sc = _fresh()
        on_bar = sc.on_bar
        t0 = clock()
        for s, start, close, p in bars:
            on_bar(s, start, close, p)
        batch.append((clock() - t0) / len(bars) / 1000.0)
    settle_samples, settle_batch = [], []
    for _ in range(rounds):
        sc = _fresh()
        on_bar, settle = sc.on_bar, sc.settle
        spent = 0
        for i, (s, start, close, p) in enumerate(bars, 1):
            on_bar(s, start, close, p)
            if i % SETTLE_EVERY == 0:
                t0 = clock()
                took = settle()
                dt = clock() - t0
                spent += dt
                if took:
                    settle_samples.append(dt / took)
        settle_batch.append(spent / len(bars) / 1000.0)
    t0 = clock()
    sc.report()
    report_us = (clock() - t0) / 1000.0
    floor = []
    for _ in range(len(bars)):
        t0 = clock()
        floor.append(clock() - t0)
    entry = latency_entry("scorecard_on_bar", np.asarray(samples, dtype=np.int64))
    entry["batch_mean_us"] = round(min(batch), 4)
    entry["clock_floor_p50_us"] = round(float(np.percentile(floor, 50)) / 1000.0, 4)
    entry["scored"] = sc.report()["overall"]["n"]
    entry["report_us"] = round(report_us, 2)
    settled = latency_entry("scorecard_settle_per_scored_bar", np.asarray(settle_samples, dtype=np.float64))
    settled["batch_mean_us"] = round(min(settle_batch), 4)
    settled["clock_floor_p50_us"] = entry["clock_floor_p50_us"]
    settled["settle_every_bars"] = SETTLE_EVERY
    entry["total_per_bar_us"] = round(entry["batch_mean_us"] + settled["batch_mean_us"], 4)
    return {"results": [entry, settled], "symbols": list(SYMBOLS), "bars": len(bars), "window_bars": sc.window_bars}
