"""A plain NumPy MLP with backprop and minibatch Adam, shared by the teacher MLPs and the student.

Weights are kept as ``(out, in)`` matrices, the layout ``kernels.mlp.pack_mlp`` takes, so a trained student
packs straight into the serving kernels. The training forward pass here is checked against
``kernels.mlp.mlp_forward_batch`` (``tests/test_distil.py::test_numpy_forward_equals_kernel``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# loss(logits, rows) -> (weighted-mean loss, d loss / d logits); rows index the training arrays
LossFn = Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]]


@dataclass
class MLP:
    """Layer weights ``(out, in)``, biases and activation names (last layer linear)."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    activations: list[str]

    @classmethod
    def init(cls, sizes: list[int], activation: str, rng: np.random.Generator, dtype=np.float64) -> MLP:
        """He-initialised (ReLU) or Glorot-initialised (tanh) MLP with layer widths ``sizes``."""
        ws, bs = [], []
        for k in range(len(sizes) - 1):
            fan_in, fan_out = sizes[k], sizes[k + 1]
            last = k == len(sizes) - 2
            scale = np.sqrt(2.0 / fan_in) if activation == "relu" and not last else np.sqrt(1.0 / fan_in)
            ws.append((rng.standard_normal((fan_out, fan_in)) * scale).astype(dtype))
            bs.append(np.zeros(fan_out, dtype=dtype))
        acts = [activation] * (len(sizes) - 2) + ["linear"]
        return cls(ws, bs, acts)

    def params(self) -> list[np.ndarray]:
        """Weights and biases in a flat list (w0, b0, w1, b1, ...)."""
        out = []
        for w, b in zip(self.weights, self.biases, strict=True):
            out += [w, b]
        return out

    def copy(self) -> MLP:
        """Deep copy."""
        return MLP([w.copy() for w in self.weights], [b.copy() for b in self.biases], list(self.activations))

    def forward(self, x: np.ndarray, keep: bool = False):
        """Return logits (and, with ``keep``, the layer inputs/pre-activations for ``backward``)."""
        a = x
        cache = []
        for w, b, act in zip(self.weights, self.biases, self.activations, strict=True):
            z = a @ w.T + b
            cache.append((a, z))
            if act == "relu":
                a = np.maximum(z, 0.0)
            elif act == "tanh":
                a = np.tanh(z)
            else:
                a = z
        return (a, cache) if keep else a

    def backward(self, cache, grad_out: np.ndarray) -> list[np.ndarray]:
        """Return gradients (same order as ``params``) of a loss whose logit gradient is ``grad_out``."""
        grads: list[np.ndarray] = [None] * (2 * len(self.weights))  # type: ignore[list-item]
        g = grad_out
        for k in range(len(self.weights) - 1, -1, -1):
            a_in, z = cache[k]
            act = self.activations[k]
            if act == "relu":
                g = g * (z > 0)
            elif act == "tanh":
                t = np.tanh(z)
                g = g * (1.0 - t * t)
            grads[2 * k] = g.T @ a_in
            grads[2 * k + 1] = g.sum(axis=0)
            if k > 0:
                g = g @ self.weights[k]
        return grads


def predict(model: MLP, x: np.ndarray, batch: int = 65536) -> np.ndarray:
    """Logits for many rows, in chunks to bound memory."""
    out = [model.forward(x[i : i + batch]) for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0, model.weights[-1].shape[0]))


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy_fn(y: np.ndarray, w: np.ndarray | None = None) -> LossFn:
    """Weighted-mean cross-entropy against integer targets ``y`` (any number of classes)."""

    def fn(z: np.ndarray, rows: np.ndarray) -> tuple[float, np.ndarray]:
        p = softmax(z.astype(np.float64))
        yy = y[rows]
        ww = np.ones(len(rows)) if w is None else w[rows]
        ww = ww / ww.sum()
        loss = float(-(ww * np.log(np.maximum(p[np.arange(len(rows)), yy], 1e-300))).sum())
        g = p
        g[np.arange(len(rows)), yy] -= 1.0
        return loss, (g * ww[:, None]).astype(z.dtype)

    return fn


@dataclass
class FitResult:
    """A trained MLP and its training history."""

    model: MLP
    best_epoch: int
    epochs_run: int
    val_history: list[float]
    train_history: list[float]


def fit(model: MLP, x: np.ndarray, loss_fn: LossFn, x_val: np.ndarray, val_fn: Callable[[np.ndarray], float] | None, *,
        epochs: int, batch: int, lr: float, patience: int, rng: np.random.Generator,
        weight_decay: float = 0.0, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
        plateau_patience: int = 0, plateau_factor: float = 0.5) -> FitResult:
    """Train with minibatch Adam (decoupled weight decay); stop when ``val_fn`` stops improving.

    ``loss_fn(logits, rows)`` returns the minibatch loss and its logit gradient (already divided by the batch
    weight, as ``kernels.mlp.kd_loss_grad`` does); ``val_fn(val_logits)`` scores the validation block, lower
    is better. The weights of the best validation epoch are returned. With ``plateau_patience > 0`` the
    learning rate is multiplied by ``plateau_factor`` after that many epochs without improvement. With
    ``val_fn=None`` all ``epochs`` run and the final weights are returned (no early stopping).
    """
    params = model.params()
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    step = 0
    keep_last = val_fn is None
    best = 0.0 if keep_last else val_fn(predict(model, x_val))
    best_model, best_epoch, bad = model.copy(), 0, 0
    val_hist, train_hist = [best], []
    since_decay = 0
    n = len(x)
    epoch = 0
    for epoch in range(1, epochs + 1):
        order = rng.permutation(n)
        total, count = 0.0, 0
        for i in range(0, n, batch):
            rows = order[i : i + batch]
            if len(rows) < 2:
                continue
            z, cache = model.forward(x[rows], keep=True)
            loss, g = loss_fn(z, rows)
            total += loss * len(rows)
            count += len(rows)
            grads = model.backward(cache, g)
            step += 1
            c1 = 1.0 - beta1**step
            c2 = 1.0 - beta2**step
            for p, gp, mp, vp in zip(params, grads, m, v, strict=True):
                mp *= beta1
                mp += (1.0 - beta1) * gp
                vp *= beta2
                vp += (1.0 - beta2) * (gp * gp)
                if weight_decay and p.ndim == 2:
                    p *= 1.0 - lr * weight_decay
                p -= (lr / c1) * mp / (np.sqrt(vp / c2) + eps)
        train_hist.append(total / max(count, 1))
        # without validation every epoch counts as an improvement, so the last weights are kept
        score = best - 1.0 if keep_last else val_fn(predict(model, x_val))
        val_hist.append(score)
        if score < best - 1e-6:
            best, best_model, best_epoch, bad, since_decay = score, model.copy(), epoch, 0, 0
        else:
            bad += 1
            since_decay += 1
            if bad >= patience:
                break
            if plateau_patience and since_decay >= plateau_patience:
                lr *= plateau_factor
                since_decay = 0
    return FitResult(best_model, best_epoch, epoch, val_hist, train_hist)
