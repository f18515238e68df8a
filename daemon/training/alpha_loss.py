"""Regression distillation losses for an alpha head, each with its gradient with respect to the student's outputs.

Targets and outputs are forward returns in units of recent volatility (``kernels.layout``: an alpha head).
Every function takes the student's outputs ``z`` (n, 1) or (n, 2), the rows' targets and weights ``w``, and
returns ``(weighted-mean loss, d loss / d z)`` with the gradient already divided by ``sum(w)``, as
``kernels.mlp.kd_loss_grad`` does, so ``nn.fit`` takes them unchanged. Guarded by
``tests/test_alpha_training.py`` (finite differences, and the references written out there).

- ``huber_distil``, the regression analogue of the Hinton loss on a point student:
  ``alpha * huber(z - y) + (1 - alpha) * huber(z - mu_t)``; ``alpha = 1`` is the control on realised returns.
- ``gaussian_distil``, the distributional form on a (mean, log-variance) student:
  ``alpha * NLL(y | mu_s, v_s) + (1 - alpha) * KL(N(mu_t, v_t) || N(mu_s, v_s))`` with
  ``NLL = (log v_s + (y - mu_s)^2 / v_s) / 2`` (the constant dropped) and
  ``KL = (log v_s - log v_t + (v_t + (mu_t - mu_s)^2) / v_s - 1) / 2``; ``alpha = 1`` is its control.
"""

from __future__ import annotations

import numpy as np

# |log-variance| beyond this is clamped in the loss as in serving (kernels.layout.LOG_VAR_BOUND is looser);
# the gradient is zero past it, so a runaway variance cannot overflow exp().
LOG_VAR_CLAMP = 30.0


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber loss of residuals ``r``: ``r^2 / 2`` within ``delta``, linear beyond."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def huber_grad(r: np.ndarray, delta: float) -> np.ndarray:
    """Derivative of ``huber`` with respect to ``r``."""
    return np.clip(r, -delta, delta)


def huber_distil(z: np.ndarray, y: np.ndarray, mu_t: np.ndarray, w: np.ndarray, alpha: float,
                 delta: float) -> tuple[float, np.ndarray]:
    """Weighted mean of ``alpha * huber(z - y) + (1 - alpha) * huber(z - mu_t)`` and its gradient (n, 1)."""
    s = z[:, 0]
    scale = w / w.sum()
    loss = alpha * huber(s - y, delta)
    g = alpha * huber_grad(s - y, delta)
    if alpha != 1.0:
        loss = loss + (1.0 - alpha) * huber(s - mu_t, delta)
        g = g + (1.0 - alpha) * huber_grad(s - mu_t, delta)
    return float((scale * loss).sum()), (scale * g)[:, None]


def gaussian_distil(z: np.ndarray, y: np.ndarray, mu_t: np.ndarray, lv_t: np.ndarray, w: np.ndarray,
                    alpha: float) -> tuple[float, np.ndarray]:
    """Weighted mean of ``alpha * NLL(y) + (1 - alpha) * KL(teacher || student)`` and its gradient (n, 2)."""
    mu = z[:, 0]
    raw = z[:, 1]
    lv = np.clip(raw, -LOG_VAR_CLAMP, LOG_VAR_CLAMP)
    inside = (raw > -LOG_VAR_CLAMP) & (raw < LOG_VAR_CLAMP)
    prec = np.exp(-lv)
    scale = w / w.sum()
    d = y - mu
    loss = alpha * 0.5 * (lv + d * d * prec)
    g_mu = alpha * (-d * prec)
    g_lv = alpha * 0.5 * (1.0 - d * d * prec)
    if alpha != 1.0:
        e = mu_t - mu
        m2 = np.exp(lv_t) + e * e
        loss = loss + (1.0 - alpha) * 0.5 * (lv - lv_t + m2 * prec - 1.0)
        g_mu = g_mu + (1.0 - alpha) * (-e * prec)
        g_lv = g_lv + (1.0 - alpha) * 0.5 * (1.0 - m2 * prec)
    g = np.empty_like(z)
    g[:, 0] = scale * g_mu
    g[:, 1] = scale * g_lv * inside
    return float((scale * loss).sum()), g


def gaussian_nll(mu: np.ndarray, lv: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row Gaussian negative log-likelihood of ``y`` (with the ``log(2 pi) / 2`` constant)."""
    lv = np.clip(lv, -LOG_VAR_CLAMP, LOG_VAR_CLAMP)
    return 0.5 * (np.log(2 * np.pi) + lv + (y - mu) ** 2 * np.exp(-lv))
