"""The whole per-bar computation in one numba call: feature step, normalisation, student forward, softmax.

The model vector and the state it works in are laid out as ``kernels.layout`` describes.
``student_step`` (live) and ``student_batch`` (training, replay checks) share ``_infer`` so their
read-outs (probabilities of a ``classes`` head, ``alpha_bp`` [, ``sd_bp``] of an ``alpha`` head) are equal
bit for bit on the same features.

Normalisation policy: ``z = clip((x - mean) / std, -clip, clip)``, and a NaN ``z`` (which the feature
kernels do not produce, see ``kernels.features``) becomes 0, the training mean, as a last guard.
"""

from __future__ import annotations

import numpy as np

from kernels.features import _push_bar
from kernels.jit import njit
from kernels.layout import (
    ALPHA_VOL_FEATURE,
    FEATURE_STATE_SIZE,
    HEAD_ALPHA,
    LOG_VAR_BOUND,
    M_CLIP,
    M_FEATURES,
    M_HEAD,
    M_HEADER,
    M_MLP,
    M_WIDTH,
    R_COUNT,
    R_EDGES,
    R_OFFSETS,
    R_TREND_FEATURE,
    R_VOL_FEATURE,
    ROUTER_MARK,
    S_FEATURES,
    STATUS_REJECTED,
    STATUS_WARMING,
)
from kernels.mlp import _mlp_forward, _softmax


@njit(cache=True)
def _alpha_readout(model, tail, vol, z, zi, k, out, oi):
    """An alpha head's read-out of outputs ``z[zi:zi+k]`` into ``out[oi:oi+k]``; return the decided class.

    ``vol`` is the bar's raw rvol_20; ``model[tail:tail+3]`` = bp per unit, buy above, sell below
    (``kernels.layout``). Reference: ``tests/naive.py::alpha_readout_reference``.
    """
    scale = model[tail] * vol
    a = z[zi] * scale
    out[oi] = a
    if k == 2:
        lv = z[zi + 1]
        if lv > LOG_VAR_BOUND:
            lv = LOG_VAR_BOUND
        elif lv < -LOG_VAR_BOUND:
            lv = -LOG_VAR_BOUND
        out[oi + 1] = np.exp(0.5 * lv) * scale
    if a > model[tail + 1]:
        return 2
    if a < model[tail + 2]:
        return 0
    return 1


@njit(cache=True)
def _route(model, x, xi):
    """Offset of the student vector that serves features ``x[xi:xi+F]``: 0 for a plain student, else the
    regime's student of a router (``kernels.layout``). Reference: ``tests/naive.py::router_reference``."""
    if model[0] != ROUTER_MARK:
        return 0
    v = x[xi + int(model[R_VOL_FEATURE])]
    g = 0
    if v > model[R_EDGES]:
        g += 2
    if v > model[R_EDGES + 1]:
        g += 2
    if x[xi + int(model[R_TREND_FEATURE])] > 0.0:
        g += 1
    if g >= int(model[R_COUNT]):  # a router packed by pack_router always has them all
        g = 0
    return int(model[R_OFFSETS + g])


@njit(cache=True)
def _infer(model, b, x, xi, s, si, k, out, oi):
    """Normalise features ``x[xi:xi+F]``, forward the student at ``model[b:]``, read its head out; return the class.

    ``s[si:si+2W]`` is scratch, ``s[si+2W:si+2W+k]`` receives the outputs, ``out[oi:oi+k]`` the
    read-out: softmax probabilities and their argmax, or an alpha head's ``_alpha_readout``.
    """
    f = int(model[b + M_FEATURES])
    clip = model[b + M_CLIP]
    for j in range(f):
        z = (x[xi + j] - model[b + M_HEADER + j]) * model[b + M_HEADER + f + j]
        if z > clip:
            z = clip
        elif z < -clip:
            z = -clip
        elif z != z:
            z = 0.0
        s[si + j] = z
    li = si + 2 * int(model[b + M_WIDTH])
    end = _mlp_forward(model, b + int(model[b + M_MLP]), s, si, s, li)
    if model[b + M_HEAD] == HEAD_ALPHA:
        return _alpha_readout(model, end, x[xi + ALPHA_VOL_FEATURE], s, li, k, out, oi)
    _softmax(s, li, k, 1.0, out, oi)
    best = 0
    for i in range(1, k):
        if out[oi + i] > out[oi + best]:
            best = i
    return best


@njit("int64(float64[::1], float64[::1], float64, float64, float64, float64, float64)", cache=True)
def student_step(state, model, o, h, l, c, v):
    """Advance one symbol by one closed bar and run the student on it (no allocation).

    Returns the class index (argmax, or an alpha head's decision) with the read-out left in the state
    (see ``probs_offset``),
    ``STATUS_WARMING`` (-1) before WINDOW bars are known, or ``STATUS_REJECTED`` (-2) for an invalid
    bar before any valid one. Reference: ``tests/naive.py::student_reference``.
    """
    status = _push_bar(state, o, h, l, c, v)
    if status <= 0:
        return STATUS_WARMING if status == 0 else STATUS_REJECTED
    b = _route(model, state, S_FEATURES)
    off = b + int(model[b + M_MLP])
    k = int(model[off + 1 + int(model[off])])
    w2 = 2 * int(model[b + M_WIDTH])
    # State tail: scratch (2W) | outputs (K) | read-out (K).
    return _infer(model, b, state, S_FEATURES, state, FEATURE_STATE_SIZE, k, state, FEATURE_STATE_SIZE + w2 + k)


@njit("void(float64[::1], float64[:, ::1], float64[:, ::1])", cache=True)
def student_batch(model, feats, out):
    """Read-outs (n, K) for a feature matrix (n, F): class probabilities, or alpha_bp [, sd_bp] of an alpha
    head; rows with a NaN feature (warm-up) get NaN. A router runs each row's regime student."""
    b0 = int(model[R_OFFSETS]) if model[0] == ROUTER_MARK else 0  # a router's students share F and W
    f = int(model[b0 + M_FEATURES])
    k = out.shape[1]
    w2 = 2 * int(model[b0 + M_WIDTH])
    s = np.empty(w2 + k)
    x = np.empty(f)
    p = np.empty(k)
    for r in range(feats.shape[0]):
        warming = False
        for j in range(f):
            x[j] = feats[r, j]
            if x[j] != x[j]:
                warming = True
        if warming:
            for i in range(k):
                out[r, i] = np.nan
            continue
        _infer(model, _route(model, x, 0), x, 0, s, 0, k, p, 0)
        for i in range(k):
            out[r, i] = p[i]

