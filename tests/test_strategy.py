"""Strategy distillation: the hindsight-optimal position path and a small end-to-end run."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from daemon.core.artifact import load_artifact
from daemon.training import evaluate as ev
from daemon.training import train
from daemon.training.config import TrainConfig
from daemon.training.methods import is_row
from daemon.training.strategy import (
    POSITIONS,
    fidelity,
    fidelity_intervals,
    oracle_by_block,
    oracle_values,
    soften,
    train_strategy,
    trend_positions,
    trend_soft,
)
from tests.support import DATA, TINY_TRAIN, pooled_samples


def _pnl(path, r, cost):
    prev = np.concatenate([[0], path[:-1]])
    return float((path * r).sum() - (cost * np.abs(path - prev)).sum() - cost[-1] * abs(path[-1]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oracle_path_is_the_best_of_every_path(seed):
    """On short random series the DP's path earns exactly the best P&L of all 3^n position paths."""
    rng = np.random.default_rng(seed)
    n = 7
    r = rng.normal(0, 1e-3, n)
    cost = np.full(n, 6e-4)
    path, q = oracle_values(r, cost)
    best = max(_pnl(np.array(p), r, cost) for p in itertools.product(POSITIONS, repeat=n))
    assert _pnl(path, r, cost) == pytest.approx(best, abs=1e-15)
    assert q[0].max() == pytest.approx(best, abs=1e-15)  # Q at the start is the path's whole value


def test_oracle_stays_flat_when_costs_exceed_every_move():
    """A round trip dearer than any move: the oracle never trades, and its soft target prefers flat."""
    r = np.array([1e-4, -2e-4, 1.5e-4, -1e-4])
    path, q = oracle_values(r, np.full(4, 1e-3))
    assert (path == 0).all()
    assert (np.argmax(soften(q, 1e-4), axis=1) == 1).all()


@pytest.fixture(scope="module")
def pooled():
    """The committed 5m samples pooled with the teacher's extra inputs (the trend rule reads them)."""
    return pooled_samples(TINY_TRAIN), TINY_TRAIN


def test_soft_trend_rule_hardens_into_the_rule(pooled):
    """As the softening scale shrinks, the soft trend rule's most probable position is the hard rule's."""
    P, cfg = pooled
    hard = trend_positions(P, cfg)
    p = trend_soft(P, cfg.replace(trend_soft_scale=1e-6), P.valid)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    col = {n: i for i, n in enumerate(P.teacher_names)}
    rows = P.valid & (P.x_teacher[:, col["ret_60"]] != 0) & (P.x_teacher[:, col["ret_240"]] != 0)  # no ties
    np.testing.assert_array_equal(np.argmax(p[rows], axis=1), hard[rows])
    wide = trend_soft(P, cfg.replace(trend_soft_scale=1.0), P.valid)
    assert wide[rows].max(axis=1).mean() < p[rows].max(axis=1).mean()  # softer targets are less sure


def test_oracle_targets_of_a_block_ignore_later_prices(pooled):
    """The oracle DP runs per block: changing prices in a later block leaves an earlier block's targets as they were."""
    P, cfg = pooled
    t = P.start_ms
    mid = int(np.median(t[P.valid]))
    early, late = P.valid & (t < mid), P.valid & (t >= mid)
    ticks = {s: 0.01 for s in P.symbols}
    y1, p1 = oracle_by_block(P, [early, late], ticks, cfg)
    rng = np.random.default_rng(0)
    shaken = dataclasses.replace(P, open=np.where(t >= mid, P.open * np.exp(rng.normal(0, 0.01, len(P))), P.open))
    y2, p2 = oracle_by_block(shaken, [early, late], ticks, cfg)
    np.testing.assert_array_equal(y1[early], y2[early])
    np.testing.assert_array_equal(p1[early], p2[early])
    assert (y1[late] != y2[late]).any() and (y1[~P.valid] == -1).all()


def test_fidelity_intervals_agree_with_the_point_measures():
    """One seed: the interval's centre is Cohen's kappa and the non-flat agreement; identical students differ by 0."""
    rng = np.random.default_rng(2)
    teacher = rng.integers(0, 3, 600)
    student = np.where(rng.random(600) < 0.6, teacher, rng.integers(0, 3, 600))
    blocks = np.repeat(np.arange(20), 30)
    got = fidelity_intervals([student], [student], teacher, blocks, 300)
    point = fidelity(student, teacher)
    assert got["kappa"]["distilled"]["mean"] == pytest.approx(ev.cohen_kappa(student, teacher))
    assert got["agreement_non_flat"]["control"]["mean"] == pytest.approx(point["agreement_non_flat"])
    lo, hi = got["kappa"]["distilled"]["ci95"]
    assert lo < point["kappa"] < hi
    assert got["kappa"]["distilled_minus_control"] == {"mean": 0.0, "ci95": [0.0, 0.0], "blocks": 20}


@pytest.mark.slow
def test_train_strategy_end_to_end(tmp_path):
    """`train_strategy` on the sample data: a classes artifact, both teachers judged with intervals, table rows."""
    cfg = TrainConfig(progress=False, lockbox_days=3, student_epochs=2, embargo_bars=3, n_folds=3, seeds=(0, 1),
                      sweep_alphas=(0.0, 0.5), control_lrs=(0.005, 0.01), control_weight_decays=(0.0,),
                      bootstrap_samples=200, num_threads=1)
    doc = train_strategy([str(DATA)], tmp_path / "s.npz", cfg, train, interval="5")
    art = load_artifact(tmp_path / "s.npz")
    assert art.head == "classes" and set(art.manifest["policy"]["cases"]) == {"taker", "maker"}
    assert doc["shipped"]["same_as_lockbox_model"] is True
    for name in ("oracle", "trend"):
        sec = doc["methods"]["strategy"][name]
        assert sec["development"]["alpha"] in (0.0, 0.5) and sec["development"]["control_lr"] in (0.005, 0.01)
        lb = sec["lockbox"]
        assert lb["delta_vs_control"]["blocks"] >= 2 and len(lb["per_seed"]["distilled"]) == 2
        assert -1 <= lb["fidelity"]["kappa"]["distilled"]["mean"] <= 1
        assert {"distilled", "control", "distilled_argmax", "strategy"} <= set(lb["trading"])
        row = doc["methods"][f"strategy_{name}"]["lockbox"]
        assert is_row(row) and row["seeds"] == 2 and row["loss"] == pytest.approx(lb["distilled"]["log_loss"], abs=1e-6)
    assert doc["methods"]["strategy"]["oracle"]["lockbox"]["trading"]["strategy"]["taker"]["net_return"] > 0
    assert (tmp_path / "s_report.md").read_text().startswith("# Strategy distillation")
    assert "| strategy_trend |" in (tmp_path / "methods.md").read_text()
