"""Out-of-fold soft targets, the [train] config table, and a small end-to-end ``kdsignal train`` on data/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from daemon.cli import main as cli_main
from daemon.core.config import parse_config
from daemon.core.model import Model
from daemon.training import train as pipeline
from daemon.training.config import TrainConfig, load_train_config
from daemon.training.data import load_dataset
from daemon.training.dataset import build
from daemon.training.folds import walk_forward

DATA = Path(__file__).resolve().parent.parent / "data"
TINY = TrainConfig(
    n_folds=2, teacher_hidden=((16, 8),), teacher_epochs=2, lgbm_rounds=20, lgbm_min_leaf=50,
    student_epochs=3, seeds=(0, 1), progress=False, num_threads=1, sweep_temperatures=(1.0, 2.0), sweep_alphas=(0.5,),
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
    real = pipeline.fit_teacher

    def spy(x_fit, t_fit, x_val, *args, **kwargs):
        seen.append(np.array([keys[r.tobytes()] for r in np.concatenate([x_fit, x_val])]))
        return real(x_fit, t_fit, x_val, *args, **kwargs)

    monkeypatch.setattr(pipeline, "fit_teacher", spy)
    _, folds = walk_forward(P.start_ms, P.valid, TINY.n_folds, P.interval_ms, TINY.horizon_bars, TINY.embargo_bars)
    p_t, members, _ = pipeline.fit_teachers(P, TINY, folds, seed=0)
    reach = (TINY.horizon_bars + TINY.embargo_bars) * P.interval_ms
    assert len(seen) == len(folds)
    # blocks are fitted largest training set first
    for used, f in zip(seen, sorted(folds, key=lambda f: -int(f.train.sum()))):
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
    p.write_text('[feed]\nsymbols = ["BTCUSDT"]\n\n[train]\ntemperature = 3\nalpha = 0.25\nteacher_hidden = [[64, 32]]\nseeds = [4, 5]\n')
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
    """config.toml's [train] table spells out exactly the defaults the shipped model was trained with."""
    assert load_train_config(DATA.parent / "config.toml") == TrainConfig()


@pytest.mark.slow
def test_train_end_to_end_on_samples(tmp_path, capsys):
    """``kdsignal train`` on the samples writes a loadable interval-5 artifact, report.json/md and plots."""
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
    assert model.manifest["labels"]["horizon_bars"] == TINY.horizon_bars
    rep = json.loads((out.parent / "report.json").read_text())
    s = rep["summary"]
    for kind in ("teacher", "student", "control"):
        assert 0 < s[kind]["log_loss"] < 2 and 0 < s[kind]["accuracy"] <= 1
    assert 0 < s["baseline"]["log_loss"] < 2
    assert 0 <= s["student"]["agreement"] <= 1
    assert len(rep["folds"]) == TINY.n_folds
    assert rep["model_id"] == model.id
    assert len(rep["sweep"]["grid"]) == 2
    assert [a["name"] for a in rep["ablations"]] == ["default", "recency_weighting", "label_band_vol_100"]
    md = (out.parent / "report.md").read_text()
    assert "Headline" in md and model.id in md
    for png in ("folds.png", "reliability.png", "sweep.png"):
        assert (out.parent / png).stat().st_size > 1000
    printed = json.loads(capsys.readouterr().out)
    assert printed["model_id"] == model.id


def test_train_reports_missing_data_clearly(tmp_path, capsys):
    """A path that does not exist is named and the command fails with status 2."""
    rc = cli_main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "m.npz"), "--no-progress"])
    assert rc == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.slow
def test_parallel_workers_give_the_sequential_results(pooled):
    """Teachers and students fitted in two forked workers equal the in-process results."""
    P = pooled
    _, folds = walk_forward(P.start_ms, P.valid, TINY.n_folds, P.interval_ms, TINY.horizon_bars, TINY.embargo_bars)
    cfg1 = TINY.replace(seeds=(0,))
    cfg2 = cfg1.replace(num_threads=2)
    p1, m1, _ = pipeline.fit_teachers(P, cfg1, folds, seed=0)
    p2, m2, _ = pipeline.fit_teachers(P, cfg2, folds, seed=0)
    np.testing.assert_allclose(p1, p2, rtol=1e-6, atol=1e-9)
    r1 = pipeline.run_folds(P, cfg1, folds, p1, False)
    r2 = pipeline.run_folds(P, cfg2, folds, p1, False)
    for a, b in zip(r1, r2):
        assert a["fold"].index == b["fold"].index
        np.testing.assert_allclose(a["student"][0], b["student"][0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a["control"][0], b["control"][0], rtol=1e-9, atol=1e-12)
