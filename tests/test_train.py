"""Out-of-fold soft targets, the [train] config table, and a small end-to-end ``kdsignal train`` on data/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from daemon.cli import main as cli_main
from daemon.core.config import parse_config
from daemon.core.model import Model
from daemon.training import train
from daemon.training.config import TrainConfig, load_train_config
from daemon.training.data import load_dataset
from daemon.training.dataset import build
from daemon.training.folds import lockbox_split, walk_forward
from daemon.training.teacher_store import load_teacher
from tests.support import TINY_TRAIN, pooled_samples

DATA = Path(__file__).resolve().parent.parent / "data"
TINY = TrainConfig(
    n_folds=2, teacher_hidden=((16, 8),), teacher_epochs=2, lgbm_rounds=20, lgbm_min_leaf=50,
    student_epochs=3, seeds=(0, 1), progress=False, num_threads=1, sweep_temperatures=(1.0, 2.0), sweep_alphas=(0.5,),
    control_lrs=(0.005, 0.01), control_weight_decays=(0.0,), lockbox_days=3, bootstrap_samples=200,
    ablations=("recency_weighting", "label_band_vol_100"),
)


@pytest.fixture(scope="module")
def pooled():
    """The five 5m samples pooled with the tiny config."""
    return build(load_dataset([DATA], interval="5"), TINY)


@pytest.mark.slow
def test_soft_targets_are_out_of_fold(pooled, monkeypatch):
    """No teacher labels a row it was fitted or validated on, and every fitted row precedes the block (purged)."""
    P = pooled
    keys = {P.x_teacher[i].tobytes(): i for i in range(len(P))}
    assert len(keys) == len(P)
    seen: list[np.ndarray] = []
    real = train.fit_teacher

    def spy(x_fit, t_fit, x_val, *args, **kwargs):
        seen.append(np.array([keys[r.tobytes()] for r in np.concatenate([x_fit, x_val])]))
        return real(x_fit, t_fit, x_val, *args, **kwargs)

    monkeypatch.setattr(train, "fit_teacher", spy)
    _, folds = walk_forward(P.start_ms, P.valid, TINY.n_folds, P.interval_ms, TINY.horizon_bars, TINY.embargo_bars)
    p_t, members, _ = train.fit_teachers(P, TINY, folds, seed=0)
    reach = (TINY.horizon_bars + TINY.embargo_bars) * P.interval_ms
    assert len(seen) == len(folds)
    # blocks are fitted largest training set first
    for used, f in zip(seen, sorted(folds, key=lambda f: -int(f.train.sum())), strict=True):
        labelled = np.flatnonzero(f.test)
        assert not np.intersect1d(used, labelled).size
        assert P.start_ms[used].max() + reach < P.start_ms[labelled].min()
        assert np.all(np.isfinite(p_t[labelled]))
    first = P.valid & (P.start_ms < folds[0].test_lo_ms)
    assert np.all(np.isnan(p_t[first]))
    np.testing.assert_allclose(p_t[P.valid & ~first].sum(axis=1), 1.0, atol=1e-9)
    assert set(members) == {"mlp0", "lgbm"}


def test_train_table_parses_and_rejects_unknown_keys(tmp_path):
    """A [train] table sets knobs, the daemon's parser accepts the same file, and a typo is named."""
    p = tmp_path / "config.toml"
    p.write_text('[feed]\nsymbols = ["BTCUSDT"]\n\n[train]\ntemperature = 3\nalpha = 0.25\n'
                 'teacher_hidden = [[64, 32]]\nseeds = [4, 5]\n')
    cfg = load_train_config(p)
    assert (cfg.temperature, cfg.alpha, cfg.teacher_hidden, cfg.seeds) == (3.0, 0.25, ((64, 32),), (4, 5))
    import tomllib

    parse_config(tomllib.loads(p.read_text()))
    p.write_text("[train]\ntemprature = 3\n")
    with pytest.raises(ValueError, match="temprature"):
        load_train_config(p)
    p.write_text("[train]\nalpha = 2.0\n")
    with pytest.raises(ValueError, match="alpha"):
        load_train_config(p)


