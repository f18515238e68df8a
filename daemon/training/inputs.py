"""Feature matrices for training: the student's (the daemon's own batch kernel) and the teacher's extras.

The student sees exactly ``kernels.features.features_batch``, the batch form the daemon's step kernel is
proven equal to. The teacher may also see what the student cannot afford live: longer windows, time of
day, lagged returns and the other symbols' recent moves. Every extra is a function of bars ``<= t`` only
(``tests/test_labels.py::test_no_lookahead_in_features_or_labels``).
"""

from __future__ import annotations

import numpy as np

from kernels.features import features_batch
from kernels.layout import FEATURE_NAMES, WINDOW

from .data import Series

STUDENT_FEATURES = FEATURE_NAMES
WARMUP_BARS = WINDOW


def student_features(s: Series) -> np.ndarray:
    """The daemon's features for every bar of ``s`` (n, F); NaN while warming up."""
    return features_batch(s.open, s.high, s.low, s.close, s.volume)


def _log_close(s: Series) -> np.ndarray:
    # forward-fill missing bars like the kernels do, so extras never read NaN prices
    c = s.close.copy()
    ok = np.isfinite(c) & (c > 0)
    idx = np.where(ok, np.arange(len(c)), 0)
    np.maximum.accumulate(idx, out=idx)
    c = c[idx]
    c[: np.argmax(ok)] = np.nan
    return np.log(c)


def _lag_diff(x: np.ndarray, k: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    out[k:] = x[k:] - x[:-k]
    return out


def _lag(x: np.ndarray, k: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    out[k:] = x[:-k]
    return out


def _rolling_mean(x: np.ndarray, w: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    if len(x) < w:
        return out
    xx = np.nan_to_num(x, nan=0.0)
    cs = np.concatenate([[0.0], np.cumsum(xx)])
    out[w - 1 :] = (cs[w:] - cs[:-w]) / w
    return out


def own_extras(s: Series) -> tuple[np.ndarray, list[str]]:
    """Longer-window features of one symbol (n, E) and their names."""
    lc = _log_close(s)
    r1 = _lag_diff(lc, 1)
    r1[~np.isfinite(r1)] = 0.0
    v = np.nan_to_num(s.volume, nan=0.0)
    hl = np.nan_to_num((s.high - s.low) / s.close, nan=0.0)
    rv20 = np.sqrt(_rolling_mean(r1 * r1, 20))
    rv100 = np.sqrt(_rolling_mean(r1 * r1, 100))
    rv500 = np.sqrt(_rolling_mean(r1 * r1, 500))
    vol20 = _rolling_mean(v, 20)
    vol500 = _rolling_mean(v, 500)
    minutes = (s.start_ms // 60_000) % 1440
    dow = (s.start_ms // 86_400_000 + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    cols = {
        "ret_1_lag1": _lag(r1, 1),
        "ret_1_lag2": _lag(r1, 2),
        "ret_2": _lag_diff(lc, 2),
        "ret_3": _lag_diff(lc, 3),
        "ret_60": _lag_diff(lc, 60),
        "ret_240": _lag_diff(lc, 240),
        "ret_1000": _lag_diff(lc, 1000),
        "rvol_100": rv100,
        "rvol_ratio_20_500": rv20 / np.maximum(rv500, 1e-12),
        "rvol_ratio_100_500": rv100 / np.maximum(rv500, 1e-12),
        "logvol_20_500": np.log((vol20 + 1e-12) / (vol500 + 1e-12)),
        "hl_mean_20": _rolling_mean(hl, 20),
        "ret_5_over_rvol": _lag_diff(lc, 5) / np.maximum(rv100 * np.sqrt(5), 1e-12),
        "tod_sin": np.sin(2 * np.pi * minutes / 1440),
        "tod_cos": np.cos(2 * np.pi * minutes / 1440),
        "weekend": (dow >= 5).astype(np.float64),
    }
    return np.column_stack(list(cols.values())), list(cols)


def market_extras(series: list[Series]) -> tuple[list[np.ndarray], list[str]]:
    """Cross-symbol features per series: the market's (mean over symbols) recent moves at the same bar.

    Bars are matched by ``start_ms``; a symbol missing at a time simply drops out of that bar's mean.
    """
    names = ["mkt_ret_1", "mkt_ret_5", "mkt_ret_20", "rel_ret_5", "rel_ret_20", "btc_ret_1", "btc_ret_5"]
    times = np.unique(np.concatenate([s.start_ms for s in series]))
    lags = (1, 5, 20)
    grid = np.full((len(lags), len(series), len(times)), np.nan)
    pos = []
    for j, s in enumerate(series):
        p = np.searchsorted(times, s.start_ms)
        pos.append(p)
        lc = _log_close(s)
        for i, k in enumerate(lags):
            grid[i, j, p] = _lag_diff(lc, k)
    with np.errstate(invalid="ignore"):
        cnt = np.isfinite(grid).sum(axis=1)
        mkt = np.where(cnt > 0, np.nansum(grid, axis=1) / np.maximum(cnt, 1), np.nan)
    btc = next((j for j, s in enumerate(series) if s.symbol.startswith("BTC")), None)
    out = []
    for j in range(len(series)):
        p = pos[j]
        own5, own20 = grid[1, j, p], grid[2, j, p]
        b1 = grid[0, btc, p] if btc is not None else np.zeros(len(p))
        b5 = grid[1, btc, p] if btc is not None else np.zeros(len(p))
        out.append(np.column_stack([mkt[0, p], mkt[1, p], mkt[2, p], own5 - mkt[1, p], own20 - mkt[2, p], b1, b5]))
    return out, names
