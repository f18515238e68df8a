"""The sequence teacher's inputs: per-bar normalised OHLCV of the symbol and the market, and the raw windows.

No torch here (``sequence_net`` holds the model): the window builder is plain NumPy, so its tests and its
NumPy reference (``tests/naive.py::sequence_windows``) run anywhere.

Per bar, six channels: the symbol's log return, log high/low range and volume against its trailing mean
(``log1p(v / mean of the last VOLUME_MEAN_BARS volumes)``), then the same three averaged over every symbol
trading at that bar (the market, matched by ``start_ms`` like ``inputs.market_extras``). A missing bar
contributes zeros. Row ``t``'s window is bars ``t - N + 1 .. t`` of its own symbol (``t`` is the row's
closed bar, the one its student features end at); positions before the symbol's first bar are zero.
"""

from __future__ import annotations

import numpy as np

from .data import Series, regularize
from .dataset import Pooled
from .inputs import _lag_diff, _log_close, _rolling_mean

CHANNELS = ("ret", "range", "volume", "mkt_ret", "mkt_range", "mkt_volume")
VOLUME_MEAN_BARS = 288  # one day of 5m bars: the volume channel compares a bar with its trailing day


def own_channels(s: Series) -> np.ndarray:
    """The symbol's three channels (n, 3) on its full bar grid; bar ``t`` reads bars ``<= t`` only."""
    r = _lag_diff(_log_close(s), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rng = np.log(s.high / s.low)
        v = np.nan_to_num(s.volume, nan=0.0)
        m = _rolling_mean(v, VOLUME_MEAN_BARS)
        vol = np.log1p(v / m)
    out = np.column_stack([r, rng, vol])
    out[~np.isfinite(out)] = 0.0
    return out


def bar_inputs(series: list[Series], P: Pooled) -> np.ndarray:
    """Every pooled row's bar channels (n, 6), float32, aligned with ``P``'s rows (``dataset.build``'s order)."""
    gridded = [regularize(s)[0] for s in series]
    own = [own_channels(s) for s in gridded]
    times = np.unique(np.concatenate([s.start_ms for s in gridded]))
    pos = [np.searchsorted(times, s.start_ms) for s in gridded]
    total = np.zeros((len(times), 3))
    count = np.zeros(len(times))
    for o, p, s in zip(own, pos, gridded, strict=True):
        traded = np.isfinite(s.close)  # a missing bar drops out of the market's mean
        np.add.at(total, p[traded], o[traded])
        np.add.at(count, p[traded], 1.0)
    mkt = total / np.maximum(count, 1.0)[:, None]
    bars = np.concatenate([np.column_stack([o, mkt[p]]) for o, p in zip(own, pos, strict=True)])
    start = np.concatenate([s.start_ms for s in gridded])
    if len(bars) != len(P) or not np.array_equal(start, P.start_ms):
        raise ValueError(f"sequence inputs have {len(bars)} bars, the pooled table {len(P)} rows")
    return bars.astype(np.float32)


def windows(bars: np.ndarray, sym: np.ndarray, rows: np.ndarray, n_bars: int) -> np.ndarray:
    """The last ``n_bars`` bars of each row's own symbol (len(rows), n_bars, C), oldest first, ending at the row.

    Positions before the symbol's first row are zero. ``bars`` (n, C) and ``sym`` (n,) are pooled rows,
    each symbol's rows contiguous and in time order.
    """
    rows = np.asarray(rows, dtype=np.int64)
    idx = rows[:, None] + np.arange(1 - n_bars, 1, dtype=np.int64)[None, :]
    clipped = np.clip(idx, 0, len(bars) - 1)
    ok = (idx >= 0) & (sym[clipped] == sym[rows][:, None])
    out = bars[clipped]
    out[~ok] = 0.0
    return out
