"""The whole per-bar computation in one numba call: feature step, normalisation, student forward, softmax.

The model vector and the state it works in are laid out as ``kernels.layout`` describes.
``student_step`` (live) and ``student_batch`` (training, replay checks) share ``_infer`` so their
probabilities are equal bit for bit on the same features.

Normalisation policy: ``z = clip((x - mean) / std, -clip, clip)``, and a NaN ``z`` (which the feature
kernels do not produce, see ``kernels.features``) becomes 0, the training mean, as a last guard.
"""

from __future__ import annotations

import numpy as np

from kernels.features import _push_bar
from kernels.jit import njit
from kernels.layout import (
    FEATURE_STATE_SIZE,
    M_CLIP,
    M_FEATURES,
    M_HEADER,
    M_MLP,
    M_WIDTH,
    S_FEATURES,
    STATUS_REJECTED,
    STATUS_WARMING,
)
from kernels.mlp import _mlp_forward, _softmax


@njit(cache=True)
def _infer(model, x, xi, s, si, k, out, oi):
    """Normalise features ``x[xi:xi+F]``, forward the student, softmax; return the argmax class.

    ``s[si:si+2W]`` is scratch, ``s[si+2W:si+2W+k]`` receives the logits, ``out[oi:oi+k]`` the
    probabilities.
    """
    f = int(model[M_FEATURES])
    clip = model[M_CLIP]
    for j in range(f):
        z = (x[xi + j] - model[M_HEADER + j]) * model[M_HEADER + f + j]
        if z > clip:
            z = clip
        elif z < -clip:
            z = -clip
        elif z != z:
            z = 0.0
        s[si + j] = z
    li = si + 2 * int(model[M_WIDTH])
    _mlp_forward(model, int(model[M_MLP]), s, si, s, li)
    _softmax(s, li, k, 1.0, out, oi)
    best = 0
    for i in range(1, k):
        if out[oi + i] > out[oi + best]:
            best = i
    return best


@njit("int64(float64[::1], float64[::1], float64, float64, float64, float64, float64)", cache=True)
def student_step(state, model, o, h, l, c, v):
    """Advance one symbol by one closed bar and run the student on it (no allocation).

    Returns the argmax class index with probabilities left in the state (see ``probs_offset``),
    ``STATUS_WARMING`` (-1) before WINDOW bars are known, or ``STATUS_REJECTED`` (-2) for an invalid
    bar before any valid one. Reference: ``tests/naive.py::student_reference``.
    """
    status = _push_bar(state, o, h, l, c, v)
    if status <= 0:
        return STATUS_WARMING if status == 0 else STATUS_REJECTED
    off = int(model[M_MLP])
    k = int(model[off + 1 + int(model[off])])
    w2 = 2 * int(model[M_WIDTH])
    # State tail: scratch (2W) | logits (K) | probabilities (K).
    return _infer(model, state, S_FEATURES, state, FEATURE_STATE_SIZE, k, state, FEATURE_STATE_SIZE + w2 + k)


@njit("void(float64[::1], float64[:, ::1], float64[:, ::1])", cache=True)
def student_batch(model, feats, out):
    """Class probabilities (n, K) for a feature matrix (n, F); rows with a NaN feature (warm-up) get NaN."""
    f = int(model[M_FEATURES])
    k = out.shape[1]
    w2 = 2 * int(model[M_WIDTH])
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
        _infer(model, x, 0, s, 0, k, p, 0)
        for i in range(k):
            out[r, i] = p[i]

