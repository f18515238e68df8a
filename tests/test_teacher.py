"""Teacher pieces: input transforms, bucket collapse, and an ensemble fitted on real sample rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from daemon.training.config import TrainConfig
from daemon.training.data import load_dataset
from daemon.training.dataset import build
from daemon.training.teacher import QuantileNormal, Standardizer, collapse, fit_teacher, log_loss

DATA = Path(__file__).resolve().parent.parent / "data"


def test_quantile_transform_is_monotone_and_gaussian():
    """Each column maps monotonically to roughly N(0, 1) on its training rows; NaN maps to 0."""
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.lognormal(size=5000), rng.standard_t(2, size=5000)])
    x[7, 0] = np.nan
    q = QuantileNormal.fit(x)
    z = q(x, dtype=np.float64)
    assert z[7, 0] == 0.0
    for j in range(2):
        ok = np.isfinite(x[:, j])
        order = np.argsort(x[ok, j])
        assert np.all(np.diff(z[ok, j][order]) >= 0)
        assert abs(z[ok, j].mean()) < 0.02 and abs(z[ok, j].std() - 1) < 0.03


def test_standardizer_ignores_nan_and_clips():
    """Means and deviations come from finite values; NaN becomes 0 and outliers stop at the clip."""
    x = np.array([[1.0, np.nan], [3.0, 2.0], [5.0, 4.0], [1e9, 6.0]])
    s = Standardizer.fit(x, clip=3.0)
    z = s(x, dtype=np.float64)
    assert z[0, 1] == 0.0 and z[3, 0] <= 3.0
    assert s.mean[1] == 4.0


def test_collapse_sums_buckets_into_classes():
    """Bucket probabilities add up into their sell/hold/buy classes."""
    p = np.array([[0.1, 0.2, 0.4, 0.2, 0.1]])
    out = collapse(p, np.array([0, 0, 1, 2, 2]))
    np.testing.assert_allclose(out, [[0.3, 0.4, 0.3]])


def test_ensemble_on_samples_beats_a_constant_guess():
    """A small ensemble (MLP + LightGBM, finer targets) gives valid probabilities that beat the uniform guess."""
    cfg = TrainConfig(teacher_hidden=((32, 16),), teacher_epochs=2, lgbm_rounds=30, lgbm_min_leaf=100,
                      teacher_buckets=(2.0,), num_threads=1, progress=False)
    P = build(load_dataset([DATA], interval="5"), cfg)
    idx = np.flatnonzero(P.valid)
    cut = int(len(idx) * 0.7)
    fit, val = idx[:cut:2], idx[1:cut:2]
    t = fit_teacher(P.x_teacher[fit], P.target[fit], P.x_teacher[val], P.target[val], P.y[val], P.to_class, cfg, seed=0)
    p, members = t.predict(P.x_teacher[val])
    assert set(members) == {"mlp0", "lgbm"}
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(p, 0.7 * members["lgbm"] + 0.3 * members["mlp0"], atol=1e-12)
    assert log_loss(p, P.y[val]) < np.log(3)
