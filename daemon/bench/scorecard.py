"""Scorecard cost: what ``daemon.core.scorecard.Scorecard.on_bar`` adds per closed bar, off the signal path.

Five symbols of real 5m candles from ``data/`` interleaved as the live feed delivers them, every bar with a
prediction (probabilities drawn once from a seeded Dirichlet; the cost does not depend on their values), the
default window (``[scorecard] window_bars``). Two figures: the per-call latency (one timed call per sample,
so it includes the clock's own cost) and the mean over an untimed batch loop (total time / calls).
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
    floor = []
    for _ in range(len(bars)):
        t0 = clock()
        floor.append(clock() - t0)
    entry = latency_entry("scorecard_on_bar", np.asarray(samples, dtype=np.int64))
    entry["batch_mean_us"] = round(min(batch), 4)
    entry["clock_floor_p50_us"] = round(float(np.percentile(floor, 50)) / 1000.0, 4)
    entry["scored"] = sc.report()["overall"]["n"]
    return {"results": [entry], "symbols": list(SYMBOLS), "bars": len(bars), "window_bars": sc.window_bars}
