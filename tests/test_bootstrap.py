"""The block bootstrap: UTC-day blocks shared by symbols, paired mean and ratio intervals, the verdict."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.training.bootstrap import DAY_MS, blocks_of, paired_mean, paired_ratio, verdict


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


def test_block_statistic_of_a_mean_is_paired_mean():
    """With (diff, 1) per row and sum/count as the statistic, the interval is paired_mean's: same days drawn."""
    from daemon.training.bootstrap import block_statistic

    rng = np.random.default_rng(4)
    blocks = np.repeat(np.arange(12), 9)
    x = rng.normal(0.1, 1.0, len(blocks))
    got = block_statistic(np.column_stack([x, np.ones_like(x)]), blocks, lambda b: b[..., 0] / b[..., 1], 700)
    want = paired_mean(x, blocks, 700)
    assert got["mean"] == pytest.approx(want["mean"]) and got["blocks"] == 12
    np.testing.assert_allclose(got["ci95"], want["ci95"], rtol=1e-12)


def test_block_statistic_of_an_undefined_ratio_has_no_interval():
    """A statistic that is NaN on every resample gives a NaN interval rather than an error."""
    from daemon.training.bootstrap import block_statistic

    blocks = np.repeat(np.arange(3), 2)
    got = block_statistic(np.zeros((6, 2)), blocks, lambda b: b[..., 0] / b[..., 1], 200)
    assert np.isnan(got["mean"]) and all(np.isnan(v) for v in got["ci95"])
