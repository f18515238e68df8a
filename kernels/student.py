"""The whole per-bar computation in one numba call: feature step, normalisation, student forward, softmax.

A student travels as one packed "model vector" so the per-bar call takes two arrays and five scalars::

    [0] n_features F     [1] clip (|z| bound after normalisation)
    [2] MLP offset       [3] widest layer W (sizes the scratch space)
    [4 .. 4+F]           feature means
    [4+F .. 4+2F]        feature 1/std
    [MLP offset ..]      the packed MLP (``kernels.mlp`` layout), logits = class scores

The per-symbol state is a feature state (``kernels.features``) followed by ``2W`` scratch slots, then the
K logits, then the K probabilities. ``student_step`` (live) and ``student_batch`` (training, replay checks)
share ``_infer`` so their probabilities are equal bit for bit on the same features.

Normalisation policy: ``z = clip((x - mean) / std, -clip, clip)``, and a NaN ``z`` (which the feature
kernels do not produce, see ``kernels.features``) becomes 0, the training mean, as a last guard.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kernels.features import FEATURE_STATE_SIZE, S_FEATURES, _push_bar
from kernels.mlp import _mlp_forward, _softmax, mlp_max_width

M_FEATURES = 0
M_CLIP = 1
M_MLP = 2
M_WIDTH = 3
M_HEADER = 4

STATUS_WARMING = -1
STATUS_REJECTED = -2


def pack_student(mlp: np.ndarray, mean: np.ndarray, std: np.ndarray, clip: float) -> np.ndarray:
    """Pack normalisation statistics and a packed MLP into the model vector ``student_step`` reads."""
    f = int(mlp[1])
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    if mean.shape != (f,) or std.shape != (f,):
        raise ValueError(f"normalisation has shapes {mean.shape}/{std.shape}; the MLP takes {f} features")
    if not np.all(std > 0):
        raise ValueError("feature_std must be positive")
    head = np.array([f, clip, M_HEADER + 2 * f, mlp_max_width(mlp)], dtype=np.float64)
    return np.ascontiguousarray(np.concatenate([head, mean, 1.0 / std, mlp]))


def n_classes(model: np.ndarray) -> int:
    """Number of logits (classes) of a model vector."""
    off = int(model[M_MLP])
    return int(model[off + 1 + int(model[off])])


def student_state_size(model: np.ndarray) -> int:
    """Length of the per-symbol state vector ``student_step`` needs for ``model``."""
    return FEATURE_STATE_SIZE + 2 * int(model[M_WIDTH]) + 2 * n_classes(model)


def probs_offset(model: np.ndarray) -> int:
    """Where the K probabilities sit in a student state."""
    return FEATURE_STATE_SIZE + 2 * int(model[M_WIDTH]) + n_classes(model)


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


# The compiled entry point of ``student_step``, without the dispatcher's per-call type matching (about
# 0.12 us of the ~0.75 us call here, see BENCHMARKS.md). Only for callers that own correctly typed
# arguments (C-contiguous float64 vectors, floats), as ``daemon.model.SymbolState`` does; a wrong type
# would not be caught. ``tests/test_student.py::test_unchecked_entry_equals_dispatcher`` guards it.
student_step_unchecked = student_step.overloads[student_step.signatures[0]].entry_point
