"""The student: a small MLP (16-8 by default) distilled from the teacher's out-of-fold probabilities.

Training runs in NumPy (``nn.MLP``) with the loss and its logit gradient from the serving library's
``kernels.mlp.kd_loss_grad``:
``alpha * CE(y, softmax(z_s)) + (1 - alpha) * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``.
The teacher's logits are ``log p_teacher`` (softmax of them gives back ``p_teacher``). The control is the
same call with ``alpha = 1``: same rows, seeds, initial weights, batches and budget, hard labels alone.
Evaluation always goes through the kernels (``predict_proba``), the code the daemon serves with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels.layout import pack_mlp, pack_student
from kernels.mlp import kd_loss_grad, mlp_forward_batch
from kernels.student import student_batch

from . import nn
from .config import TrainConfig


@dataclass
class Student:
    """A trained student: MLP weights plus the normalisation the serving kernel applies first."""

    mlp: nn.MLP
    feature_mean: np.ndarray
    feature_std: np.ndarray
    clip: float
    best_epoch: int = 0
    epochs_run: int = 0

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """``clip((x - mean) * (1 / std))`` with NaN -> 0, the arithmetic of ``kernels.student``."""
        z = (x - self.feature_mean) * (1.0 / self.feature_std)
        z = np.clip(z, -self.clip, self.clip)
        return np.ascontiguousarray(np.nan_to_num(z, nan=0.0), dtype=np.float64)

    def packed(self) -> np.ndarray:
        """The MLP in ``kernels.mlp.pack_mlp`` layout."""
        return pack_mlp(self.mlp.weights, self.mlp.biases, self.mlp.activations)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits (n, K) from raw features through ``kernels.mlp.mlp_forward_batch``."""
        z = self.normalise(x)
        out = np.empty((len(z), self.mlp.weights[-1].shape[0]))
        mlp_forward_batch(self.packed(), z, out)
        return out

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (n, K) from raw features via ``kernels.student.student_batch``, as served."""
        vec = pack_student(self.packed(), self.feature_mean, self.feature_std, self.clip)
        out = np.empty((len(x), self.mlp.weights[-1].shape[0]))
        student_batch(vec, np.ascontiguousarray(x, dtype=np.float64), out)
        return out


def teacher_logits(p_teacher: np.ndarray) -> np.ndarray:
    """Logits whose softmax is ``p_teacher`` (floored so a zero probability stays finite)."""
    return np.ascontiguousarray(np.log(np.clip(p_teacher, 1e-9, 1.0)))


def recency_weights(start_ms: np.ndarray, half_life_days: float) -> np.ndarray:
    """Exponential weights halving every ``half_life_days`` into the past (1 at the newest row)."""
    if half_life_days <= 0:
        return np.ones(len(start_ms))
    age_days = (start_ms.max() - start_ms) / 86_400_000.0
    return np.power(0.5, age_days / half_life_days)


def grouped_kd_loss_fn(y: np.ndarray, zt: np.ndarray, w: np.ndarray, group: np.ndarray,
                       params: list[tuple[float, float]]) -> nn.LossFn:
    """Minibatch loss where rows of ``group`` g use ``params[g] = (temperature, alpha)``.

    Each group's ``kernels.mlp.kd_loss_grad`` is weighted by its share of the minibatch's row weight, so
    the whole is one weighted mean over the minibatch.
    """

    def fn(zs: np.ndarray, rows: np.ndarray) -> tuple[float, np.ndarray]:
        zs = np.ascontiguousarray(zs, dtype=np.float64)
        g = np.empty_like(zs)
        gr, wr = group[rows], w[rows]
        loss = 0.0
        total = wr.sum()
        for k, (t, a) in enumerate(params):
            part = gr == k
            if not part.any():
                continue
            zp = np.ascontiguousarray(zs[part])
            gp = np.empty_like(zp)
            share = wr[part].sum() / total
            loss += share * kd_loss_grad(zp, zt[rows][part], y[rows][part], wr[part], t, a, gp)
            g[part] = gp * share
        return float(loss), g

    return fn


def kd_loss_fn(y: np.ndarray, zt: np.ndarray, w: np.ndarray, temperature: float, alpha: float,
               soft: np.ndarray | None = None) -> nn.LossFn:
    """Minibatch loss for ``nn.fit`` backed by ``kernels.mlp.kd_loss_grad``.

    Rows where ``soft`` is False have no teacher target and are scored on hard labels alone (alpha = 1);
    the two groups are combined as one weighted mean over the minibatch.
    """
    if soft is None or alpha == 1.0:
        def fn(zs: np.ndarray, rows: np.ndarray) -> tuple[float, np.ndarray]:
            zs = np.ascontiguousarray(zs, dtype=np.float64)
            g = np.empty_like(zs)
            return float(kd_loss_grad(zs, zt[rows], y[rows], w[rows], temperature, alpha, g)), g

        return fn
    return grouped_kd_loss_fn(y, zt, w, (~soft).astype(np.int64), [(temperature, alpha), (temperature, 1.0)])


def train_student(x_fit: np.ndarray, y_fit: np.ndarray, p_fit: np.ndarray, w_fit: np.ndarray,
                  x_val: np.ndarray, y_val: np.ndarray, cfg: TrainConfig, seed: int, *,
                  temperature: float | None = None, alpha: float | None = None,
                  hidden: tuple[int, ...] | None = None, lr: float | None = None,
                  weight_decay: float | None = None, fixed_epochs: int | None = None,
                  regime: np.ndarray | None = None, regime_params: tuple | None = None) -> Student:
    """Distil a student on rows ``x_fit`` (raw features) from teacher probabilities ``p_fit``.

    ``alpha=1`` gives the hard-label control (the teacher's probabilities are then ignored). Rows whose
    ``p_fit`` is NaN (no out-of-fold teacher exists for them) train on hard labels only. Early stopping
    scores the log loss of hard labels on the validation block, the quantity the report compares; with
    ``fixed_epochs`` there is no validation (``x_val`` is ignored) and the model after that many epochs is kept.
    With ``regime`` (a group index per fit row), rows of group g use ``regime_params[g] = (T, alpha)``
    instead (``daemon.training.regime``).
    """
    temperature = cfg.temperature if temperature is None else temperature
    alpha = cfg.alpha if alpha is None else alpha
    hidden = cfg.student_hidden if hidden is None else hidden
    mean = x_fit.mean(axis=0)
    std = x_fit.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    s = Student(None, mean, std, cfg.feature_clip)  # type: ignore[arg-type]
    zf, zv = s.normalise(x_fit), s.normalise(x_val)
    # the initial weights depend on the seed only, so distilled and control students start identically
    rng = np.random.default_rng([seed, 7])
    s.mlp = nn.MLP.init([x_fit.shape[1], *hidden, 3], cfg.student_activation, rng)
    soft = np.all(np.isfinite(p_fit), axis=1)
    zt = teacher_logits(np.where(soft[:, None], p_fit, 1.0 / 3.0))
    y_fit = np.ascontiguousarray(y_fit, dtype=np.int64)
    w = np.ascontiguousarray(w_fit / w_fit.mean(), dtype=np.float64)
    yv = np.asarray(y_val, dtype=np.int64)

    def val_fn(z: np.ndarray) -> float:
        p = nn.softmax(z)
        return float(-np.mean(np.log(np.clip(p[np.arange(len(yv)), yv], 1e-15, 1.0))))

    if regime is None:
        loss = kd_loss_fn(y_fit, zt, w, temperature, alpha, None if soft.all() else soft)
    else:  # rows without a soft target form one more group, on hard labels
        loss = grouped_kd_loss_fn(y_fit, zt, w, np.where(soft, regime, len(regime_params)).astype(np.int64),
                                  [*regime_params, (1.0, 1.0)])
    res = nn.fit(s.mlp, zf, loss, zv,
                 None if fixed_epochs else val_fn,
                 epochs=fixed_epochs or cfg.student_epochs, batch=cfg.student_batch,
                 lr=cfg.student_lr if lr is None else lr, patience=cfg.student_patience,
                 rng=np.random.default_rng([seed, 11]), plateau_patience=cfg.student_plateau_patience,
                 weight_decay=cfg.student_weight_decay if weight_decay is None else weight_decay)
    s.mlp, s.best_epoch, s.epochs_run = res.model, res.best_epoch, res.epochs_run
    return s