def test_repo_config_train_table_is_the_default():
    """config.toml's [train] table spells out every knob, with exactly the defaults the shipped model was trained
    with."""
    import tomllib

    table = tomllib.loads((DATA.parent / "config.toml").read_text())["train"]
    assert set(table) == set(TrainConfig().to_dict())
    assert load_train_config(DATA.parent / "config.toml") == TrainConfig()


@pytest.mark.slow
@pytest.mark.timeout(300)  # a whole (tiny) run, also the 32-16 student and the teacher folder: slow on a busy box
def test_train_end_to_end_on_samples(tmp_path, capsys):
    """``kdsignal train`` on the samples writes a loadable artifact with its policy and ranges, the report's
    contract keys, and plots."""
    cfgfile = tmp_path / "config.toml"
    table = TINY.to_dict()
    lines = ["[train]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    cfgfile.write_text("\n".join(lines) + "\n")
    out = tmp_path / "models" / "default.npz"
    rc = cli_main(["train", "--data", str(DATA), "--interval", "5", "--out", str(out), "--config", str(cfgfile),
                   "--sweep", "--no-progress"])
    assert rc == 0
    model = Model.load(out)
    assert model.interval == "5"
    man = model.manifest
    assert man["labels"]["horizon_bars"] == TINY.horizon_bars
    assert set(man["policy"]["cases"]) == {"taker", "maker"}
    lock, fit = man["data"]["lockbox"], man["data"]["fit"]
    assert lock["days"] == 3 and fit["hi_ms"] >= lock["lo_ms"] and man["data"]["end_ms"] == fit["hi_ms"]
    assert man["data"]["early_stopping"]["hi_ms"] < lock["lo_ms"]
    rep = json.loads((out.parent / "report.json").read_text())
    lk = rep["summary"]["lockbox"]
    for kind in ("baseline", "teacher", "student", "control"):
        assert 0 < lk[kind]["log_loss"] < 2
    d = lk["delta_vs_control"]
    assert d["ci95"][0] <= d["mean"] <= d["ci95"][1] and d["blocks"] == 4
    assert isinstance(lk["gap_recovered"], float)
    for key in ("kappa_vs_teacher", "direction_auc", "ic"):
        assert lk["student"][key] is None or -1 <= lk["student"][key] <= 1
    for model_name in ("teacher", "student", "control", "always_flat", "buy_and_hold"):
        for case in ("taker", "maker"):
            m = lk["trading"][model_name][case]
            assert {"net_return", "sharpe", "max_drawdown", "trades", "break_even_fee_bp"} <= set(m)
    assert lk["trading"]["always_flat"]["taker"]["net_return"] == 0
    assert len(rep["choices"]["sweep"]) == 2
    assert [a["name"] for a in rep["ablations"]] == ["recency_weighting", "label_band_vol_100"]
    assert rep["ablations"][1]["verdict"].startswith("other labels")
    md = (out.parent / "report.md").read_text()
    assert "Verdict (lockbox)" in md and model.id in md
    row = rep["methods"]["classes"]["lockbox"]  # this run's row of the methods table, appended to report.md
    assert row["loss"] == pytest.approx(lk["student"]["log_loss"]) and "| classes | log_loss |" in md
    for png in ("reliability.png", "equity.png", "intervals.png", "sweep.png"):
        assert (out.parent / png).stat().st_size > 1000
    printed = json.loads(capsys.readouterr().out)
    assert printed["model_id"] == model.id
    # beside the artifact: the 32-16 student, judged by paired intervals, and the teacher that labelled the lockbox
    alt = Model.load(out.parent / "student_32_16.npz")
    assert alt.manifest["student"]["sizes"] == [len(model.manifest["features"]["names"]), 32, 16, 3]
    assert alt.manifest["variant"]["beside"] == model.id and "policy" not in alt.manifest
    assert "student_32_16" in lk["deltas_vs_student"] and rep["alt_student"]["lockbox"]["verdict"]
    assert "Student size: the artifact is 16-8" in md
    stored = load_teacher(out.parent / "teacher")
    assert stored.manifest["model_id"] == model.id and rep["teacher_store"]["identical_to_run"]
    assert stored.manifest["inputs"]["count"] == rep["teacher_inputs"]["columns"]
    assert stored.manifest["data"]["fit"]["hi_ms"] < lock["lo_ms"]


def test_train_reports_missing_data_clearly(tmp_path, capsys):
    """A path that does not exist is named and the command fails with status 2."""
    rc = cli_main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "m.npz"), "--no-progress"])
    assert rc == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.slow
