"""The student's training maths: NumPy forward equals the serving kernel, gradients match finite differences,
the control ignores the teacher, and a trained student survives the artifact round trip bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daemon.core.artifact import load_artifact, save_artifact
from daemon.core.model import Model
from daemon.training import nn
from daemon.training.config import TrainConfig
from daemon.training.data import read_csv
from daemon.training.distil import Student, grouped_kd_loss_fn, kd_loss_fn, teacher_logits, train_student
from daemon.training.inputs import student_features
from daemon.training.labels import LabelParams, make_labels
from kernels.layout import FEATURE_NAMES, pack_mlp
from kernels.mlp import mlp_forward_batch
from tests.support import TINY_TRAIN

DATA = Path(__file__).resolve().parent.parent / "data"
SMALL = TrainConfig(student_epochs=3, student_batch=256, seeds=(0,), progress=False)


@pytest.fixture(scope="module")
def rows():
    """Features, labels and a fake teacher's probabilities on two weeks of real BTCUSDT 5m bars."""
    s = read_csv(DATA / "BTCUSDT-5m.csv")
    x = student_features(s)
    y = make_labels(s.close, LabelParams(3, 0.5, 100, 0.0011))["y"]
    ok = np.all(np.isfinite(x), axis=1) & (y >= 0)
    x, y = x[ok], y[ok]
    rng = np.random.default_rng(5)
    p = rng.dirichlet([2.0, 4.0, 2.0], size=len(y))
    return x, y, p


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_numpy_forward_equals_kernel(rows, activation):
    """The training forward pass (NumPy) gives the logits of kernels.mlp.mlp_forward_batch."""
    x = rows[0][:2000]
    z = (x - x.mean(0)) / x.std(0)
    m = nn.MLP.init([x.shape[1], 16, 8, 3], activation, np.random.default_rng(1))
    out = np.empty((len(z), 3))
    mlp_forward_batch(pack_mlp(m.weights, m.biases, m.activations), np.ascontiguousarray(z), out)
    np.testing.assert_allclose(m.forward(z), out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("alpha,temperature,mixed", [(0.5, 2.0, False), (0.0, 4.0, False), (1.0, 1.0, False),
                                                     (0.3, 2.0, True)])
def test_parameter_gradients_match_finite_differences(rows, alpha, temperature, mixed):
    """Backprop through kd_loss_grad's logit gradient equals central differences of the weighted loss.

    ``mixed``: a third of the rows have no teacher target and count on hard labels only.
    """
    x, y, p = rows
    rng = np.random.default_rng(3)
    idx = rng.choice(len(y), 64, replace=False)
    xb = (x[idx] - x.mean(0)) / x.std(0)
    m = nn.MLP.init([x.shape[1], 6, 4, 3], "tanh", rng)
    for b in m.biases:
        b += rng.normal(0, 0.1, b.shape)
    w = rng.uniform(0.2, 2.0, len(y))
    soft = (np.arange(len(y)) % 3 != 0) if mixed else None
    fn = kd_loss_fn(y, teacher_logits(p), w, temperature, alpha, soft)
    z, cache = m.forward(xb, keep=True)
    _, g = fn(z, idx)
    grads = m.backward(cache, g)
    eps = 1e-6
    for param, grad in zip(m.params(), grads, strict=True):
        flat, gflat = param.reshape(-1), grad.reshape(-1)
        for j in rng.choice(flat.size, min(6, flat.size), replace=False):
            old = flat[j]
            flat[j] = old + eps
            lp = fn(m.forward(xb), idx)[0]
            flat[j] = old - eps
            lm = fn(m.forward(xb), idx)[0]
            flat[j] = old
            assert gflat[j] == pytest.approx((lp - lm) / (2 * eps), rel=1e-5, abs=1e-9)
    if mixed:
        # the mixed loss is the weighted mean of the two groups' own losses
        s_ = soft[idx]
        z = m.forward(xb)
        whole = fn(z, idx)[0]
        part_soft = kd_loss_fn(y, teacher_logits(p), w, temperature, alpha)(z[s_], idx[s_])[0]
        part_hard = kd_loss_fn(y, teacher_logits(p), w, temperature, 1.0)(z[~s_], idx[~s_])[0]
        ws, wh = w[idx][s_].sum(), w[idx][~s_].sum()
        assert whole == pytest.approx((ws * part_soft + wh * part_hard) / (ws + wh), rel=1e-12)


def test_grouped_loss_is_the_weighted_mean_of_its_groups(rows):
    """Rows in group g scored at params[g]: one group gives the plain loss and gradient; several give the
    row-weighted mean of each group's plain loss, and each row's gradient is its own group's, scaled."""
    _, y, p = rows
    rng = np.random.default_rng(8)
    idx = rng.choice(len(y), 96, replace=False)
    zt = teacher_logits(p)
    w = rng.uniform(0.2, 2.0, len(y))
    zs = rng.normal(0, 1, (96, 3))
    group = rng.integers(0, 3, len(y))
    one = grouped_kd_loss_fn(y, zt, w, np.zeros(len(y), dtype=np.int64), [(2.0, 0.5)])(zs, idx)
    plain = kd_loss_fn(y, zt, w, 2.0, 0.5)(zs, idx)
    assert one[0] == pytest.approx(plain[0], rel=1e-12)
    np.testing.assert_allclose(one[1], plain[1], rtol=1e-12, atol=1e-15)
    params = [(1.0, 0.25), (4.0, 0.75), (2.0, 1.0)]
    loss, g = grouped_kd_loss_fn(y, zt, w, group, params)(zs, idx)
    total, want = 0.0, 0.0
    for k, (t, a) in enumerate(params):
        m = group[idx] == k
        lk, gk = kd_loss_fn(y, zt, w, t, a)(zs[m], idx[m])
        share = w[idx][m].sum() / w[idx].sum()
        want += share * lk
        total += share
        np.testing.assert_allclose(g[m], gk * share, rtol=1e-12, atol=1e-15)
    assert total == pytest.approx(1.0) and loss == pytest.approx(want, rel=1e-12)


def test_control_ignores_the_teacher(rows):
    """With alpha=1 the teacher's probabilities do not change a single weight."""
    x, y, p = rows
    n = len(y) * 3 // 4
    w = np.ones(n)
    a = train_student(x[:n], y[:n], p[:n], w, x[n:], y[n:], SMALL, 0, alpha=1.0)
    b = train_student(x[:n], y[:n], p[::-1][:n], w, x[n:], y[n:], SMALL, 0, alpha=1.0)
    c = train_student(x[:n], y[:n], p[:n], w, x[n:], y[n:], SMALL, 0, alpha=0.5)
    for wa, wb in zip(a.mlp.params(), b.mlp.params(), strict=True):
        assert np.array_equal(wa, wb)
    assert not all(np.array_equal(wa, wc) for wa, wc in zip(a.mlp.params(), c.mlp.params(), strict=True))


def test_distillation_moves_the_student_towards_the_teacher(rows):
    """Pure distillation (alpha=0) ends closer to the teacher's probabilities than the hard-label control."""
    x, y, _ = rows
    n = len(y) * 3 // 4
    # a teacher that is a smooth function of the features, so a student can learn it
    zt = np.column_stack([-x[:, 0] / x[:, 0].std(), np.zeros(len(y)), x[:, 0] / x[:, 0].std()])
    p = nn.softmax(zt)
    cfg = SMALL.replace(student_epochs=6)
    d = train_student(x[:n], y[:n], p[:n], np.ones(n), x[n:], y[n:], cfg, 0, alpha=0.0, temperature=1.0)
    c = train_student(x[:n], y[:n], p[:n], np.ones(n), x[n:], y[n:], cfg, 0, alpha=1.0)

    def kl(q):
        return float(np.mean(np.sum(p[n:] * (np.log(p[n:]) - np.log(q)), axis=1)))

    assert kl(d.predict_proba(x[n:])) < kl(c.predict_proba(x[n:]))


def test_trained_student_round_trips_through_the_artifact(rows, tmp_path):
    """Saved and reloaded, the daemon's Model gives exactly the probabilities evaluated in training."""
    x, y, p = rows
    n = len(y) * 3 // 4
    s = train_student(x[:n], y[:n], p[:n], np.ones(n), x[n:], y[n:], SMALL, 0)
    path = tmp_path / "m.npz"
    model_id = save_artifact(path, weights=s.mlp.weights, biases=s.mlp.biases, activations=s.mlp.activations,
                             feature_mean=s.feature_mean, feature_std=s.feature_std,
                             manifest={"normalisation": {"clip": s.clip},
                                       "distillation": {"temperature": 2.0, "alpha": 0.5},
                                       "labels": {"horizon_bars": 3}, "data": {"symbols": ["BTCUSDT"], "interval": "5"},
                                       "metrics": {}})
    art = load_artifact(path)
    assert art.model_id == model_id
    for a, b in zip(art.mlp, s.packed(), strict=True):
        assert a == b
    model = Model.load(path)
    assert model.interval == "5"
    assert np.array_equal(model.predict_features(x[n:]), s.predict_proba(x[n:]))
    # the logits route (mlp_forward_batch) agrees with the served probabilities
    np.testing.assert_allclose(nn.softmax(s.logits(x[n:])), s.predict_proba(x[n:]), rtol=1e-12, atol=1e-14)
    assert isinstance(s, Student)


def test_fixed_epochs_keeps_the_last_epoch_without_validation():
    """The shipped refit runs exactly the given epochs and needs no validation rows."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, len(FEATURE_NAMES)))
    y = rng.integers(0, 3, 600)
    s = train_student(x, y, np.full((600, 3), 1 / 3), np.ones(600), x[:0], y[:0], TINY_TRAIN, 0, fixed_epochs=2)
    assert s.epochs_run == 2 and s.best_epoch == 2
