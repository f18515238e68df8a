"""Slow, obviously correct NumPy references for every kernel (the definitions the kernels must match)."""

from __future__ import annotations

import numpy as np

WINDOW = 101  # closes each feature row reads: 100 one-bar returns for rvol_100
SHORT = 20


def fill_missing(o, h, l, c, v):
    """Apply the missing-bar policy: invalid bars become flat bars at the previous close, volume 0.

    Returns cleaned (h, l, c, v) and a mask of accepted bars (False before the first valid bar).
    """
    o, h, l, c, v = (np.asarray(x, dtype=np.float64).copy() for x in (o, h, l, c, v))
    with np.errstate(invalid="ignore"):
        valid = (
            np.isfinite(o) & np.isfinite(h) & np.isfinite(l) & np.isfinite(c) & (o > 0) & (h > 0) & (l > 0) & (c > 0)
            & np.isfinite(v) & (v >= 0)
        )
    accepted = np.zeros(len(c), dtype=bool)
    last = None
    for t in range(len(c)):
        if valid[t]:
            last = c[t]
            accepted[t] = True
        elif last is not None:
            h[t] = l[t] = c[t] = last
            v[t] = 0.0
            accepted[t] = True
    return h, l, c, v, accepted


def features_reference(o, h, l, c, v) -> np.ndarray:
    """Features (n, 11) straight from their definitions in ``kernels.features``; warming rows NaN."""
    h, l, c, v, accepted = fill_missing(o, h, l, c, v)
    n = len(c)
    out = np.full((n, 11), np.nan)
    idx = np.flatnonzero(accepted)
    for pos, t in enumerate(idx):
        if pos + 1 < WINDOW:
            continue
        w = idx[pos - WINDOW + 1 : pos + 1]
        cw, vw = c[w], v[w]
        r_all = np.log(cw[1:] / cw[:-1])
        r, vs, cs = r_all[-SHORT:], vw[-SHORT:], cw[-SHORT:]
        hl = (h[w] - l[w]) / cw
        vol = np.sqrt(np.mean(r**2))
        sv = vs.sum()
        out[t] = [
            np.log(cw[-1] / cw[-2]),
            np.log(cw[-1] / cw[-6]),
            np.log(cw[-1] / cw[-11]),
            np.log(cw[-1] / cw[-21]),
            vol,
            vw[-1] / vs.mean() if sv > 0 else 1.0,
            (vs * r).sum() / sv if sv > 0 else 0.0,
            hl[-1],
            (cw[-1] / cs.mean() - 1) / vol if vol > 0 else 0.0,
            hl[-SHORT:].mean(),
            np.sqrt(np.mean(r_all**2)),
        ]
    return out


def mlp_reference(weights, biases, activations, x) -> np.ndarray:
    """Logits of an MLP by matrix products."""
    a = np.asarray(x, dtype=np.float64)
    for w, b, act in zip(weights, biases, activations, strict=True):
        a = a @ np.asarray(w).T + b
        if act == "relu":
            a = np.maximum(a, 0.0)
        elif act == "tanh":
            a = np.tanh(a)
    return a


def softmax_reference(z, temperature=1.0) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64) / temperature
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def student_reference(weights, biases, activations, mean, std, clip, features) -> np.ndarray:
    """Probabilities of the student on raw features: standardise, clip, MLP, softmax."""
    z = np.clip((np.asarray(features) - mean) / std, -clip, clip)
    return softmax_reference(mlp_reference(weights, biases, activations, z))


def kd_loss_reference(zs, zt, y, w, temperature, alpha) -> float:
    """Weighted-mean Hinton loss: alpha * CE + (1 - alpha) * T^2 * KL(p_t^T || p_s^T)."""
    ps = softmax_reference(zs)
    pst = softmax_reference(zs, temperature)
    ptt = softmax_reference(zt, temperature)
    ce = -np.log(ps[np.arange(len(y)), y])
    kl = (ptt * (np.log(ptt) - np.log(pst))).sum(axis=1)
    per_row = alpha * ce + (1 - alpha) * temperature**2 * kl
    return float((w * per_row).sum() / w.sum())