def test_parallel_workers_give_the_sequential_results(pooled):
    """Teachers and students fitted in two forked workers equal the in-process results."""
    P = pooled
    _, _, folds = train.layout(P, TINY)
    cfg1 = TINY.replace(seeds=(0,))
    cfg2 = cfg1.replace(num_threads=2)
    p1, _, _ = train.fit_teachers(P, cfg1, folds, seed=0)
    p2, _, _ = train.fit_teachers(P, cfg2, folds, seed=0)
    np.testing.assert_allclose(p1, p2, rtol=1e-9, atol=1e-12)
    variants = (train.distilled(cfg1, 2.0, 0.5), train.control(cfg1))
    jobs = [(k, 0, v) for k in range(1, len(folds)) for v in variants]
    r1 = train.run_jobs(P, cfg1, folds, p1, jobs, {}, "students")
    r2 = train.run_jobs(P, cfg2, folds, p1, jobs, {}, "students")
    for job in jobs:
        np.testing.assert_allclose(r1[job][0], r2[job][0], rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def lockbox_pooled():
    """The five 5m samples pooled with the lockbox tests' tiny config."""
    return pooled_samples()


def _choices(P):
    s, _, folds = train.layout(P, TINY_TRAIN)
    p_t, _, _ = train.fit_teachers(P, TINY_TRAIN, folds, seed=0)
    cache: dict = {}
    ch = train.develop(P, TINY_TRAIN, folds, p_t, cache, {})
    ks = list(range(1, len(folds) - 1))
    models = train.models_on(P, TINY_TRAIN, folds, ks, p_t, cache, train.model_variants(TINY_TRAIN, ch))
    idx = np.concatenate([np.flatnonzero(folds[k].test) for k in ks])
    e = np.full(len(P), np.nan)
    e[idx] = models["student"][0][:, 2] - models["student"][0][:, 0]
    region = (P.start_ms >= folds[1].test_lo_ms) & (P.start_ms < s.dev_end_ms)
    pol = train.choose_policies(P, region, {"student": e}, train.development_ticks(P, s), TINY_TRAIN, 105_192.0)
    return ch, pol, p_t[s.dev]


def test_perturbing_the_lockbox_changes_no_choice(lockbox_pooled):
    """Scrambled lockbox labels, targets and prices leave T, alpha, the control's lr/wd, the policy and every
    development soft target unchanged."""
    P = lockbox_pooled
    ch1, pol1, pt1 = _choices(P)
    s = lockbox_split(P.start_ms, P.valid, TINY_TRAIN.lockbox_days, P.interval_ms, TINY_TRAIN.horizon_bars,
                      TINY_TRAIN.embargo_bars)
    lock = P.start_ms >= s.lockbox_lo_ms
    rng = np.random.default_rng(9)
    P2 = build(load_dataset([DATA], interval="5"), TINY_TRAIN)
    P2.y[lock & P2.valid] = rng.integers(0, 3, int((lock & P2.valid).sum()))
    P2.target[:] = P2.y
    P2.fwd[lock] = rng.normal(0, 1, int(lock.sum()))
    P2.open[lock] = P2.open[lock] * np.exp(rng.normal(0, 0.01, int(lock.sum())))
    ch2, pol2, pt2 = _choices(P2)
    assert ch1 == ch2
    assert pol1 == pol2
    np.testing.assert_array_equal(pt1, pt2)
