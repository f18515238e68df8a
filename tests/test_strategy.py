"""Strategy distillation: the hindsight-optimal position path and a small end-to-end run."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from daemon.core.artifact import load_artifact
from daemon.training.config import TrainConfig
from daemon.training.strategy import POSITIONS, oracle_values, soften, train_strategy
from tests.support import DATA


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


@pytest.mark.slow
def test_train_strategy_end_to_end(tmp_path):
    """`train_strategy` on the sample data writes a classes artifact and fidelity plus read-out for each student."""
    cfg = TrainConfig(progress=False, lockbox_days=3, student_epochs=2, embargo_bars=3)
    doc = train_strategy([str(DATA)], tmp_path / "s.npz", cfg, interval="5")
    assert load_artifact(tmp_path / "s.npz").head == "classes"
    res = doc["methods"]["strategy"]["lockbox"]
    for name in ("oracle_distilled", "oracle_control", "trend_imitator"):
        assert -1 <= res[name]["fidelity"]["kappa"] <= 1 and "net_return" in res[name]["trading"]["taker"]
    assert res["oracle_strategy"]["trading"]["taker"]["net_return"] > 0  # hindsight pays after costs
    assert (tmp_path / "s_report.md").read_text().startswith("# Strategy distillation")
