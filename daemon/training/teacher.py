"""The teacher: deep MLPs (different seeds and widths) and LightGBM, averaged in probability space.

Members may predict finer targets (return buckets, see ``labels.bucket_labels``); their probabilities are
collapsed to sell/hold/buy before averaging. The MLP members' mean and the LightGBM member are blended
with weight ``lgbm_weight`` on LightGBM. A teacher only ever labels rows it was not trained on: the
pipeline trains one teacher per walk-forward block (``folds.walk_forward``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import nn
from .config import TrainConfig


def collapse(p: np.ndarray, to_class: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """Sum bucket probabilities (n, B) into class probabilities (n, n_classes)."""
    out = np.zeros((len(p), n_classes))
    for b, c in enumerate(to_class):
        out[:, c] += p[:, b]
    return out


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of integer labels ``y`` under probabilities ``p``."""
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-15, 1.0))))


@dataclass
class Standardizer:
    """Per-column mean/std from training rows; NaN becomes 0 (the mean) and values are clipped."""

    mean: np.ndarray
    std: np.ndarray
    clip: float = 8.0

    @classmethod
    def fit(cls, x: np.ndarray, clip: float = 8.0) -> Standardizer:
        """Fit on the finite values of each column."""
        ok = np.isfinite(x)
        cnt = np.maximum(ok.sum(axis=0), 1)
        xz = np.where(ok, x, 0.0).astype(np.float64)
        mean = xz.sum(axis=0) / cnt
        var = (np.where(ok, x - mean, 0.0) ** 2).sum(axis=0) / cnt
        std = np.sqrt(var)
        std = np.where(std > 1e-12, std, 1.0)
        return cls(mean, std, clip)

    def __call__(self, x: np.ndarray, dtype=np.float32) -> np.ndarray:
        z = (x - self.mean) / self.std
        z = np.clip(np.nan_to_num(z, nan=0.0), -self.clip, self.clip)
        return z.astype(dtype)


@dataclass
class QuantileNormal:
    """Map each column through its training quantiles to a standard normal score (NaN -> 0).

    Teacher-only: the MLP members train better on heavy-tailed ratios (volume, volatility) once they are
    Gaussianised; the student cannot use this, its normalisation is the serving kernel's affine one.
    """

    knots: list[np.ndarray]
    scores: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, n_knots: int = 257) -> QuantileNormal:
        """Fit on the finite values of each column."""
        from scipy.special import ndtri

        q = np.linspace(0.0, 1.0, n_knots)
        scores = ndtri(np.clip(q, 0.5 / len(x), 1 - 0.5 / len(x)))
        knots = []
        for j in range(x.shape[1]):
            col = x[:, j][np.isfinite(x[:, j])]
            k = np.quantile(col, q) if len(col) else np.zeros(n_knots)
            knots.append(np.maximum.accumulate(k + np.arange(n_knots) * 1e-12 * (np.abs(k).max() + 1)))
        return cls(knots, scores)

    def __call__(self, x: np.ndarray, dtype=np.float32) -> np.ndarray:
        out = np.empty(x.shape, dtype=dtype)
        for j, k in enumerate(self.knots):
            col = x[:, j]
            z = np.interp(col, k, self.scores)
            out[:, j] = np.where(np.isfinite(col), z, 0.0)
        return out


@dataclass
class Teacher:
    """A fitted ensemble; ``predict`` returns collapsed class probabilities and each member's."""

    scaler: Standardizer | QuantileNormal
    mlps: list[nn.MLP]
    lgbm: object | None
    to_class: np.ndarray
    lgbm_weight: float
    info: list[dict] = field(default_factory=list)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Return (ensemble probabilities (n, 3), member name -> probabilities (n, 3))."""
        members: dict[str, np.ndarray] = {}
        xs = self.scaler(x)
        for i, m in enumerate(self.mlps):
            members[f"mlp{i}"] = collapse(nn.softmax(nn.predict(m, xs).astype(np.float64)), self.to_class)
        if self.lgbm is not None:
            members["lgbm"] = collapse(self.lgbm.predict(x, num_threads=self._threads), self.to_class)
        mlp_mean = np.mean([members[k] for k in members if k.startswith("mlp")], axis=0) if self.mlps else None
        if mlp_mean is None:
            p = members["lgbm"]
        elif self.lgbm is None:
            p = mlp_mean
        else:
            p = self.lgbm_weight * members["lgbm"] + (1.0 - self.lgbm_weight) * mlp_mean
        return p, members

    _threads: int = 2


def fit_teacher(x_fit: np.ndarray, t_fit: np.ndarray, x_val: np.ndarray, t_val: np.ndarray, y_val: np.ndarray,
                to_class: np.ndarray, cfg: TrainConfig, seed: int, w_fit: np.ndarray | None = None) -> Teacher:
    """Fit every member on ``(x_fit, t_fit)`` (targets: bucket indices), early-stopping on the validation rows.

    ``y_val`` are the sell/hold/buy labels of the validation rows (early stopping scores the collapsed
    probabilities, the quantity the student is distilled from).
    """
    n_targets = len(to_class)
    scaler = QuantileNormal.fit(x_fit) if cfg.teacher_input_transform == "quantile" else Standardizer.fit(x_fit)
    xf, xv = scaler(x_fit), scaler(x_val)
    info = []
    mlps = []
    for i, hidden in enumerate(cfg.teacher_hidden):
        rng = np.random.default_rng([seed, 1000 + i])
        model = nn.MLP.init([x_fit.shape[1], *hidden, n_targets], "relu", rng, dtype=np.float32)

        def val_fn(z, _y=y_val):
            return log_loss(collapse(nn.softmax(z.astype(np.float64)), to_class), _y)

        res = nn.fit(model, xf, nn.cross_entropy_fn(t_fit, w_fit), xv, val_fn, epochs=cfg.teacher_epochs,
                     batch=cfg.teacher_batch, lr=cfg.teacher_lr, patience=cfg.teacher_patience, rng=rng,
                     weight_decay=cfg.teacher_weight_decay)
        mlps.append(res.model)
        info.append({"member": f"mlp{i}", "hidden": list(hidden), "best_epoch": res.best_epoch,
                     "val_log_loss": res.val_history[res.best_epoch]})
    booster = None
    if cfg.teacher_lgbm:
        import lightgbm as lgb

        params = {
            "objective": "multiclass", "num_class": n_targets, "learning_rate": cfg.lgbm_lr,
            "num_leaves": cfg.lgbm_leaves, "min_data_in_leaf": cfg.lgbm_min_leaf, "feature_fraction": 0.8,
            "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0, "num_threads": cfg.num_threads,
            "seed": seed, "verbose": -1, "deterministic": True, "force_row_wise": True,
        }
        dfit = lgb.Dataset(x_fit, t_fit, weight=w_fit, free_raw_data=True)
        dval = lgb.Dataset(x_val, t_val, reference=dfit)
        booster = lgb.train(params, dfit, num_boost_round=cfg.lgbm_rounds, valid_sets=[dval],
                            callbacks=[lgb.early_stopping(30, verbose=False)])
        pv = collapse(booster.predict(x_val, num_threads=cfg.num_threads), to_class)
        info.append({"member": "lgbm", "best_iteration": int(booster.best_iteration),
                     "val_log_loss": log_loss(pv, y_val)})
    t = Teacher(scaler, mlps, booster, to_class, cfg.lgbm_weight if mlps else 1.0, info)
    t._threads = cfg.num_threads
    return t
