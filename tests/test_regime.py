"""Regimes from the student's features, the per-regime loss, the variant choice on development folds, and the
regime section of a ``kdsignal train`` run on the samples."""

from __future__ import annotations

import functools
import json
from types import SimpleNamespace

import numpy as np
import pytest

from daemon.cli import main as cli_main
from daemon.core.model import Model
from daemon.training import regime, train
from daemon.training.config import TrainConfig
from daemon.training.data import load_dataset
from daemon.training.dataset import build
from daemon.training.folds import lockbox_split
from kernels.layout import FEATURE_NAMES
from tests.naive import regime_reference
from tests.support import DATA, TINY_TRAIN, pooled_samples

VOL, TREND = FEATURE_NAMES.index("rvol_100"), FEATURE_NAMES.index("ret_20")
METHOD_KEYS = {"loss", "control_loss", "teacher_loss", "ic", "direction_auc", "gap_recovered", "delta", "verdict",
               "trading", "n", "seeds"}  # of the methods table's row schema (daemon.training.methods)


@pytest.fixture(scope="module")
def P():
    """The five 5m samples pooled with the tiny training config."""
    return pooled_samples()


def test_regimes_follow_their_definition(P):
    """Every row's regime equals the one-bar reference, NaN rows included."""
    x = P.x_student.copy()
    x[:50, VOL] = np.nan
    x[50:100, TREND] = np.nan
    reg = regime.fit_regimes(x, P.valid)
    got = reg.assign(x)
    want = [regime_reference(x[i, VOL], x[i, TREND], reg.vol_edges) for i in range(len(x))]
    assert np.array_equal(got, want)
    assert set(np.unique(got[P.valid])) == set(range(regime.N_REGIMES))


def test_thresholds_come_from_training_rows_only(P):
    """Tercile edges split the training rows in thirds and ignore every other row's value."""
    train_rows = P.valid & (P.start_ms < np.median(P.start_ms))
    reg = regime.fit_regimes(P.x_student, train_rows)
    x2 = P.x_student.copy()
    x2[~train_rows, VOL] = np.random.default_rng(0).uniform(0, 1, int((~train_rows).sum()))
    assert regime.fit_regimes(x2, train_rows) == reg
    tercile = reg.assign(P.x_student[train_rows]) // 2
    np.testing.assert_allclose(np.bincount(tercile, minlength=3) / train_rows.sum(), 1 / 3, atol=0.01)
    with pytest.raises(ValueError, match="rvol_100"):
        regime.fit_regimes(np.full((5, len(FEATURE_NAMES)), np.nan), np.ones(5, dtype=bool))


def test_per_regime_params_pick_each_regimes_best():
    """Each regime takes the (T, alpha) with the lowest log loss on its own rows; an empty regime the default."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 600)
    r = np.repeat([0, 1, 2], 200)  # regimes 3..5 have no rows
    good = np.full((600, 3), 0.1)
    good[np.arange(600), y] = 0.8
    flat = np.full((600, 3), 1 / 3)
    a = np.where((r == 1)[:, None], good, flat)  # best on regime 1 only
    b = np.where((r == 1)[:, None], flat, good)  # best everywhere else
    got = regime.choose_params({(1.0, 0.5): a, (4.0, 0.25): b}, y, r, default=(2.0, 0.5))
    assert got == ((4.0, 0.25), (1.0, 0.5), (4.0, 0.25), (2.0, 0.5), (2.0, 0.5), (2.0, 0.5))


def test_the_simplest_supported_variant_is_chosen():
    """Only a development interval of log loss(variant) - log loss(student) wholly below zero supports a variant;
    of several, the simplest is chosen."""
    yes = {"mean": -0.01, "ci95": [-0.02, -0.001]}
    no = {"mean": -0.01, "ci95": [-0.02, 0.001]}
    assert regime.choose_variant({"temperature": no, "input": no, "router": no}) == "none"
    assert regime.choose_variant({"temperature": no, "input": yes, "router": yes}) == "input"
    assert regime.choose_variant({"router": yes}) == "router"
    assert regime.choose_variant({}) == "none"


def test_router_trains_each_regime_on_its_own_rows(P):
    """A router's prediction for a regime's rows comes from a student fitted on that regime's rows only."""
    cfg = TINY_TRAIN.replace(seeds=(0,))
    _, _, folds = train.layout(P, cfg)
    f = folds[-1]
    fit = f.train & P.valid
    val = np.zeros(len(P), dtype=bool)
    val[np.flatnonzero(fit)[-300:]] = True
    fit &= ~val
    p_fit = np.full((int(fit.sum()), 3), 1 / 3)
    w = np.ones(int(fit.sum()))
    v = train.distilled(cfg, 2.0, 0.5, regime="router")
    p, info = regime.fit_variant(v, P, f, fit, val, p_fit, w, cfg, 0)
    assert p.shape == (int(f.test.sum()), 3) and np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    r = regime.fold_regimes(P, f)
    g = int(np.bincount(r[f.test]).argmax())
    assert regime.NAMES[g] not in info["fallback_regimes"]
    mf, mv = r[fit] == g, r[val] == g
    s = regime.train_student(P.x_student[fit][mf], P.y[fit][mf], p_fit[mf], w[mf], P.x_student[val][mv],
                             P.y[val][mv], cfg, 0, temperature=2.0, alpha=0.5, hidden=None, lr=v.lr,
                             weight_decay=v.weight_decay)
    rows = r[f.test] == g
    np.testing.assert_array_equal(p[rows], s.predict_proba(P.x_student[f.test][rows]))
    with pytest.raises(ValueError, match="unknown regime variant"):
        regime.fit_variant(train.distilled(cfg, 2.0, 0.5, regime="bogus"), P, f, fit, val, p_fit, w, cfg, 0)


