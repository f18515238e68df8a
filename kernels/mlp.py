"""MLP forward passes, temperature softmax and the distillation loss as numba kernels.

An MLP travels as one packed float64 vector (layout in ``kernels.layout``), because numba's call overhead
grows with every array argument (``kdsignal bench``'s numba_floor_* rows).

Each output sums ``b_j + w_j0 x_0 + w_j1 x_1 + ...`` in input order in a register; an input-major
layout that updates all outputs together measured slower (stores through an array numba cannot prove
unaliased).

Helpers are plain ``@njit`` functions (LLVM inlines them): numba's IR-level ``inline="always"`` mixed up
loop variables of nested helpers here (``tests/test_student.py::test_step_matches_numpy_reference`` caught
it; ``kernels.specialise`` does use it, guarded by its own bit-for-bit tests). Kernels take the packed
vector plus an offset, so one vector can carry normalisation statistics or several ensemble members in
front of or behind an MLP. References: ``tests/naive.py``.
"""

from __future__ import annotations

import numpy as np

from kernels.jit import njit
from kernels.layout import ACT_RELU, ACT_TANH


@njit(cache=True)
def _mlp_forward(p, off, s, si, out, oi):
    """Forward the MLP at ``p[off:]``: input in ``s[si:si+d_0]``, logits to ``out[oi:oi+d_L]``.

    ``s[si:si+2W]`` is scratch (W the widest layer); layers ping-pong between its halves so nothing is
    allocated. Returns the offset just past the MLP in ``p``.
    """
    n_layers = int(p[off])
    width = 0
    for k in range(n_layers + 1):
        d = int(p[off + 1 + k])
        if d > width:
            width = d
    pos = off + 2 * n_layers + 2
    src = si
    dst = si + width
    for k in range(n_layers):
        n_in = int(p[off + 1 + k])
        n_out = int(p[off + 2 + k])
        act = int(p[off + n_layers + 2 + k])
        bias = pos + n_out * n_in
        last = k == n_layers - 1
        for j in range(n_out):
            acc = p[bias + j]
            row = pos + j * n_in
            for i in range(n_in):
                acc += p[row + i] * s[src + i]
            if act == ACT_RELU:
                acc = acc if acc > 0.0 else 0.0
            elif act == ACT_TANH:
                acc = np.tanh(acc)
            if last:
                out[oi + j] = acc
            else:
                s[dst + j] = acc
        pos = bias + n_out
        src, dst = dst, src
    return pos


@njit(cache=True)
def _softmax(z, zi, k, inv_t, out, oi):
    """Temperature softmax of ``z[zi:zi+k]`` into ``out[oi:oi+k]`` (``inv_t`` = 1/T), max-shifted."""
    m = z[zi]
    for i in range(1, k):
        if z[zi + i] > m:
            m = z[zi + i]
    total = 0.0
    for i in range(k):
        e = np.exp((z[zi + i] - m) * inv_t)
        out[oi + i] = e
        total += e
    for i in range(k):
        out[oi + i] /= total


@njit("void(float64[::1], int64, float64[:, ::1], float64[:, ::1])", cache=True)
def mlp_forward_batch_at(p, off, x, out):
    """Logits (n, d_L) of the MLP packed at ``p[off:]`` for inputs ``x`` (n, d_0)."""
    n_layers = int(p[off])
    width = 0
    for k in range(n_layers + 1):
        width = max(width, int(p[off + 1 + k]))
    scratch = np.empty(2 * width)
    logits = np.empty(out.shape[1])
    n_in = x.shape[1]
    for r in range(x.shape[0]):
        for i in range(n_in):
            scratch[i] = x[r, i]
        _mlp_forward(p, off, scratch, 0, logits, 0)
        for j in range(out.shape[1]):
            out[r, j] = logits[j]


def mlp_forward_batch(packed: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """Write logits (n, K) of the packed MLP for inputs ``x`` (n, d_0) into ``out``."""
    d_in = int(packed[1])
    if x.ndim != 2 or x.shape[1] != d_in:
        raise ValueError(f"inputs have shape {x.shape}; this MLP takes {d_in} features")
    mlp_forward_batch_at(packed, 0, np.ascontiguousarray(x, dtype=np.float64), out)


@njit("void(float64[:, ::1], float64, float64[:, ::1])", cache=True)
def softmax_batch(z, temperature, out):
    """Row-wise softmax of logits ``z`` (n, K) at ``temperature`` into ``out`` (n, K)."""
    inv_t = 1.0 / temperature
    k = z.shape[1]
    zr = np.empty(k)
    pr = np.empty(k)
    for r in range(z.shape[0]):
        for j in range(k):
            zr[j] = z[r, j]
        _softmax(zr, 0, k, inv_t, pr, 0)
        for j in range(k):
            out[r, j] = pr[j]


@njit(
    "float64(float64[:, ::1], float64[:, ::1], int64[::1], float64[::1], float64, float64, float64[:, ::1])",
    cache=True,
)
def kd_loss_grad(zs, zt, y, w, temperature, alpha, grad):
    """Hinton distillation loss, weighted mean over rows, and its gradient with respect to ``zs``.

    ``L_i = alpha * CE(y_i, softmax(zs_i)) + (1 - alpha) * T^2 * KL(softmax(zt_i/T) || softmax(zs_i/T))``;
    the gradient of row i is ``w_i / sum(w) * (alpha * (p_s - onehot(y)) + (1 - alpha) * T * (p_s^T - p_t^T))``.
    ``zs``, ``zt``: logits (n, K); ``y``: class indices (n,); ``w``: row weights (n,). Guarded by
    ``tests/test_mlp.py::test_kd_gradient_matches_finite_differences``.
    """
    n, k = zs.shape
    inv_t = 1.0 / temperature
    t2 = temperature * temperature
    ps = np.empty(k)
    pst = np.empty(k)
    ptt = np.empty(k)
    zsr = np.empty(k)
    ztr = np.empty(k)
    total_w = 0.0
    for r in range(n):
        total_w += w[r]
    loss = 0.0
    for r in range(n):
        for j in range(k):
            zsr[j] = zs[r, j]
            ztr[j] = zt[r, j]
        _softmax(zsr, 0, k, 1.0, ps, 0)
        _softmax(zsr, 0, k, inv_t, pst, 0)
        _softmax(ztr, 0, k, inv_t, ptt, 0)
        ce = -np.log(max(ps[y[r]], 1e-300))
        kl = 0.0
        for j in range(k):
            if ptt[j] > 0.0:
                kl += ptt[j] * (np.log(ptt[j]) - np.log(max(pst[j], 1e-300)))
        scale = w[r] / total_w
        loss += scale * (alpha * ce + (1.0 - alpha) * t2 * kl)
        for j in range(k):
            hard = ps[j] - (1.0 if j == y[r] else 0.0)
            soft = pst[j] - ptt[j]
            grad[r, j] = scale * (alpha * hard + (1.0 - alpha) * temperature * soft)
    return loss
