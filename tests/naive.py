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
