"""Rolling kline features as numba kernels: a step form (one closed bar) and a batch form (a history).

Every feature is a pure function of the last ``WINDOW`` accepted bars, so a daemon that warmed up from
REST and a replay over the whole file produce the same bits once ``WINDOW`` bars are known. Both forms
call the one ``_window_features`` core on a contiguous, oldest-first window; that shared core is what makes
``step == batch`` exact (guarded by ``tests/test_features.py::test_step_equals_batch_bitwise``).

Window sums are recomputed over their windows on every bar (O(WINDOW), constant in history length)
instead of kept as running sums: running add/subtract sums would make each value depend, through
rounding, on every bar since start-up, and live would drift from replay.

Missing-bar policy: a bar whose open/high/low/close is not finite or not positive, or whose volume is
not finite or negative, is taken as missing and filled forward as a flat bar at the previous close with
zero volume. Before any valid bar there is nothing to fill from, so such bars are not accepted. With
prices positive and finite, every feature is finite (divisions by a zero volume sum or zero volatility
have defined values below), so NaN and inf never reach the model.

Reference definitions (``tests/naive.py::features_reference``), over the window ``c[0..100]`` (oldest
first, ``n = 100`` the newest bar), ``r[i] = log(c[i] / c[i-1])``, ``hl[i] = (high[i] - low[i]) / c[i]``,
and ``S = n-19 .. n`` the last 20 bars:

=============  ==========================================================================
ret_k          ``log(c[n] / c[n-k])`` for k in 1, 5, 10, 20 (summed from the one-bar returns, so
               equal to the reference up to rounding)
rvol_20        ``sqrt(mean(r[S]**2))`` (realised volatility, per bar)
relvol_20      ``v[n] / mean(v[S])``; 1.0 when the window traded nothing
vwret_20       ``sum(v[S] * r[S]) / sum(v[S])``; 0.0 when the window traded nothing
hl_range       ``hl[n]``, the newest bar's high-low range over its close
zclose_20      ``(c[n] / mean(c[S]) - 1) / rvol_20``; 0.0 when rvol_20 is 0
hl_mean_20     ``mean(hl[S])``
rvol_100       ``sqrt(mean(r[1..n]**2))``: the volatility regime over about 8 hours of 5m bars
=============  ==========================================================================
"""

from __future__ import annotations

import numpy as np

from kernels.jit import njit
from kernels.layout import (
    LONG_LOOKBACK,
    LOOKBACK,
    N_FEATURES,
    S_CLOSE,
    S_FEATURES,
    S_FILLED,
    S_HEAD,
    S_LAST_CLOSE,
    S_RANGE,
    S_RET,
    S_SEEN,
    S_VOLUME,
    WINDOW,
)


@njit(cache=True)
def _is_valid_bar(o, h, l, c, v):
    # Written so that NaN fails every comparison and is rejected.
    return (
        o > 0.0
        and h > 0.0
        and l > 0.0
        and c > 0.0
        and o < np.inf
        and h < np.inf
        and l < np.inf
        and c < np.inf
        and v >= 0.0
        and v < np.inf
    )


@njit(cache=True)
def _window_features(c, ci, v, vi, r, ri, hl, hi, out, oi):
    """Write the features of one oldest-first window into ``out[oi:]``.

    The window is ``c[ci:ci+WINDOW]`` (closes), ``v[vi:...]`` (volumes), ``r[ri:...]`` (one-bar log
    returns), ``hl[hi:...]`` (high-low ranges over close). Offsets rather than slices: a slice costs a
    reference-count round trip per call.
    """
    n = LONG_LOOKBACK
    ct = c[ci + n]
    # ret_k as a sum of one-bar returns: one log per bar (taken when the bar arrives) instead of four.
    out[oi] = r[ri + n]
    acc = 0.0
    for i in range(n, n - 5, -1):
        acc += r[ri + i]
    out[oi + 1] = acc
    for i in range(n - 5, n - 10, -1):
        acc += r[ri + i]
    out[oi + 2] = acc
    for i in range(n - 10, n - LOOKBACK, -1):
        acc += r[ri + i]
    out[oi + 3] = acc
    sum_r2 = 0.0
    sum_v = 0.0
    sum_vr = 0.0
    sum_c = 0.0
    sum_hl = 0.0
    for i in range(n - LOOKBACK + 1, n + 1):
        r_i = r[ri + i]
        v_i = v[vi + i]
        sum_r2 += r_i * r_i
        sum_v += v_i
        sum_vr += v_i * r_i
        sum_c += c[ci + i]
        sum_hl += hl[hi + i]
    vol = np.sqrt(sum_r2 / LOOKBACK)
    out[oi + 4] = vol
    if sum_v > 0.0:
        out[oi + 5] = v[vi + n] / (sum_v / LOOKBACK)
        out[oi + 6] = sum_vr / sum_v
    else:
        out[oi + 5] = 1.0
        out[oi + 6] = 0.0
    out[oi + 7] = hl[hi + n]
    out[oi + 8] = (ct / (sum_c / LOOKBACK) - 1.0) / vol if vol > 0.0 else 0.0
    out[oi + 9] = sum_hl / LOOKBACK
    # Four independent lanes in a fixed order: the same bits every time, a quarter of the dependency chain.
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    a3 = 0.0
    for i in range(1, n + 1, 4):
        x0 = r[ri + i]
        x1 = r[ri + i + 1]
        x2 = r[ri + i + 2]
        x3 = r[ri + i + 3]
        a0 += x0 * x0
        a1 += x1 * x1
        a2 += x2 * x2
        a3 += x3 * x3
    out[oi + 10] = np.sqrt(((a0 + a1) + (a2 + a3)) / n)