def test_config_refuses_regimes_it_cannot_serve(tmp_path, capsys):
    """``regime = "input"``, a regime not evaluated and unknown variants are refused by name; the CLI exits 2 with
    the message."""
    with pytest.raises(ValueError, match="input"):
        TrainConfig(regime="input")
    with pytest.raises(ValueError, match="regime"):
        TrainConfig(regime="sideways")
    with pytest.raises(ValueError, match="not in regime_variants"):
        TrainConfig(regime="router", regime_variants=("temperature",))
    with pytest.raises(ValueError, match="regime_variants"):
        TrainConfig.from_mapping({"regime_variants": ["temperature", "weather"]})
    assert TrainConfig.from_mapping({"regime": "router", "regime_variants": ["router"]}).regime == "router"
    rc = cli_main(["train", "--regime", "input", "--data", str(DATA), "--out", str(tmp_path / "m.npz"),
                   "--no-progress"])
    assert rc == 2 and "regime = 'input' cannot ship" in capsys.readouterr().err


def _regime_choices(P, cfg):
    _, _, folds = train.layout(P, cfg)
    p_t, _, _ = train.fit_teachers(P, cfg, folds, seed=0)
    cache: dict = {}
    ch = train.develop(P, cfg, folds, p_t, cache, {})
    ks = list(range(1, len(folds) - 1))
    dev_models = train.models_on(P, cfg, folds, ks, p_t, cache, train.model_variants(cfg, ch))
    run = SimpleNamespace(variant=functools.partial(train.distilled, cfg), trade=train.trading_readout,
                          predict=functools.partial(train.predict, P, cfg, folds, p_t, cache))
    return regime.develop(P, cfg, folds, ch, dev_models, run)


@pytest.mark.slow
def test_perturbing_the_lockbox_changes_no_regime_choice(P):
    """Scrambled lockbox labels and prices leave the per-regime T/alpha, the development intervals and the choice
    unchanged."""
    cfg = TINY_TRAIN.replace(regime_variants=("temperature", "router"))
    d1 = _regime_choices(P, cfg)
    s = lockbox_split(P.start_ms, P.valid, cfg.lockbox_days, P.interval_ms, cfg.horizon_bars, cfg.embargo_bars)
    P2 = build(load_dataset([DATA], interval="5"), cfg)
    lock = P2.start_ms >= s.lockbox_lo_ms
    rng = np.random.default_rng(4)
    P2.y[lock & P2.valid] = rng.integers(0, 3, int((lock & P2.valid).sum()))
    P2.target[:] = P2.y
    P2.x_student[lock, VOL] *= rng.uniform(0.5, 2.0, int(lock.sum()))
    d2 = _regime_choices(P2, cfg)
    assert d1["params"] == d2["params"] and d1["choice"] == d2["choice"]
    assert d1["delta_vs_student"] == d2["delta_vs_student"]
    n = len(d1["_dev_idx"])
    assert d1["per_regime"]["all"]["rows"] == n == sum(d1["per_regime"][g]["rows"] for g in regime.NAMES)
    assert all(len(ps) == len(cfg.seeds) for ps in d1["_dev_preds"].values())


