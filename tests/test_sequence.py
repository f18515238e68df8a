"""The sequence teacher's inputs: bar channels and windows, against NumPy references, with no look-ahead."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.training.data import load_dataset
from daemon.training.dataset import build
from daemon.training.sequence import VOLUME_MEAN_BARS, bar_inputs, windows
from tests.naive import sequence_bars_reference, sequence_windows_reference
from tests.support import DATA, TINY_TRAIN


@pytest.fixture(scope="module")
def samples():
    """The five 5m samples, their pooled table and their bar channels."""
    series = load_dataset([DATA], interval="5")
    P = build(series, TINY_TRAIN)
    return series, P, bar_inputs(series, P)


def test_bar_channels_match_reference(samples):
    """Every pooled row's six channels equal the loop reference (own returns, ranges, volumes; market means)."""
    series, P, bars = samples
    ref = sequence_bars_reference([np.column_stack(s.arrays()[1:]) for s in series], VOLUME_MEAN_BARS)
    np.testing.assert_allclose(bars, np.concatenate(ref), rtol=1e-5, atol=1e-6)
    assert bars.shape == (len(P), 6) and bars.dtype == np.float32


def test_windows_match_reference(samples):
    """Windows (also ones crossing a symbol's start, padded with zeros) equal the row-by-row reference."""
    _, P, bars = samples
    starts = np.flatnonzero(np.diff(P.sym, prepend=-1))
    rows = np.unique(np.concatenate([starts, starts + 5, starts[1:] - 1, np.arange(0, len(P), 997)]))
    got = windows(bars, P.sym, rows, 16)
    np.testing.assert_array_equal(got, sequence_windows_reference(bars, P.sym, rows, 16))
    assert np.all(got[np.searchsorted(rows, starts[1]), :-1] == 0.0)
    np.testing.assert_array_equal(got[:, -1], bars[rows])


def test_changing_future_bars_never_changes_a_past_window(samples):
    """Altering one symbol's bars from some time on (and the market's, through it) leaves every window of every
    row that ends before that time unchanged, and does change some later window."""
    series, P, bars = samples
    cut = int(series[0].start_ms[len(series[0]) // 2])
    changed = []
    for s in series:
        c = s.slice(0, len(s))
        if s is series[1]:
            late = c.start_ms >= cut
            for a in (c.open, c.high, c.low, c.close):
                a[late] *= 1.3
            c.high[late] *= 1.05
            c.volume[late] *= 7.0
        changed.append(c)
    P2 = build(changed, TINY_TRAIN)
    bars2 = bar_inputs(changed, P2)
    before = np.flatnonzero(P.start_ms < cut)
    after = np.flatnonzero(P.start_ms >= cut)
    np.testing.assert_array_equal(windows(bars2, P2.sym, before, 64), windows(bars, P.sym, before, 64))
    assert not np.array_equal(windows(bars2, P2.sym, after, 64), windows(bars, P.sym, after, 64))


def test_inputs_refuse_a_misaligned_table(samples):
    """Bar channels built for other series than the pooled table's are refused with a message, not misaligned."""
    series, P, _ = samples
    with pytest.raises(ValueError, match="sequence inputs"):
        bar_inputs(series[:2], P)
