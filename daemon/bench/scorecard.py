"""Scorecard cost: everything ``daemon.core.scorecard.Scorecard`` does for a closed bar, off the signal path.

Five symbols of real 5m candles from ``data/`` interleaved as the live feed delivers them, every bar with a
prediction (probabilities drawn once from a seeded Dirichlet; the cost does not depend on their values), the
default window (``[scorecard] window_bars``), the compiled update the model under test brings
(``Model.scorecard_kernel``: the ahead-of-time module the daemon serves).

Rows:

- ``scorecard_on_bar``: ``on_bar``, which scores the prediction the bar decides and keeps every sum of the
  windows current (nothing is left for read time): per-call latency (one timed call per sample, so it
  includes the clock's own cost) and the mean over an untimed batch loop (total time / calls).
- ``scorecard_read``: one ``report(detail=False)``, what a ``/metrics`` scrape and the periodic ``scorecard``
  event read, per read (``full_report_p50_us``: the full ``report()``, for comparison;
  ``unchanged_p50_us``: a read with no bar taken since the last, which returns that one's figures); it costs
  the same whatever the windows hold, so its share per bar is its cost over the bars between reads.
- ``scorecard_total``: the whole cost per bar, measured in one untimed loop: ``on_bar`` for every bar and a
  read every ``READ_EVERY`` bars, total time / bars (``batch_mean_us``; ``p50_us`` there is the median of
  the per-read chunks' time per bar).

The batch loops also read this thread's CPU clock (``cpu_mean_us``): on a shared machine the wall-clock
mean includes the time the process waited for a core, which the CPU time leaves out.
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
READ_EVERY = 60  # bars (12 per symbol) between reads in the total
REPORTS = 500  # timed report() calls


def _stream() -> list[tuple[str, int, float, tuple[float, float, float]]]:
    rng = np.random.default_rng(0)
    per = {s: load_csv(DATA / f"{s}-5m.csv") for s in SYMBOLS}
    n = min(len(v) for v in per.values())
    probs = rng.dirichlet((2.0, 5.0, 2.0), size=(n, len(SYMBOLS)))
    return [(s, int(per[s][i, 0]), float(per[s][i, 4]), tuple(float(x) for x in probs[i, j]))
            for i in range(n) for j, s in enumerate(SYMBOLS)]


def run(model, rounds: int = 3) -> dict:
    """The scorecard part for ``model``'s compiled update: per bar, per read, and the total over ``rounds`` passes."""
    bars = _stream()
    cfg = ScorecardConfig()

    def fresh() -> Scorecard:
        return Scorecard(SYMBOLS, RULE, 300_000, step=model.scorecard_kernel, window_bars=cfg.window_bars,
                         band=cfg.band, degraded_after_bars=cfg.degraded_after_bars, expected=1.0)

    samples = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        sc = fresh()
        on_bar = sc.on_bar
        for s, start, close, p in bars:
            t0 = clock()
            on_bar(s, start, close, p)
            samples.append(clock() - t0)
    cpu = time.thread_time_ns
    batch, batch_cpu = [], []
    for _ in range(rounds):
        sc = fresh()
        on_bar = sc.on_bar
        c0, t0 = cpu(), clock()
        for s, start, close, p in bars:
            on_bar(s, start, close, p)
        batch.append((clock() - t0) / len(bars) / 1000.0)
        batch_cpu.append((cpu() - c0) / len(bars) / 1000.0)
    report = sc.report
    reads, full, unchanged = [], [], []
    for _ in range(REPORTS):
        sc.expected = 1.0  # as a new model would: the next read computes afresh
        t0 = clock()
        report(detail=False)
        t1 = clock()
        report(detail=False)
        t2 = clock()
        report()
        full.append(clock() - t2)
        unchanged.append(t2 - t1)
        reads.append(t1 - t0)
    total, total_cpu, chunks = [], [], []
    for _ in range(rounds):
        sc = fresh()
        on_bar, report = sc.on_bar, sc.report
        c0 = cpu()
        t0 = t_chunk = clock()
        for i, (s, start, close, p) in enumerate(bars, 1):
            on_bar(s, start, close, p)
            if i % READ_EVERY == 0:
                report(detail=False)
                now = clock()
                chunks.append((now - t_chunk) / READ_EVERY)
                t_chunk = now
        total.append((clock() - t0) / len(bars) / 1000.0)
        total_cpu.append((cpu() - c0) / len(bars) / 1000.0)
    floor = []
    for _ in range(len(bars)):
        t0 = clock()
        floor.append(clock() - t0)
    floor_us = round(float(np.percentile(floor, 50)) / 1000.0, 4)
    rep = sc.report()
    entry = latency_entry("scorecard_on_bar", np.asarray(samples, dtype=np.int64))
    entry.update(batch_mean_us=round(min(batch), 4), cpu_mean_us=round(min(batch_cpu), 4), clock_floor_p50_us=floor_us,
                 scored=rep["overall"]["n"])
    read = latency_entry("scorecard_read", np.asarray(reads, dtype=np.int64))
    read.update(batch_mean_us=round(float(np.mean(reads)) / 1000.0, 4), clock_floor_p50_us=floor_us,
                windows=len(SYMBOLS) + 1, full_report_p50_us=round(float(np.percentile(full, 50)) / 1000.0, 2),
                unchanged_p50_us=round(float(np.percentile(unchanged, 50)) / 1000.0, 3))
    whole = latency_entry("scorecard_total", np.asarray(chunks, dtype=np.float64))
    whole.update(batch_mean_us=round(min(total), 4), cpu_mean_us=round(min(total_cpu), 4), clock_floor_p50_us=floor_us,
                 read_every_bars=READ_EVERY)
    return {"results": [entry, read, whole], "symbols": list(SYMBOLS), "bars": len(bars),
            "window_bars": cfg.window_bars, "read_every_bars": READ_EVERY, "kernel": model.kernel_note}
