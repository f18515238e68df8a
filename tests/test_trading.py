"""The trading read-out: positions, costs, baselines, ticks and spreads, the chosen policy, signal lines."""

from __future__ import annotations

import math

import numpy as np
import pytest

from daemon.core import trading as tr

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
