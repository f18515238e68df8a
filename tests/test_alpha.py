"""Alpha distillation: the regression losses' gradients, the target, the teacher and a small end-to-end run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from daemon.core.artifact import load_artifact
from daemon.core.model import Model
from daemon.training import alpha as A
from daemon.training.alpha_loss import gaussian_distil, gaussian_nll, huber, huber_distil
from daemon.training.config import TrainConfig
from daemon.training.data import load_dataset
from daemon.training.dataset import build
from daemon.training.methods import is_row
from kernels.layout import ALPHA_VOL_FEATURE
from tests.support import DATA


def _numeric_grad(f, z, eps=1e-6):
    g = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += eps
        zm[idx] -= eps
        g[idx] = (f(zp) - f(zm)) / (2 * eps)
    return g


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_huber_distil_gradient_matches_finite_differences(alpha):
    """The Huber distillation gradient equals central finite differences, in and beyond the quadratic zone."""
    rng = np.random.default_rng(1)
    n = 40
    z = rng.normal(0, 2, (n, 1))
    y, mu_t, w = rng.normal(0, 2, n), rng.normal(0, 1, n), rng.uniform(0.5, 2, n)
    loss, g = huber_distil(z, y, mu_t, w, alpha, 1.0)
    num = _numeric_grad(lambda zz: huber_distil(zz, y, mu_t, w, alpha, 1.0)[0], z)
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-9)
    ref = (w * (alpha * huber(z[:, 0] - y, 1.0) + (1 - alpha) * huber(z[:, 0] - mu_t, 1.0))).sum() / w.sum()
    assert loss == pytest.approx(ref, rel=1e-12)
    assert (np.abs(z[:, 0] - y) > 1.0).any() and (np.abs(z[:, 0] - y) < 1.0).any()


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_gaussian_distil_gradient_matches_finite_differences(alpha):
    """The Gaussian NLL + KL gradient (mean and log-variance) equals central finite differences."""
    rng = np.random.default_rng(2)
    n = 30
    z = np.column_stack([rng.normal(0, 1, n), rng.normal(0, 1, n)])
    y, mu_t, lv_t, w = rng.normal(0, 1.5, n), rng.normal(0, 0.5, n), rng.normal(0, 0.5, n), rng.uniform(0.5, 2, n)
    _, g = gaussian_distil(z, y, mu_t, lv_t, w, alpha)
    num = _numeric_grad(lambda zz: gaussian_distil(zz, y, mu_t, lv_t, w, alpha)[0], z)
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-9)


def test_gaussian_distil_is_nll_and_kl_by_definition():
    """alpha = 1 is the NLL without its constant; alpha = 0 is the closed-form KL, zero when student == teacher."""
    rng = np.random.default_rng(3)
    n = 50
    mu, lv = rng.normal(0, 1, n), rng.normal(0, 0.7, n)
    y = rng.normal(0, 1, n)
    w = np.ones(n)
    z = np.column_stack([mu, lv])
    nll, _ = gaussian_distil(z, y, mu, lv, w, 1.0)
    assert nll == pytest.approx(float((gaussian_nll(mu, lv, y) - 0.5 * np.log(2 * np.pi)).mean()), rel=1e-12)
    kl_same, g_same = gaussian_distil(z, y, mu, lv, w, 0.0)
    assert kl_same == pytest.approx(0.0, abs=1e-12) and np.abs(g_same).max() < 1e-12
    # KL by numerical integration for one row
    mu_t, lv_t = 0.3, -0.2
    xs = np.linspace(-12, 12, 200_001)
    p = np.exp(-0.5 * (xs - mu_t) ** 2 / np.exp(lv_t)) / np.sqrt(2 * np.pi * np.exp(lv_t))
    q = np.exp(-0.5 * (xs - mu[0]) ** 2 / np.exp(lv[0])) / np.sqrt(2 * np.pi * np.exp(lv[0]))
    kl_num = float(np.sum(p * (np.log(p + 1e-300) - np.log(q + 1e-300))) * (xs[1] - xs[0]))
    kl, _ = gaussian_distil(z[:1], y[:1], np.array([mu_t]), np.array([lv_t]), w[:1], 0.0)
    assert kl == pytest.approx(kl_num, rel=1e-5)


@pytest.fixture(scope="module")
def pooled():
    """The committed sample candles pooled as training sees them (five symbols, two weeks)."""
    cfg = TrainConfig(progress=False, teacher_extra_features=True)
    return build(load_dataset([str(DATA)], interval="5"), cfg), cfg


def test_alpha_target_is_the_forward_return_in_volatility_units(pooled):
    """y = fwd / (rvol_20 * sqrt(h)), clipped, defined only on valid rows with positive volatility."""
    P, cfg = pooled
    y, ok = A.alpha_target(P, cfg)
    unit = P.x_student[:, ALPHA_VOL_FEATURE] * math.sqrt(cfg.horizon_bars)
    assert ok.sum() > 0.9 * P.valid.sum() and not np.isnan(y[ok]).any() and np.isnan(y[~ok]).all()
    inside = ok & (np.abs(P.fwd / unit) < cfg.alpha_target_clip)
    np.testing.assert_allclose(y[inside], P.fwd[inside] / unit[inside], rtol=1e-12)
    assert np.abs(y[ok]).max() <= cfg.alpha_target_clip
    assert 0.5 < np.std(y[ok]) < 2.0  # the unit is the scale of the move


def test_regression_teacher_beats_a_constant_on_held_out_rows(pooled):
    """The regression teacher's Gaussian NLL on later rows is below that of the training rows' mean and variance."""
    P, cfg = pooled
    y, ok = A.alpha_target(P, cfg)
    rows = np.flatnonzero(ok)
    cut = int(len(rows) * 0.7)
    order = rows[np.argsort(P.start_ms[rows], kind="stable")]
    fit, test = order[: cut - 2000], order[cut:]
    val = order[cut - 2000 : cut]
    small = cfg.replace(teacher_hidden=((32, 16),), teacher_epochs=10, teacher_batch=256, lgbm_rounds=60)
    t = A.fit_regression_teacher(P.x_teacher[fit], y[fit], P.x_teacher[val], y[val], small, 0)
    mu, lv = t.predict(P.x_teacher[test])
    assert np.isfinite(mu).all() and np.isfinite(lv).all()
    n = len(test)
    const = gaussian_nll(np.full(n, y[fit].mean()), np.full(n, np.log(y[fit].var())), y[test]).mean()
    assert gaussian_nll(mu, lv, y[test]).mean() < const


@pytest.mark.slow
def test_train_alpha_end_to_end_writes_a_servable_artifact(tmp_path):
    """`train_alpha` on the sample data writes an alpha artifact whose lockbox figures and served alpha_bp agree."""
    cfg = TrainConfig(progress=False, n_folds=3, lockbox_days=3, teacher_hidden=((16,),), teacher_epochs=2,
                      lgbm_rounds=30, alpha_student_epochs=3, alpha_dev_folds=1, alpha_lockbox_seeds=1,
                      sweep_alphas=(0.0, 0.5), bootstrap_samples=200, embargo_bars=3, control_lrs=(0.005, 0.02),
                      control_weight_decays=(0.0,))
    out = tmp_path / "alpha.npz"
    doc = A.train_alpha([str(DATA)], out, cfg, interval="5")
    art = load_artifact(out)
    assert art.head == "alpha" and art.manifest["alpha"]["horizon_bars"] == cfg.horizon_bars
    lb = doc["methods"]["alpha"]["lockbox"]
    assert set(lb["forms"]) == {"huber", "gaussian"}
    scores = doc["methods"]["alpha"]["development"]["scores"]
    for form, d in lb["forms"].items():
        assert d["delta_vs_control"]["blocks"] >= 2 and len(d["delta_vs_control"]["ci95"]) == 2
        # the control's own learning rate, chosen on development folds from its grid
        assert d["control_lr"] in (0.005, 0.02)
        assert {f"{form}_control@lr0.005/wd0", f"{form}_control@lr0.02/wd0"} <= set(scores)
        assert set(d["degenerate"]) == {"distilled", "control"}
        row = doc["methods"][f"alpha_{form}"]["lockbox"]
        assert is_row(row) and row["loss"] == pytest.approx(d["distilled"]["loss"], abs=1e-6) and row["seeds"] == 1
    for name in ("teacher", "huber_distilled", "huber_control", "gaussian_distilled", "gaussian_control",
                 "always_flat", "buy_and_hold"):
        want = {"net_return", "sharpe", "max_drawdown", "trades", "break_even_fee_bp"}
        assert want <= set(lb["trading"][name]["taker"])
    assert json.loads((tmp_path / "alpha_report.json").read_text())["model_id"] == doc["model_id"]
    assert "| teacher |" in (tmp_path / "alpha_report.md").read_text()
    assert "| alpha_gaussian |" in (tmp_path / "methods.md").read_text()
    # the served read-out is the trained model's prediction in basis points
    model = Model(art, kernel="jit")
    P = build(load_dataset([str(DATA)], interval="5"), cfg)
    rows = np.flatnonzero(P.valid)[-50:]
    got = model.predict_features(P.x_student[rows])
    assert np.isfinite(got).all() and got.shape[1] == len(art.manifest["alpha"]["outputs"])


def test_method_is_chosen_by_config_or_flag(tmp_path):
    """`[train] method` selects the alpha method, `--method` overrides it, and an unknown method is refused by name."""
    import argparse

    from daemon.training.train import add_arguments, config_from_args

    toml = tmp_path / "t.toml"
    toml.write_text('[train]\nmethod = "alpha"\n')
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args(["--data", "x", "--config", str(toml)])).method == "alpha"
    args = parser.parse_args(["--data", "x", "--config", str(toml), "--method", "classes"])
    assert config_from_args(args).method == "classes"
    toml.write_text('[train]\nmethod = "quantiles"\n')
    with pytest.raises(ValueError, match="method"):
        config_from_args(parser.parse_args(["--data", "x", "--config", str(toml)]))