def alpha_readout_reference(outputs, vol, bp_per_unit, buy_above_bp, sell_below_bp):
    """An alpha head's read-out and decision, by the definitions in ``kernels.layout``.

    ``outputs`` (n, 1 or 2): mean [and log-variance] in units of ``rvol_20 * sqrt(h)``; ``vol`` (n,): rvol_20.
    Returns (read-out (n, k): alpha_bp [, sd_bp]; class (n,): 2 buy above, 0 sell below, else 1).
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    scale = np.asarray(vol, dtype=np.float64) * bp_per_unit
    readout = np.empty_like(outputs)
    readout[:, 0] = outputs[:, 0] * scale
    if outputs.shape[1] == 2:
        readout[:, 1] = np.exp(0.5 * np.clip(outputs[:, 1], -60.0, 60.0)) * scale
    a = readout[:, 0]
    cls = np.where(a > buy_above_bp, 2, np.where(a < sell_below_bp, 0, 1))
    return readout, cls


def sequence_bars_reference(symbols_ohlcv, volume_mean_bars):
    """The sequence teacher's six channels per bar, for gap-free symbols on one common clock, by loops.

    ``symbols_ohlcv``: a list of (n, 5) arrays (open, high, low, close, volume), one per symbol, all of the same
    bars. Per symbol: log(c[t] / c[t-1]) (0 at t = 0), log(h[t] / l[t]), log1p(v[t] / mean(v[t-W+1..t])) (0 while
    fewer than W bars exist); then the same three averaged over the symbols. Returns the symbols' (n, 6) arrays.
    """
    own = []
    for a in symbols_ohlcv:
        n = len(a)
        ch = np.zeros((n, 3))
        for t in range(n):
            ch[t, 0] = np.log(a[t, 3] / a[t - 1, 3]) if t > 0 else 0.0
            ch[t, 1] = np.log(a[t, 1] / a[t, 2])
            if t >= volume_mean_bars - 1:
                ch[t, 2] = np.log1p(a[t, 4] / np.mean(a[t - volume_mean_bars + 1: t + 1, 4]))
        own.append(ch)
    market = np.mean(own, axis=0)
    return [np.column_stack([ch, market]) for ch in own]


def sequence_windows_reference(bars, sym, rows, n_bars):
    """Row by row and bar by bar: the ``n_bars`` bars ending at each row, of its own symbol, zero before its first."""
    out = np.zeros((len(rows), n_bars, bars.shape[1]), dtype=bars.dtype)
    for i, r in enumerate(rows):
        for j in range(n_bars):
            src = r - (n_bars - 1) + j
            if src >= 0 and sym[src] == sym[r]:
                out[i, j] = bars[src]
    return out

def scorecard_reference(bars, window: int, *, horizon_bars: int, band_k: float, vol_window: int,
                        round_trip_cost: float, interval_ms: int, bins: int = 10) -> dict:
    """The live scorecard's rows for one symbol's stream, by the label definition (``kernels.scorecard_step``).

    ``bars``: (start_ms, close, probs or None) in delivery order (on the interval's grid; the first delivery of
    a start wins; a close that is not a positive finite number is a missing bar). Labels on the time grid, then
    the last ``window`` scored predictions: arrays ``ll``, ``brier``, ``dec``, ``hit``, ``bins``, ``conf``.
    """
    h, k, vw, cost = horizon_bars, band_k, vol_window, round_trip_cost
    seen: dict[int, tuple] = {}
    for start, close, probs in bars:
        seen.setdefault(start, (close, probs))
    starts = np.array(sorted(seen))
    n = (starts[-1] - starts[0]) // interval_ms + 1
    idx = (starts - starts[0]) // interval_ms
    close = np.full(n, np.nan)
    probs = np.full((n, 3), np.nan)
    for i, s in zip(idx, starts, strict=True):
        c, p = seen[s]
        close[i] = c if 0.0 < c < np.inf else np.nan
        if p is not None:
            probs[i] = p
    present = np.isfinite(close)
    r = np.full(n, np.nan)
    r[1:] = np.log(close[1:] / close[:-1])
    vol = np.full(n, np.nan)
    win = np.lib.stride_tricks.sliding_window_view(r, vw)  # win[j] = r[j..j+vw-1]
    vol[vw - 1:] = np.sqrt(np.mean(win ** 2, axis=1))
    vol[: vw] = np.nan  # r[0] does not exist: the first full window ends at t = vw
    band = np.maximum(k * vol * np.sqrt(h), cost)
    fwd = np.full(n, np.nan)
    fwd[:-h] = np.log(close[h:] / close[:-h])
    ok = np.isfinite(fwd) & np.isfinite(band) & np.all(np.isfinite(probs), axis=1)
    for t in np.flatnonzero(ok):
        if not present[max(t - vw, 0): t + h + 1].all():
            ok[t] = False
    y = np.where(fwd > band, 2, np.where(fwd < -band, 0, 1))
    t = np.flatnonzero(ok)[-window:]
    p, y = probs[t], y[t]
    onehot = np.eye(3)[y]
    dec = np.argmax(p, axis=1)
    conf = p[np.arange(len(t)), dec]
    cal = np.minimum((conf * bins).astype(int), bins - 1)
    return {"ll": -np.log(np.clip(p[np.arange(len(t)), y], 1e-15, 1.0)), "brier": ((p - onehot) ** 2).sum(axis=1),
            "dec": dec, "hit": dec == y, "bins": cal, "conf": conf}


def regime_reference(rvol_100: float, ret_20: float, vol_edges) -> int:
    """Regime of one bar (``daemon.training.regime``): 2 * (vol tercile) + (ret_20 > 0); NaN is low and down."""
    tercile = 0
    for edge in vol_edges:
        if rvol_100 > edge:
            tercile += 1
    return 2 * tercile + (1 if ret_20 > 0 else 0)


def router_reference(students, vol_feature, trend_feature, vol_edges, features) -> np.ndarray:
    """Probabilities of a router (``kernels.layout.pack_router``): each row's regime student, by
    ``regime_reference`` and ``student_reference``. ``students``: per regime (weights, biases, activations,
    mean, std, clip)."""
    features = np.asarray(features, dtype=np.float64)
    out = np.empty((len(features), 3))
    for i, x in enumerate(features):
        g = regime_reference(x[vol_feature], x[trend_feature], vol_edges)
        out[i] = student_reference(*students[g], x[None, :])[0]
    return out
