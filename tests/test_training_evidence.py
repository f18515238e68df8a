"""The evidence behind the report: block bootstrap, hold-proof measures, the trading read-out, the lockbox."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from daemon.core.artifact import ArtifactError, load_artifact, save_artifact
from daemon.training import evaluate as ev
from daemon.training import trading as tr
from daemon.training import train as pipeline
from daemon.training.bootstrap import DAY_MS, blocks_of, paired_mean, paired_ratio, verdict
from daemon.training.config import TrainConfig
from daemon.training.data import load_dataset
from daemon.training.dataset import build
from daemon.training.folds import lockbox_split, walk_forward
from kernels.layout import FEATURE_NAMES

DATA = Path(__file__).resolve().parent.parent / "data"
TINY = TrainConfig(
    n_folds=2, teacher_hidden=((16, 8),), teacher_epochs=2, lgbm_rounds=20, lgbm_min_leaf=50, student_epochs=3,
    seeds=(0, 1), progress=False, num_threads=1, sweep_temperatures=(1.0, 2.0), sweep_alphas=(0.25, 0.5),
    control_lrs=(0.005, 0.01), control_weight_decays=(0.0,), lockbox_days=3, ablations=(), bootstrap_samples=200,
)


# --- bootstrap -------------------------------------------------------------------------------------------

def test_blocks_are_utc_days_shared_by_symbols():
    """Rows of any symbol starting on the same UTC day share a block; blocks are numbered in time order."""
    t = np.array([0, 5, DAY_MS - 1, DAY_MS, 3 * DAY_MS + 7, 0, DAY_MS + 1])
    np.testing.assert_array_equal(blocks_of(t), [0, 0, 0, 1, 2, 0, 1])


def test_paired_mean_interval_on_known_cases():
    """A constant difference gives a zero-width interval at it; the mean is the row mean; blocks are counted."""
    blocks = np.repeat(np.arange(10), 7)
    d = paired_mean(np.full(70, 0.25), blocks, 500)
    assert d == {"mean": 0.25, "ci95": [pytest.approx(0.25), pytest.approx(0.25)], "blocks": 10}
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 1.0, 70)
    d = paired_mean(x, blocks, 2000)
    assert d["mean"] == pytest.approx(x.mean())
    assert d["ci95"][0] < x.mean() < d["ci95"][1]
    assert verdict(paired_mean(x + 5.0, blocks)["ci95"]) == "helps"
    assert verdict(paired_mean(x - 5.0, blocks)["ci95"]) == "hurts"


def test_block_bootstrap_is_wider_than_rows_when_rows_within_a_day_move_together():
    """Rows sharing a day's shock are one draw, not many: the interval reflects the number of days."""
    rng = np.random.default_rng(2)
    day_shock = rng.normal(0, 1, 20)
    blocks = np.repeat(np.arange(20), 50)
    x = day_shock[blocks] + rng.normal(0, 0.01, 1000)
    wide = paired_mean(x, blocks)["ci95"]
    narrow = paired_mean(x, np.arange(1000))["ci95"]
    assert (wide[1] - wide[0]) > 3 * (narrow[1] - narrow[0])


def test_paired_ratio_is_ratio_of_sums():
    """Gap recovered is sum(num)/sum(den) with an interval around it."""
    blocks = np.repeat(np.arange(8), 4)
    num = np.linspace(0.0, 1.0, 32)
    den = 2.0 * num + 1.0
    r = paired_ratio(num, den, blocks, 300)
    assert r["mean"] == pytest.approx(num.sum() / den.sum())
    assert r["ci95"][0] <= r["mean"] <= r["ci95"][1]


# --- measures ----------------------------------------------------------------------------------------------

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


# --- trading -----------------------------------------------------------------------------------------------

OPEN = np.array([100.0, 101.0, 102.0, 100.0, 100.0, 103.0])


def test_trading_read_out_equals_hand_computation():
    """Positions, costs, trades, break-even and drawdown on six bars worked out by hand."""
    pos = tr.positions(np.array([0.5, 0.5, -0.5, 0.0, 0.0, np.nan]), 0.2, 1)
    np.testing.assert_array_equal(pos, [1, 1, -1, 0, 0, 0])
    m = tr.Market("X", np.arange(6) * 300_000, OPEN, spread_bp=1.0)
    stats, per, runs = tr.backtest([m], {"X": pos}, 5e-4, 1000.0)
    # long over bars 0-1 earns log(102/101) + log(100/102); short over bar 2 earns -log(100/100)
    gross = math.log(100 / 101)
    units = 1 + 2 + 1  # enter long, flip to short, leave
    assert stats["gross_return"] == pytest.approx(gross)
    assert stats["net_return"] == pytest.approx(gross - units * 6e-4)
    assert stats["trades"] == 2 and stats["hit_rate"] == 0.0
    assert stats["turnover"] == pytest.approx(units / 6)
    assert stats["break_even_fee_bp"] == pytest.approx((gross - units * 1e-4) / units / 1e-4)
    eq = np.cumsum(runs[0].net)
    assert stats["max_drawdown"] == pytest.approx(np.max(np.maximum.accumulate(np.r_[0, eq]) - np.r_[0, eq]))
    assert per["X"]["net_return"] == pytest.approx(stats["net_return"])


