"""Rolling feature kernels: step == batch bit for bit, both == the NumPy reference, no look-ahead."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from kernels.features import features_batch, features_step
from kernels.layout import N_FEATURES, S_FEATURES, WINDOW, new_feature_state
from tests.naive import features_reference
from tests.support import DATA, bar_lists, load_csv, to_bars, with_gaps


def run_steps(bars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feed bars (n, 5: o h l c v) one at a time; return per-bar features (NaN when not valid) and statuses."""
    state = new_feature_state()
    out = np.full((len(bars), N_FEATURES), np.nan)
    status = np.empty(len(bars), dtype=np.int64)
    for t, (o, h, l, c, v) in enumerate(bars):
        status[t] = features_step(state, float(o), float(h), float(l), float(c), float(v))
        if status[t] == 1:
            out[t] = state[S_FEATURES : S_FEATURES + N_FEATURES]
    return out, status


@pytest.mark.parametrize("symbol", ["BTCUSDT-5m", "ETHUSDT-5m", "SOLUSDT-5m", "BNBUSDT-5m", "ADAUSDT-5m", "BTCUSDT-1m"])
def test_step_equals_batch_bitwise(symbol):
    """On real candles the incremental step form reproduces the batch form exactly, bar for bar."""
    bars = load_csv(DATA / f"{symbol}.csv")[:, 1:6]
    batch = features_batch(*bars.T)
    step, _ = run_steps(bars)
    np.testing.assert_array_equal(step, batch)
    assert np.isnan(batch[: WINDOW - 1]).all() and np.isfinite(batch[WINDOW - 1 :]).all()


@pytest.mark.parametrize("symbol", ["BTCUSDT-5m", "ADAUSDT-5m", "BTCUSDT-1m"])
def test_batch_matches_numpy_reference(symbol):
    """The kernels agree with the plain NumPy definitions on real candles."""
    bars = load_csv(DATA / f"{symbol}.csv")[:600, 1:6]
    np.testing.assert_allclose(features_batch(*bars.T), features_reference(*bars.T), rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_missing_and_zero_volume_bars(seed, btc_5m):
    """With missing and zero-volume bars, step == batch == reference and every warm row is finite."""
    bars = with_gaps(btc_5m[:1500, 1:6], seed)
    batch = features_batch(*bars.T)
    step, _ = run_steps(bars)
    np.testing.assert_array_equal(step, batch)
    np.testing.assert_allclose(batch, features_reference(*bars.T), rtol=1e-9, atol=1e-13)
    assert np.isfinite(batch[WINDOW:]).all()


def test_zero_volume_window_has_defined_values(btc_5m):
    """A window that traded nothing gives relvol 1 and vwret 0 rather than NaN."""
    bars = btc_5m[:150, 1:6].copy()
    bars[:, 4] = 0.0
    feats = features_batch(*bars.T)
    assert (feats[WINDOW - 1 :, 5] == 1.0).all() and (feats[WINDOW - 1 :, 6] == 0.0).all()


def test_flat_prices_have_zero_volatility_score():
    """Constant prices give zero volatility and a zclose of 0, not a division by zero."""
    bars = np.tile([100.0, 100.0, 100.0, 100.0, 1.0], (WINDOW + 20, 1))
    feats = features_batch(*bars.T)
    assert (feats[WINDOW - 1 :, 4] == 0.0).all() and (feats[WINDOW - 1 :, 8] == 0.0).all()
    assert (feats[WINDOW - 1 :, 10] == 0.0).all()


def test_invalid_bars_before_first_valid_are_not_accepted(btc_5m):
    """Leading invalid bars return -1 and do not count toward warm-up."""
    bars = btc_5m[: WINDOW + 20, 1:6].copy()
    bars[:3, 3] = np.nan
    feats, status = run_steps(bars)
    assert list(status[:3]) == [-1, -1, -1]
    assert (status[3 : 3 + WINDOW - 1] == 0).all() and status[3 + WINDOW - 1] == 1
    np.testing.assert_array_equal(feats, features_batch(*bars.T))


def test_features_depend_only_on_last_window(btc_5m):
    """Starting the step form WINDOW bars before any point gives that point's batch features exactly."""
    bars = btc_5m[:700, 1:6]
    batch = features_batch(*bars.T)
    for start in (0, 7, 150, 333, 560):
        late, _ = run_steps(bars[start:])
        np.testing.assert_array_equal(late[WINDOW - 1 :], batch[start + WINDOW - 1 :])


@settings(max_examples=60, deadline=None)
@given(bar_lists)
def test_property_step_equals_batch_and_finite(spec):
    """For arbitrary realistic bars with faults, step == batch and warm features are finite."""
    bars = to_bars(spec)
    step, status = run_steps(bars)
    batch = features_batch(*bars.T)
    np.testing.assert_array_equal(step, batch)
    assert np.isfinite(batch[status == 1]).all()


@settings(max_examples=40, deadline=None)
@given(bar_lists, bar_lists)
def test_property_no_look_ahead(past, future):
    """Changing the bars after t never changes the features at or before t."""
    a = to_bars(past)
    b = to_bars(future)
    fa = features_batch(*a.T)
    fab = features_batch(*np.vstack([a, b]).T)
    np.testing.assert_array_equal(fab[: len(a)], fa)
