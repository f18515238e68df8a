"""Purged walk-forward folds: no overlap between training and test rows, the embargo holds, blocks tile time."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.training.bootstrap import DAY_MS
from daemon.training.folds import lockbox_split, purge_around, split_validation, time_blocks, walk_forward
from tests.support import TINY_TRAIN, pooled_samples

STEP = 300_000


def _rows(n_bars: int = 4000, n_sym: int = 3):
    t = 1_700_000_000_000 + np.arange(n_bars, dtype=np.int64) * STEP
    start = np.concatenate([t] * n_sym)
    valid = np.ones(len(start), dtype=bool)
    valid[::7] = False
    return start, valid


@pytest.mark.parametrize("h,embargo,n_folds", [(3, 0, 2), (3, 12, 5), (10, 10, 4)])
def test_train_rows_end_before_test_with_embargo(h, embargo, n_folds):
    """Every training row's label window plus the embargo ends before its test block; tests do not overlap."""
    start, valid = _rows()
    edges, folds = walk_forward(start, valid, n_folds, STEP, h, embargo)
    assert len(folds) == n_folds + 1 and len(edges) == n_folds + 3
    seen = np.zeros(len(start), dtype=bool)
    for f in folds:
        assert not np.any(f.train & f.test)
        assert not np.any(seen & f.test)
        seen |= f.test
        assert np.all(start[f.train] + (h + embargo) * STEP < f.test_lo_ms)
        assert np.all((start[f.test] >= f.test_lo_ms) & (start[f.test] < f.test_hi_ms))
        # purging removes exactly the rows within h + embargo bars of the test block, no more
        gap = f.test_lo_ms - start[f.train].max()
        assert gap == (h + embargo + 1) * STEP
        assert not np.any(f.train & ~valid) and not np.any(f.test & ~valid)
    assert np.array_equal(seen, valid & (start >= edges[1]))


def test_validation_split_is_purged():
    """The validation tail starts at least h + embargo bars after the last fitting row."""
    start, valid = _rows()
    fit, val = split_validation(start, valid, 0.2, 15 * STEP)
    assert not np.any(fit & val)
    assert start[fit].max() + 15 * STEP < start[val].min()
    assert 0.18 < val.sum() / valid.sum() < 0.22


def test_purge_around_drops_both_sides():
    """With training data on both sides, rows whose label window touches the widened test span are dropped."""
    start, _ = _rows(200, 1)
    lo, hi = int(start[100]), int(start[120])
    keep = purge_around(start, lo, hi, 3 * STEP, 5 * STEP)
    idx = np.flatnonzero(keep)
    assert set(range(0, 92)) | set(range(125, 200)) == set(idx.tolist())


def test_blocks_tile_the_range():
    """Block edges are on the bar grid and cover every row exactly once."""
    start, _ = _rows(1000, 1)
    edges = time_blocks(start, 7, STEP)
    assert edges[0] == start[0] and edges[-1] == start[-1] + STEP
    assert np.all((edges - edges[0]) % STEP == 0)
    counts = np.histogram(start, bins=edges)[0]
    assert counts.sum() == 1000 and counts.min() >= 142


@pytest.fixture(scope="module")
def pooled():
    """The five 5m samples pooled with the tiny config."""
    return pooled_samples()


def test_lockbox_split_purges_development(pooled):
    """Lockbox rows start at the cut; no development label window plus embargo reaches it; 0 days means 15%."""
    P = pooled
    s = lockbox_split(P.start_ms, P.valid, 3, P.interval_ms, TINY_TRAIN.horizon_bars, TINY_TRAIN.embargo_bars)
    reach = (TINY_TRAIN.horizon_bars + TINY_TRAIN.embargo_bars) * P.interval_ms
    assert P.start_ms[s.lockbox].min() == s.lockbox_lo_ms
    assert P.start_ms[s.dev].max() + reach < s.lockbox_lo_ms
    assert not np.any(s.dev & s.lockbox)
    assert s.lockbox_hi_ms - s.lockbox_lo_ms == 3 * DAY_MS
    auto = lockbox_split(P.start_ms, P.valid, 0, P.interval_ms, TINY_TRAIN.horizon_bars, TINY_TRAIN.embargo_bars)
    span_days = (P.start_ms.max() + P.interval_ms - P.start_ms.min()) / DAY_MS
    assert auto.lockbox_days == round(0.15 * span_days)
    _, folds = walk_forward(P.start_ms, s.dev, TINY_TRAIN.n_folds, P.interval_ms, TINY_TRAIN.horizon_bars,
                            TINY_TRAIN.embargo_bars, end_ms=s.dev_end_ms)
    for f in folds:
        assert not np.any(f.test & s.lockbox) and not np.any(f.train & s.lockbox)