def test_hold_mode_keeps_a_position_for_the_horizon():
    """With hold_bars=3 a signal is kept three bars whatever comes next, then re-decided."""
    e = np.array([0.5, -0.5, -0.5, 0.0, -0.5, 0.5, 0.5, 0.5])
    np.testing.assert_array_equal(tr.positions(e, 0.2, 3), [1, 1, 1, 0, -1, -1, -1, 1])
    np.testing.assert_array_equal(tr.positions(e, tr.NEVER, 3), np.zeros(8))


def test_always_flat_and_buy_and_hold_baselines():
    """Flat earns nothing and trades nothing; buy-and-hold earns the open-to-open move minus one round trip."""
    m = tr.Market("X", np.arange(6), OPEN, spread_bp=0.0)
    flat, _, _ = tr.backtest([m], {"X": np.zeros(6, dtype=np.int64)}, 5.5e-4, 1000.0)
    assert flat["net_return"] == 0.0 and flat["trades"] == 0 and flat["max_drawdown"] == 0.0
    bh, _, _ = tr.backtest([m], {"X": np.ones(6, dtype=np.int64)}, 5.5e-4, 1000.0)
    assert bh["net_return"] == pytest.approx(math.log(103 / 101) - 2 * 5.5e-4)
    assert bh["trades"] == 1


def test_tick_and_half_spread_from_prices():
    """The tick is the smallest price step seen; half a tick is charged as a fraction of the next open."""
    assert tr.tick_size(np.array([0.8123, 0.8125, 0.8124, 0.8123])) == pytest.approx(1e-4)
    assert tr.tick_size(np.array([64000.1, 64000.3, 64001.0])) == pytest.approx(0.2)
    hs = tr.half_spread(np.array([100.0, 50.0]), 0.1)
    np.testing.assert_allclose(hs, [0.05 / 50.0, 0.05 / 50.0])


def test_choose_policy_stays_flat_when_nothing_pays():
    """On noise with a fee, no threshold beats doing nothing, so the chosen policy never acts."""
    rng = np.random.default_rng(4)
    o = 100 * np.exp(np.cumsum(rng.normal(0, 1e-4, 3000)))
    m = tr.Market("X", np.arange(3000), o, spread_bp=0.0)
    pol = tr.choose_policy([m], {"X": rng.normal(0, 0.1, 3000)}, 5.5e-4, [0.0, 0.05, 0.1], (1, 3), 1e5)
    assert pol["threshold"] == tr.NEVER and pol["net_return_per_symbol"] == 0.0


def test_signal_lines_align_to_candles_and_bad_lines_are_counted():
    """The daemon's JSON lines become p_buy - p_sell on their bars; malformed or unknown lines are skipped."""
    line = {"symbol": "BTCUSDT", "interval": "5", "start": 600, "signal": "buy",
            "probs": {"buy": 0.5, "hold": 0.3, "sell": 0.2}}
    lines = [json.dumps(line), "not json", json.dumps({**line, "symbol": "XRPUSDT"}), json.dumps({**line, "start": 0})]
    edges, bad = tr.edge_from_signal_lines(lines, {"BTCUSDT": np.array([0, 300, 600])})
    np.testing.assert_allclose(edges["BTCUSDT"], [0.3, np.nan, 0.3])
    assert bad == 2


# --- lockbox -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pooled():
    """The five 5m samples pooled with the tiny config."""
    return build(load_dataset([DATA], interval="5"), TINY)


def test_lockbox_split_purges_development(pooled):
    """Lockbox rows start at the cut; no development label window plus embargo reaches it; 0 days means 15%."""
    P = pooled
    s = lockbox_split(P.start_ms, P.valid, 3, P.interval_ms, TINY.horizon_bars, TINY.embargo_bars)
    reach = (TINY.horizon_bars + TINY.embargo_bars) * P.interval_ms
    assert P.start_ms[s.lockbox].min() == s.lockbox_lo_ms
    assert P.start_ms[s.dev].max() + reach < s.lockbox_lo_ms
    assert not np.any(s.dev & s.lockbox)
    assert s.lockbox_hi_ms - s.lockbox_lo_ms == 3 * DAY_MS
    auto = lockbox_split(P.start_ms, P.valid, 0, P.interval_ms, TINY.horizon_bars, TINY.embargo_bars)
    span_days = (P.start_ms.max() + P.interval_ms - P.start_ms.min()) / DAY_MS
    assert auto.lockbox_days == round(0.15 * span_days)
    _, folds = walk_forward(P.start_ms, s.dev, TINY.n_folds, P.interval_ms, TINY.horizon_bars, TINY.embargo_bars,
                            end_ms=s.dev_end_ms)
    for f in folds:
        assert not np.any(f.test & s.lockbox) and not np.any(f.train & s.lockbox)


