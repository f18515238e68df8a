"""The sequence teacher's temporal CNN: fitting, its stopping rules, and a save/load round trip without pickle."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the [seq] extra (requirements-seq.lock) is not installed")

from daemon.training.data import load_dataset  # noqa: E402
from daemon.training.sequence import bar_inputs  # noqa: E402
from daemon.training.sequence_net import (  # noqa: E402
    dilations_for,
    fit_sequence,
    load_sequence_member,
    save_sequence_member,
)
from daemon.training.teacher_store import load_teacher  # noqa: E402
from tests.support import DATA, TINY_TRAIN, pooled_samples, save_tiny_teacher, tiny_teacher  # noqa: E402

SMALL = TINY_TRAIN.replace(sequence_window_bars=16, sequence_channels=4, sequence_epochs=2,
                           sequence_rows_per_epoch=1500, sequence_batch=128)


@pytest.fixture(scope="module")
def fitted():
    """A tiny member fitted on the older half of the samples' valid rows, validated on the next tenth."""
    P = pooled_samples()
    bars = bar_inputs(load_dataset([DATA], interval="5"), P)
    rows = np.flatnonzero(P.valid)
    order = rows[np.argsort(P.start_ms[rows], kind="stable")]
    fit, val = order[: len(order) // 2], order[len(order) // 2: len(order) * 6 // 10]
    m = fit_sequence(bars, P.sym, fit, P.target[fit], val, P.y[val], P.to_class, SMALL, seed=0)
    return P, bars, m


def test_dilations_cover_the_window():
    """The receptive field (1 + sum of dilations) reaches the whole window without passing it."""
    for n in (2, 16, 64, 100):
        d = dilations_for(n)
        assert 1 + sum(d) <= n < 1 + sum(d) + 2 * d[-1]


def test_fit_predicts_probabilities_and_keeps_the_best_epoch(fitted):
    """Predictions are probabilities over sell/hold/buy, and the kept epoch is the one with the best validation."""
    P, bars, m = fitted
    p = m.predict(bars, P.sym, np.flatnonzero(P.valid)[-500:])
    assert p.shape == (500, 3) and np.all(p > 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    assert m.info["val_log_loss"] == min(m.info["val_history"])
    assert m.info["epochs_run"] <= SMALL.sequence_epochs and not m.info["stopped_by_time_cap"]


def test_time_cap_stops_after_one_batch(fitted):
    """With a wall-clock cap already passed, the fit stops after its first batch, scores it and says so."""
    P, bars, _ = fitted
    rows = np.flatnonzero(P.valid)
    cfg = SMALL.replace(sequence_fit_max_s=1e-9, sequence_epochs=5)
    m = fit_sequence(bars, P.sym, rows[:2000], P.target[rows[:2000]], rows[2000:2300], P.y[rows[2000:2300]],
                     P.to_class, cfg, seed=1)
    assert m.info["stopped_by_time_cap"] and m.info["epochs_run"] == 1


def test_save_load_round_trip(fitted, tmp_path):
    """A saved member (state_dict, weights_only load) predicts exactly what the fitted one does."""
    P, bars, m = fitted
    entry = save_sequence_member(m, tmp_path / "teacher")
    assert entry["kind"] == "sequence" and (tmp_path / "teacher" / entry["file"]).is_file()
    back = load_sequence_member(tmp_path / "teacher", entry)
    rows = np.flatnonzero(P.valid)[::7]
    np.testing.assert_array_equal(back.predict(bars, P.sym, rows), m.predict(bars, P.sym, rows))
    with pytest.raises(ValueError, match="kind"):
        load_sequence_member(tmp_path / "teacher", {**entry, "kind": "mlp"})


def test_teacher_folder_keeps_a_sequence_member(fitted, tmp_path):
    """A sequence member written into a teacher folder beside the ensemble comes back from ``load_teacher``
    (its files checked by the manifest) predicting exactly what it did."""
    P, bars, m = fitted
    save_tiny_teacher(tiny_teacher(), tmp_path / "teacher", sequence_members=[("seq", m)])
    back = load_teacher(tmp_path / "teacher").others["seq"]
    rows = np.flatnonzero(P.valid)[::7]
    np.testing.assert_array_equal(back.predict(bars, P.sym, rows), m.predict(bars, P.sym, rows))
