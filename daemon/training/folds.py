"""Purged walk-forward folds over time, shared by every symbol.

The time range is cut into ``n_folds + 2`` equal blocks. Block 0 only trains teachers; the teacher trained
on blocks ``< j`` labels block ``j`` (out-of-fold soft targets, and the teacher's own test predictions);
fold ``k`` (blocks 2..n_folds+1) tests the students on block ``k`` after training them on blocks
``1..k-1``, the ones that have out-of-fold soft targets. Every training row is purged so that its label
window ``[t, t+h]`` plus an embargo of ``embargo_bars`` ends before the block it is tested against starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fold:
    """One test block and the rows that may train for it (boolean masks over the pooled rows)."""

    index: int  # test block number
    test_lo_ms: int
    test_hi_ms: int  # exclusive
    test: np.ndarray
    train: np.ndarray  # rows whose label window + embargo ends before test_lo_ms


def time_blocks(start_ms: np.ndarray, n_blocks: int, interval_ms: int) -> np.ndarray:
    """Cut ``[min, max + interval)`` into ``n_blocks`` equal spans, aligned to the bar grid."""
    lo = int(start_ms.min())
    hi = int(start_ms.max()) + interval_ms
    n_bars = (hi - lo) // interval_ms
    if n_bars < n_blocks:
        raise ValueError(f"{n_bars} bars cannot be cut into {n_blocks} blocks")
    cuts = np.round(np.linspace(0, n_bars, n_blocks + 1)).astype(np.int64)
    return lo + cuts * interval_ms


def purge_before(start_ms: np.ndarray, test_lo_ms: int, reach_ms: int) -> np.ndarray:
    """Rows whose label window (``reach_ms`` = (h + embargo) bars) closes before ``test_lo_ms``."""
    return start_ms + reach_ms < test_lo_ms


def purge_around(start_ms: np.ndarray, test_lo_ms: int, test_hi_ms: int, h_ms: int, embargo_ms: int) -> np.ndarray:
    """Rows allowed to train for the test span ``[lo, hi)`` when training data may also lie after it.

    A row is dropped if its label window ``[t, t + h]`` overlaps the span widened by the embargo on both sides.
    """
    return (start_ms + h_ms + embargo_ms < test_lo_ms) | (start_ms >= test_hi_ms + embargo_ms)


def split_validation(start_ms: np.ndarray, mask: np.ndarray, val_frac: float, reach_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``mask`` rows by time: the last ``val_frac`` validates, earlier rows (purged) fit."""
    t = start_ms[mask]
    if len(t) == 0:
        return mask.copy(), mask.copy()
    lo, hi = int(t.min()), int(t.max())
    cut = hi - int((hi - lo) * val_frac)
    val = mask & (start_ms >= cut)
    fit = mask & purge_before(start_ms, cut, reach_ms)
    return fit, val


def walk_forward(start_ms: np.ndarray, valid: np.ndarray, n_folds: int, interval_ms: int,
                 horizon_bars: int, embargo_bars: int, first_block: int = 0) -> tuple[np.ndarray, list[Fold]]:
    """Return the block edges and one ``Fold`` per block ``first_block+1 .. n_folds+1``.

    ``fold.train`` holds every valid row before the test block (purged); callers narrow it (e.g. students
    use blocks ``>= 1`` only, where out-of-fold soft targets exist).
    """
    edges = time_blocks(start_ms, n_folds + 2, interval_ms)
    reach_ms = (horizon_bars + embargo_bars) * interval_ms
    folds = []
    for k in range(first_block + 1, n_folds + 2):
        lo, hi = int(edges[k]), int(edges[k + 1])
        test = valid & (start_ms >= lo) & (start_ms < hi)
        train = valid & purge_before(start_ms, lo, reach_ms)
        folds.append(Fold(k, lo, hi, test, train))
    return edges, folds
