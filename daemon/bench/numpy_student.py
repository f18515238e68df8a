"""The student in plain NumPy, one closed bar per call: the contender a Python team would write first.

A fair, reasonably optimised version: the rolling windows live in preallocated rings written twice (so
every window is one contiguous slice, no ``np.roll``), the per-bar log return is a scalar ``math.log``,
reductions are dot products and ``cumsum``, and the MLP is one matrix-vector product per layer. It
computes what ``kernels.student.student_step`` computes (same missing-bar policy, same normalisation with
the model vector's ``1/std``) and ``tests/test_bench.py::test_numpy_student_equals_numba`` holds it to
rtol 1e-9 of the numba probabilities on real bars.
"""

from __future__ import annotations

import math

import numpy as np

from daemon.model import Model
from kernels.features import LOOKBACK, WINDOW
from kernels.mlp import unpack_mlp
from kernels.student import M_CLIP, M_FEATURES, M_HEADER

_RET_AT = np.array([0, 4, 9, 19])  # cumulative sums of the newest 1, 5, 10, 20 returns


class NumpyStudent:
    """Per-symbol state and the student's weights as NumPy arrays; ``update`` mirrors ``SymbolState.update``."""

    def __init__(self, model: Model):
        vec = model.vector
        f = int(vec[M_FEATURES])
        self.mean = vec[M_HEADER : M_HEADER + f].copy()
        self.inv_std = vec[M_HEADER + f : M_HEADER + 2 * f].copy()
        self.clip = float(vec[M_CLIP])
        weights, biases, acts, _ = unpack_mlp(model.artifact.mlp)
        self.layers = [(np.ascontiguousarray(w), b.copy(), a == "relu") for w, b, a in zip(weights, biases, acts)]
        self.closes = np.zeros(2 * WINDOW)
        self.volumes = np.zeros(2 * WINDOW)
        self.rets = np.zeros(2 * WINDOW)
        self.head = 0
        self.seen = 0
        self.last_close = 0.0
        self.features = np.zeros(f)
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
        self.closes[head] = self.closes[head + WINDOW] = c
        self.volumes[head] = self.volumes[head + WINDOW] = v
        self.rets[head] = self.rets[head + WINDOW] = r
        head += 1
        self.head = 0 if head == WINDOW else head
        self.last_close = c
        self.seen += 1
        if self.seen < WINDOW:
            return -1
        # The newest LOOKBACK bars of the oldest-first window ring[head : head + WINDOW].
        lo = self.head + 1
        cw = self.closes[lo : lo + LOOKBACK]
        vw = self.volumes[lo : lo + LOOKBACK]
        rw = self.rets[lo : lo + LOOKBACK]
        x = self.features
        x[0:4] = np.cumsum(rw[::-1])[_RET_AT]
        vol = math.sqrt(float(rw @ rw) / LOOKBACK)
        sum_v = float(vw.sum())
        x[4] = vol
        if sum_v > 0.0:
            x[5] = v / (sum_v / LOOKBACK)
            x[6] = float(vw @ rw) / sum_v
        else:
            x[5] = 1.0
            x[6] = 0.0
        x[7] = (h - l) / c
        x[8] = (c / (float(cw.sum()) / LOOKBACK) - 1.0) / vol if vol > 0.0 else 0.0
        a = np.clip((x - self.mean) * self.inv_std, -self.clip, self.clip)
        for w, b, relu in self.layers:
            a = w @ a + b
            if relu:
                np.maximum(a, 0.0, out=a)
        e = np.exp(a - a.max())
        self.probs = e / e.sum()
        return int(self.probs.argmax())