def _choices(P):
    s, _, folds = pipeline.layout(P, TINY)
    p_t, _, _ = pipeline.fit_teachers(P, TINY, folds, seed=0)
    cache: dict = {}
    ch = pipeline.develop(P, TINY, folds, p_t, cache, {})
    ks = list(range(1, len(folds) - 1))
    models = pipeline.models_on(P, TINY, folds, ks, p_t, cache, pipeline.model_variants(TINY, ch))
    idx = np.concatenate([np.flatnonzero(folds[k].test) for k in ks])
    e = np.full(len(P), np.nan)
    e[idx] = models["student"][0][:, 2] - models["student"][0][:, 0]
    region = (P.start_ms >= folds[1].test_lo_ms) & (P.start_ms < s.dev_end_ms)
    pol = pipeline.choose_policies(P, region, {"student": e}, pipeline.development_ticks(P, s), TINY, 105_192.0)
    return ch, pol, p_t[s.dev]


def test_perturbing_the_lockbox_changes_no_choice(pooled):
    """Scrambled lockbox labels, targets and prices leave T, alpha, the control's lr/wd, the policy and every development soft target unchanged."""
    P = pooled
    ch1, pol1, pt1 = _choices(P)
    s = lockbox_split(P.start_ms, P.valid, TINY.lockbox_days, P.interval_ms, TINY.horizon_bars, TINY.embargo_bars)
    lock = P.start_ms >= s.lockbox_lo_ms
    rng = np.random.default_rng(9)
    P2 = build(load_dataset([DATA], interval="5"), TINY)
    P2.y[lock & P2.valid] = rng.integers(0, 3, int((lock & P2.valid).sum()))
    P2.target[:] = P2.y
    P2.fwd[lock] = rng.normal(0, 1, int(lock.sum()))
    P2.open[lock] = P2.open[lock] * np.exp(rng.normal(0, 0.01, int(lock.sum())))
    ch2, pol2, pt2 = _choices(P2)
    assert ch1 == ch2
    assert pol1 == pol2
    np.testing.assert_array_equal(pt1, pt2)


def test_fixed_epochs_keeps_the_last_epoch_without_validation():
    """The shipped refit runs exactly the given epochs and needs no validation rows."""
    from daemon.training.distil import train_student

    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, len(FEATURE_NAMES)))
    y = rng.integers(0, 3, 600)
    s = train_student(x, y, np.full((600, 3), 1 / 3), np.ones(600), x[:0], y[:0], TINY, 0, fixed_epochs=2)
    assert s.epochs_run == 2 and s.best_epoch == 2


def test_artifact_policy_is_validated(tmp_path):
    """A manifest policy with a threshold outside [0, 1] or a non-integer hold is refused, naming the field."""
    from daemon.training import nn

    mlp = nn.MLP.init([len(FEATURE_NAMES), 4, 3], "relu", np.random.default_rng(0))
    f = len(FEATURE_NAMES)
    base = {"normalisation": {"clip": 8.0}, "distillation": {"temperature": 2.0, "alpha": 0.5}, "labels": {},
            "data": {"symbols": ["BTCUSDT"], "interval": "5"}, "metrics": {}}
    good = {"cases": {"taker": {"threshold": 0.3, "hold_bars": 3}}}
    p = tmp_path / "a.npz"
    save_artifact(p, weights=mlp.weights, biases=mlp.biases, activations=mlp.activations,
                  feature_mean=np.zeros(f), feature_std=np.ones(f), manifest={**base, "policy": good})
    assert load_artifact(p).manifest["policy"] == good
    for bad, field in (({"cases": {"taker": {"threshold": 1.5, "hold_bars": 1}}}, "threshold"),
                       ({"cases": {"taker": {"threshold": 0.1, "hold_bars": 0}}}, "hold_bars"),
                       ({"cases": {}}, "policy")):
        with pytest.raises(ArtifactError, match=field):  # save_artifact reads its file back, so it refuses too
            save_artifact(p, weights=mlp.weights, biases=mlp.biases, activations=mlp.activations,
                          feature_mean=np.zeros(f), feature_std=np.ones(f), manifest={**base, "policy": bad})