@pytest.mark.slow
def test_train_reports_regimes_and_ships_the_temperature_variant(tmp_path, capsys):
    """A run with ``--regime temperature`` writes per-regime read-outs, the methods row, and an artifact that
    carries its thresholds and per-regime T/alpha and serves like any student."""
    cfgfile = tmp_path / "config.toml"
    cfgfile.write_text("[train]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in TINY_TRAIN.to_dict().items()))
    out = tmp_path / "m.npz"
    rc = cli_main(["train", "--regime", "temperature", "--data", str(DATA), "--interval", "5", "--out", str(out),
                   "--config", str(cfgfile), "--no-progress"])
    assert rc == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    part = rep["regime"]
    assert part["shipped"] == "temperature" and part["choice_on_development"] in ("none", *regime.VARIANTS)
    lock = part["lockbox"]["per_regime"]
    assert set(lock) == {*regime.NAMES, "all"}
    assert sum(lock[n]["rows"] for n in regime.NAMES) == lock["all"]["rows"] == rep["summary"]["lockbox"]["rows"]
    for name in ("control", *regime.VARIANTS):
        d = lock["all"][name]["delta_vs_student"]
        assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
        # supported on the lockbox exactly when the variant's log loss is lower over the whole interval
        if name != "control":
            assert part["lockbox"]["supports"][name] == (d["ci95"][1] < 0)
    # the per-regime student row is the lockbox student's own score restricted to that regime
    assert lock["all"]["student"]["log_loss"] == pytest.approx(rep["summary"]["lockbox"]["student"]["log_loss"])
    row = rep["methods"]["regime"]["lockbox"]
    assert row["method"] == "regime" and rep["methods"]["regime"]["variant"].startswith("regime_")
    assert set(row) >= METHOD_KEYS
    lo, hi = row["gap_recovered"]["ci95"]
    assert lo <= row["gap_recovered"]["mean"] <= hi
    printed = json.loads(capsys.readouterr().out)["regime"]
    assert printed == {k: part[k] for k in ("choice_on_development", "recommended", "shipped")}
    man = Model.load(out).manifest["distillation"]["regime"]
    assert man["variant"] == "temperature" and len(man["vol_edges"]) == 2
    assert set(man["temperature_alpha"]) == set(regime.NAMES)


@pytest.mark.slow
def test_train_ships_a_router_served_by_the_step_kernel(tmp_path):
    """``--regime router`` writes a router artifact whose thresholds are the fitted rows' terciles and whose
    compiled step serves each bar with its regime's student."""
    from kernels.features import features_batch
    from kernels.layout import router_size
    from tests.naive import router_reference
    from tests.support import load_csv

    cfg = TINY_TRAIN.replace(seeds=(0,), regime_variants=("router",))
    out = tmp_path / "r.npz"
    doc = train.train([str(DATA)], out, cfg.replace(regime="router"), interval="5")
    assert doc["regime"]["shipped"] == "router"
    model = Model.load(out, kernel="jit")
    assert router_size(model.vector) == regime.N_REGIMES
    edges = model.manifest["router"]["vol_edges"]
    assert edges == model.manifest["distillation"]["regime"]["vol_edges"]
    from daemon.core.artifact import load_artifact
    from kernels.layout import unpack_mlp

    art = load_artifact(out)
    one, f = len(art.mlp) // 6, len(FEATURE_NAMES)
    students = []
    for g in range(6):
        w, b, acts, _ = unpack_mlp(art.mlp[g * one : (g + 1) * one])
        students.append((w, b, acts, art.feature_mean[g * f : (g + 1) * f], art.feature_std[g * f : (g + 1) * f],
                         cfg.feature_clip))
    bars = load_csv(DATA / "ETHUSDT-5m.csv")[:, 1:6]
    feats = features_batch(*bars.T)[200:]
    np.testing.assert_allclose(model.predict_features(feats), router_reference(students, VOL, TREND, edges, feats),
                               rtol=1e-10, atol=1e-14)
