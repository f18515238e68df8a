"""The sequence teacher in the lockbox protocol: out-of-fold fits, its ensemble weight, an opt-in run end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="the [seq] extra (requirements-seq.lock) is not installed")

from daemon.cli import main as cli_main
from daemon.training import sequence_net
from daemon.training.data import load_dataset
from daemon.training.sequence_eval import choose_weight, mix, out_of_fold
from daemon.training.train import layout
from tests.support import DATA, TINY_TRAIN, pooled_samples

SMALL = TINY_TRAIN.replace(sequence_window_bars=16, sequence_channels=4, sequence_epochs=1,
                           sequence_rows_per_epoch=1000, sequence_batch=128)


def test_fits_are_out_of_fold(monkeypatch):
    """Each block's member fits and validates only on rows whose label window plus embargo ends before the block,
    never on a lockbox row for a development block, and labels exactly the block's test rows."""
    P = pooled_samples(SMALL)
    split, _, folds = layout(P, SMALL)
    seen = []
    real = sequence_net.fit_sequence

    def spy(bars, sym, fit_rows, t_fit, val_rows, *args, **kwargs):
        seen.append((fit_rows, val_rows))
        return real(bars, sym, fit_rows, t_fit, val_rows, *args, **kwargs)

    monkeypatch.setattr(sequence_net, "fit_sequence", spy)
    p, info, _ = out_of_fold(load_dataset([DATA], interval="5"), P, SMALL, folds, seed=0)
    reach = (SMALL.horizon_bars + SMALL.embargo_bars) * P.interval_ms
    assert len(seen) == len(folds) == len(info)
    for (fit, val), f in zip(seen, folds, strict=True):
        used = np.concatenate([fit, val])
        test = np.flatnonzero(f.test)
        assert P.start_ms[used].max() + reach < P.start_ms[test].min()
        assert not split.lockbox[used].any()
        assert P.start_ms[fit].max() < P.start_ms[val].min()
    labelled = np.isfinite(p).all(axis=1)
    assert np.array_equal(labelled, np.any([f.test for f in folds], axis=0))


def test_weight_is_chosen_by_log_loss():
    """A sequence member that knows the labels gets the whole weight; one that is noise gets none."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2000)
    p_t = np.full((2000, 3), 1 / 3)
    sharp = np.full((2000, 3), 0.05)
    sharp[np.arange(2000), y] = 0.9
    w, grid = choose_weight(p_t, sharp, y, (0.0, 0.5, 1.0))
    assert w == 1.0 and [g["weight"] for g in grid] == [0.0, 0.5, 1.0]
    noise = rng.dirichlet([0.3] * 3, 2000)
    assert choose_weight(p_t, noise, y, (0.0, 0.5, 1.0))[0] == 0.0
    np.testing.assert_allclose(mix(p_t, sharp, 0.25), 0.75 * p_t + 0.25 * sharp)


@pytest.mark.slow
def test_opt_in_run_writes_the_methods_row(tmp_path):
    """``kdsignal train --teacher-sequence`` on the samples writes methods.sequence_teacher with lockbox intervals,
    its training time in the report's timings and a report.md section; a run without the flag has no such row."""
    table = {**SMALL.to_dict(), "seeds": [0], "sweep_temperatures": [2.0], "sweep_alphas": [0.5]}
    lines = ["[train]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    (tmp_path / "train.toml").write_text("\n".join(lines) + "\n")
    out = tmp_path / "seq" / "model.npz"
    rc = cli_main(["train", "--data", str(DATA), "--interval", "5", "--config", str(tmp_path / "train.toml"),
                   "--out", str(out), "--no-progress", "--teacher-sequence"])
    assert rc == 0
    doc = json.loads((out.parent / "report.json").read_text())
    row = doc["methods"]["sequence_teacher"]["detail"]
    assert doc["methods"]["sequence_teacher"]["lockbox"]["method"] == "sequence_teacher"  # a row of the table
    for key in ("log_loss", "ic", "direction_auc", "break_even_fee_bp", "n", "seeds", "sequence_weight"):
        assert key in row
    for key in ("gap_recovered", "delta_vs_control", "delta_vs_current_student"):
        assert set(row[key]) == {"point", "lo", "hi"}
    d = row["delta_vs_current_student"]
    assert d["lo"] <= d["point"] <= d["hi"]
    assert set(row["taker"]) == set(row["maker"]) == {"net_return", "sharpe"}
    assert row["n"] == doc["split"]["lockbox"]["rows"] and row["seeds"] == 1
    assert len(row["fits"]) == SMALL.n_folds + 2 and doc["timings_s"]["sequence_teacher_s"] > 0
    assert row["sequence_weight"] in SMALL.sequence_weights
    assert "## Sequence teacher" in (out.parent / "report.md").read_text()
    plain = tmp_path / "plain" / "model.npz"
    assert cli_main(["train", "--data", str(DATA), "--interval", "5", "--config", str(tmp_path / "train.toml"),
                     "--out", str(plain), "--no-progress"]) == 0
    assert "sequence_teacher" not in json.loads((plain.parent / "report.json").read_text())["methods"]
