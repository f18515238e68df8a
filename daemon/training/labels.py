"""Sell / hold / buy labels from the forward return over ``h`` bars, with a volatility-scaled hold band.

At bar ``t`` (its close known), the forward return is ``log(close[t+h] / close[t])``. The hold band is
``max(band_k * vol[t] * sqrt(h), round_trip_cost)`` where ``vol[t]`` is the RMS of the one-bar log returns
of the ``vol_window`` bars ending at ``t``: only the past sets the band, only the future sets the return.
The last ``h`` bars (and bars whose window touches a missing bar) get no label (-1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = ("sell", "hold", "buy")
SELL, HOLD, BUY = 0, 1, 2
NO_LABEL = -1


@dataclass(frozen=True)
class LabelParams:
    """Everything that defines a label; recorded in the artifact's manifest."""

    horizon_bars: int
    band_k: float
    vol_window: int
    round_trip_cost: float

    def to_dict(self) -> dict:
        """Return the parameters as a JSON-friendly dict (with the class order)."""
        return {
            "horizon_bars": self.horizon_bars,
            "band_k": self.band_k,
            "vol_window": self.vol_window,
            "round_trip_cost": self.round_trip_cost,
            "return": "log(close[t+h]/close[t])",
            "band": "max(band_k * rms(1-bar log returns over vol_window bars to t) * sqrt(h), round_trip_cost)",
            "classes": list(CLASSES),
        }


def trailing_vol(close: np.ndarray, window: int) -> np.ndarray:
    """RMS of the ``window`` one-bar log returns ending at each bar (NaN until ``window`` returns exist)."""
    r = np.full(len(close), np.nan)
    r[1:] = np.log(close[1:] / close[:-1])
    r2 = np.where(np.isfinite(r), r * r, np.nan)
    out = np.full(len(close), np.nan)
    if len(close) <= window:
        return out
    cs = np.concatenate([[0.0], np.cumsum(np.nan_to_num(r2[1:], nan=0.0))])
    bad = np.concatenate([[0], np.cumsum(~np.isfinite(r2[1:]))])
    # returns r[t-window+1..t] are r2 indices t-window+1..t, i.e. cs entries (t-window)..t
    t = np.arange(window, len(close))
    s = cs[t] - cs[t - window]
    nbad = bad[t] - bad[t - window]
    out[t] = np.where(nbad == 0, np.sqrt(np.maximum(s, 0.0) / window), np.nan)
    return out


def forward_return(close: np.ndarray, h: int) -> np.ndarray:
    """``log(close[t+h] / close[t])``; NaN for the last ``h`` bars."""
    out = np.full(len(close), np.nan)
    if len(close) > h:
        out[:-h] = np.log(close[h:] / close[:-h])
    return out


def band(close: np.ndarray, p: LabelParams) -> np.ndarray:
    """The hold band at every bar (NaN while the volatility window is filling)."""
    vol = trailing_vol(close, p.vol_window)
    return np.maximum(p.band_k * vol * np.sqrt(p.horizon_bars), p.round_trip_cost)


def make_labels(close: np.ndarray, p: LabelParams, present: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Return ``y`` (int64, -1 = no label), the forward return ``fwd`` and the ``band`` at every bar.

    ``present`` marks bars that really traded (see ``data.regularize``); a label whose return or band
    window touches a missing bar is dropped rather than computed from filled prices.
    """
    close = np.asarray(close, dtype=np.float64)
    fwd = forward_return(close, p.horizon_bars)
    b = band(close, p)
    y = np.full(len(close), NO_LABEL, dtype=np.int64)
    ok = np.isfinite(fwd) & np.isfinite(b)
    if present is not None and not present.all():
        miss = (~present).astype(np.int64)
        cm = np.concatenate([[0], np.cumsum(miss)])
        n = len(close)
        t = np.arange(n)
        lo = np.maximum(t - p.vol_window, 0)
        hi = np.minimum(t + p.horizon_bars, n - 1)
        ok &= (cm[hi + 1] - cm[lo]) == 0
    y[ok & (fwd > b)] = BUY
    y[ok & (fwd < -b)] = SELL
    y[ok & (np.abs(fwd) <= b)] = HOLD
    return {"y": y, "fwd": fwd, "band": b}


def bucket_labels(fwd: np.ndarray, b: np.ndarray, y: np.ndarray,
                  edges: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Finer targets: return buckets in band units, and the map from bucket to sell/hold/buy.

    Edges ``e > 1`` split sell and buy further: with ``edges=(2.0,)`` the buckets are
    ``(< -2b), [-2b, -b), hold, (b, 2b], (> 2b)``. Returns ``(bucket index or -1, bucket -> class)``.
    """
    pos = np.sort(np.asarray(edges, dtype=np.float64))
    cuts = np.concatenate([-pos[::-1], [-1.0, 1.0], pos])  # in band units
    z = np.where(y >= 0, fwd / b, 0.0)
    # side choice keeps |z| == 1 exactly in hold, as make_labels does
    k = np.where(z > 0, np.searchsorted(cuts, z, side="left"), np.searchsorted(cuts, z, side="right"))
    n_side = len(pos) + 1
    to_class = np.array([SELL] * n_side + [HOLD] + [BUY] * n_side, dtype=np.int64)
    k = np.where(y >= 0, k, -1).astype(np.int64)
    # the collapsed bucket always equals the label (guards float ties at the band)
    if np.any((k >= 0) & (to_class[np.maximum(k, 0)] != y)):
        fix = (k >= 0) & (to_class[np.maximum(k, 0)] != y)
        k[fix & (y == HOLD)] = n_side
        k[fix & (y == BUY)] = n_side + 1
        k[fix & (y == SELL)] = n_side - 1
    return k, to_class