@njit(cache=True)
def _push_bar(state, o, h, l, c, v):
    """Advance ``state`` by one bar; return 1 when features were written, 0 warming, -1 not accepted."""
    seen = state[S_SEEN]
    if not _is_valid_bar(o, h, l, c, v):
        if seen == 0.0:
            return -1
        c = state[S_LAST_CLOSE]
        h = c
        l = c
        v = 0.0
        state[S_FILLED] += 1.0
    r = np.log(c / state[S_LAST_CLOSE]) if seen > 0.0 else 0.0
    head = int(state[S_HEAD])
    state[S_CLOSE + head] = c
    state[S_CLOSE + head + WINDOW] = c
    state[S_VOLUME + head] = v
    state[S_VOLUME + head + WINDOW] = v
    state[S_RET + head] = r
    state[S_RET + head + WINDOW] = r
    hl = (h - l) / c
    state[S_RANGE + head] = hl
    state[S_RANGE + head + WINDOW] = hl
    head += 1
    if head == WINDOW:
        head = 0
    state[S_HEAD] = head
    state[S_LAST_CLOSE] = c
    seen += 1.0
    state[S_SEEN] = seen
    if seen < WINDOW:
        return 0
    _window_features(
        state, S_CLOSE + head, state, S_VOLUME + head, state, S_RET + head, state, S_RANGE + head, state, S_FEATURES
    )
    return 1


@njit("int64(float64[::1], float64, float64, float64, float64, float64)", cache=True)
def features_step(state, o, h, l, c, v):
    """Advance a feature state by one closed bar (O(WINDOW) work, no allocation).

    ``state`` is a float64 vector from ``new_feature_state``; the features of the newest bar are left in
    ``state[S_FEATURES:S_FEATURES + N_FEATURES]``. Returns 1 when they are valid, 0 while warming up and
    -1 when the bar was not accepted (invalid before any valid bar). Reference:
    ``tests/naive.py::features_reference``.
    """
    return _push_bar(state, o, h, l, c, v)


@njit(
    "void(float64[::1], float64[::1], float64[::1], float64[::1], float64[::1], float64[:, ::1])",
    cache=True,
)
def features_batch_into(o, h, l, c, v, out):
    """Write the features of every bar of a history into ``out`` (n, N_FEATURES); warming rows are NaN."""
    n = c.shape[0]
    cc = np.empty(n)
    vv = np.empty(n)
    rr = np.empty(n)
    hh = np.empty(n)
    row = np.empty(N_FEATURES)
    first = -1
    last_close = 0.0
    for t in range(n):
        ct, ht, lt, vt = c[t], h[t], l[t], v[t]
        if not _is_valid_bar(o[t], ht, lt, ct, vt):
            if first < 0:
                for j in range(N_FEATURES):
                    out[t, j] = np.nan
                continue
            ct = last_close
            ht = ct
            lt = ct
            vt = 0.0
        if first < 0:
            first = t
            rr[t] = 0.0
        else:
            rr[t] = np.log(ct / last_close)
        cc[t] = ct
        vv[t] = vt
        hh[t] = (ht - lt) / ct
        last_close = ct
        if t - first + 1 < WINDOW:
            for j in range(N_FEATURES):
                out[t, j] = np.nan
            continue
        lo = t - WINDOW + 1
        _window_features(cc, lo, vv, lo, rr, lo, hh, lo, row, 0)
        for j in range(N_FEATURES):
            out[t, j] = row[j]


def features_batch(o, h, l, c, v) -> np.ndarray:
    """Return the (n, N_FEATURES) float64 feature matrix of a history; rows before warm-up are NaN."""
    cols = [np.ascontiguousarray(x, dtype=np.float64) for x in (o, h, l, c, v)]
    n = cols[0].shape[0]
    if any(x.shape != (n,) for x in cols):
        raise ValueError(f"o, h, l, c, v must be 1-D arrays of one length; got shapes {[x.shape for x in cols]}")
    out = np.empty((n, N_FEATURES), dtype=np.float64)
    features_batch_into(*cols, out)
    return out
