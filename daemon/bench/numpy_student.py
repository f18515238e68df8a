"""The student in plain NumPy, one closed bar per call: the contender a Python team would write first.

A fair, reasonably optimised version: the rolling windows live in one preallocated ring written twice
(so every window is one contiguous slice, no ``np.roll``), the per-bar log return is a scalar
``math.log``, all window sums are two small matrix products, the normalisation and each layer work in
place in preallocated buffers (``out=``), and the MLP is one matrix-vector product per layer. Every NumPy
call still costs about half a microsecond to a microsecond of dispatch on 9- to 20-element arrays, which is
what this contender shows. It
computes what ``kernels.student.student_step`` computes (same missing-bar policy, same normalisation with
the model vector's ``1/std``) and ``tests/test_bench.py::test_numpy_student_equals_numba`` holds it to
rtol 1e-9 of the numba probabilities on real bars.
"""

from __future__ import annotations

import math

import numpy as np

from daemon.core.model import Model
from kernels.layout import LOOKBACK, M_CLIP, M_FEATURES, M_HEADER, WINDOW, unpack_mlp

# Window reductions as one product: columns sum everything, then the newest 1, 5, 10 and 20 returns.
_REDUCE = np.zeros((LOOKBACK, 5))
_REDUCE[:, 0] = 1.0
for _j, _k in enumerate((1, 5, 10, 20), start=1):
    _REDUCE[LOOKBACK - _k :, _j] = 1.0


class NumpyStudent:
    """Per-symbol state and the student's weights as NumPy arrays; ``update`` mirrors ``SymbolState.update``."""

    def __init__(self, model: Model):
        vec = model.vector
        f = int(vec[M_FEATURES])
        self.mean = vec[M_HEADER : M_HEADER + f].copy()
        self.inv_std = vec[M_HEADER + f : M_HEADER + 2 * f].copy()
        self.clip = float(vec[M_CLIP])
        weights, biases, acts, _ = unpack_mlp(model.artifact.mlp)
        self.layers = [(np.ascontiguousarray(w), b.copy(), np.empty(len(b)), a == "relu")
                       for w, b, a in zip(weights, biases, acts, strict=True)]
        # One ring of (close, volume, return, range) rows, each bar written twice so every window is one slice.
        self.ring = np.zeros((2 * WINDOW, 4))
        self.head = 0
        self.seen = 0
        self.last_close = 0.0
        self.z = np.zeros(f)
        self.probs = np.zeros(len(model.classes))

    def update(self, o: float, h: float, l: float, c: float, v: float) -> int:
        """Advance by one closed bar; return the class index, -1 while warming up, -2 if rejected."""
        valid = (
            0.0 < o < math.inf and 0.0 < h < math.inf and 0.0 < l < math.inf and 0.0 < c < math.inf
            and 0.0 <= v < math.inf
        )
        if not valid:
            if self.seen == 0:
                return -2
            c = h = l = self.last_close
            v = 0.0
        r = math.log(c / self.last_close) if self.seen else 0.0
        head = self.head
        ring = self.ring
        ring[head] = ring[head + WINDOW] = (c, v, r, (h - l) / c)
        head += 1
        self.head = 0 if head == WINDOW else head
        self.last_close = c
        self.seen += 1
        if self.seen < WINDOW:
            return -1
        # The newest WINDOW - 1 bars of the oldest-first window ring[head : head + WINDOW], and of those
        # the newest LOOKBACK.
        long = ring[self.head + 1 : self.head + WINDOW, 2]
        w = ring[self.head + WINDOW - LOOKBACK : self.head + WINDOW]
        sums = w.T @ _REDUCE  # rows close, volume, return, range; columns: all, newest 1, 5, 10, 20
        dots = w[:, 2] @ w[:, 1:3]  # (return . volume, return . return)
        sum_c, sum_v = sums[0, 0], sums[1, 0]
        vol = math.sqrt(dots[1] / LOOKBACK)
        if sum_v > 0.0:
            relvol, vwret = v / (sum_v / LOOKBACK), dots[0] / sum_v
        else:
            relvol, vwret = 1.0, 0.0
        zclose = (c / (sum_c / LOOKBACK) - 1.0) / vol if vol > 0.0 else 0.0
        rets = sums[2]
        rvol_long = math.sqrt((long @ long) / len(long))
        x = np.array((rets[1], rets[2], rets[3], rets[4], vol, relvol, vwret, (h - l) / c, zclose,
                      sums[3, 0] / LOOKBACK, rvol_long))
        z = self.z
        np.subtract(x, self.mean, out=z)
        z *= self.inv_std
        np.maximum(z, -self.clip, out=z)
        np.minimum(z, self.clip, out=z)
        a = z
        for wt, b, buf, relu in self.layers:
            np.dot(wt, a, out=buf)
            buf += b
            if relu:
                np.maximum(buf, 0.0, out=buf)
            a = buf
        e = np.exp(a - a.max())
        e /= e.sum()
        self.probs = e
        return int(e.argmax())
