"""Hold-proof measures: kappa, AUC, rank IC, precision and recall by hand; always-hold scores nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from daemon.training import evaluate as ev


def test_kappa_auc_ic_precision_recall_by_hand():
    """Each measure equals a value worked out by hand on a tiny case."""
    a = np.array([0, 0, 1, 1, 2, 2])
    b = np.array([0, 1, 1, 1, 2, 0])
    # po = 4/6, pe = 1/3 * (2 + 3 + 1)/6 = 1/3: kappa = (2/3 - 1/3) / (2/3)
    assert ev.cohen_kappa(a, b) == pytest.approx(0.5)
    assert ev.cohen_kappa(a, a) == pytest.approx(1.0)
    assert ev.auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert ev.auc(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.5)
    assert math.isnan(ev.auc(np.array([0.5, 0.6]), np.array([1, 1])))
    assert ev.rank_ic(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 25, 100])) == pytest.approx(1.0)
    assert ev.rank_ic(np.array([1.0, 2, 3, 4]), np.array([4.0, 3, 2, 1])) == pytest.approx(-1.0)
    p = np.eye(3)[[0, 1, 1, 2]]
    pr = ev.precision_recall(p, np.array([0, 1, 2, 2]))
    assert pr["precision"] == pytest.approx([1.0, 0.5, 1.0])
    assert pr["recall"] == pytest.approx([1.0, 1.0, 0.5])


def test_always_hold_scores_nothing_on_hold_proof_measures():
    """A model that says hold on every bar agrees with a hold-heavy teacher, yet has kappa 0 and AUCs 0.5."""
    rng = np.random.default_rng(3)
    n = 2000
    y = rng.choice(3, n, p=[0.25, 0.5, 0.25])
    fwd = rng.normal(0, 1, n)
    teacher = np.tile([0.2, 0.6, 0.2], (n, 1))
    teacher[:100] = [0.6, 0.3, 0.1]  # the teacher acts on 5% of bars
    hold = np.tile([0.25, 0.5, 0.25], (n, 1))
    m = ev.signal_measures(hold, y, fwd, teacher)
    assert m["agreement"] == pytest.approx(0.95)
    assert m["kappa_vs_teacher"] == pytest.approx(0.0)
    assert m["agreement_teacher_acts"] == 0.0
    assert m["move_auc"] == pytest.approx(0.5) and m["direction_auc"] == pytest.approx(0.5)
    assert math.isnan(m["ic"])
