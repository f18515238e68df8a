"""The lockbox and purged walk-forward folds over time, shared by every symbol.

The newest ``lockbox_days`` are the lockbox (``lockbox_split``): scored once, after every choice is
made. Development is every row whose label window plus embargo ends before the lockbox starts; the
walk-forward folds below cut only the development span.

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


DAY_MS = 86_400_000
DEFAULT_LOCKBOX_SHARE = 0.15


@dataclass(frozen=True)
class Split:
    """Development and lockbox rows (boolean masks over the pooled rows) and their spans."""

    dev: np.ndarray  # valid rows whose label window + embargo ends before the lockbox
    lockbox: np.ndarray  # valid rows starting at or after lockbox_lo_ms
    dev_lo_ms: int
    dev_end_ms: int  # exclusive end of the development span = lockbox_lo_ms
    lockbox_lo_ms: int
    lockbox_hi_ms: int  # exclusive
    lockbox_days: float


def lockbox_split(start_ms: np.ndarray, valid: np.ndarray, lockbox_days: float, interval_ms: int,
                  horizon_bars: int, embargo_bars: int) -> Split:
    """Cut off the newest ``lockbox_days`` (0: 15% of the span, in whole days) as the lockbox.

    The lockbox starts on a bar boundary; development rows are purged so that no label window (plus the
    embargo) reaches into it.
    """
    lo = int(start_ms.min())
    hi = int(start_ms.max()) + interval_ms
    days = lockbox_days if lockbox_days > 0 else max(1.0, round(DEFAULT_LOCKBOX_SHARE * (hi - lo) / DAY_MS))
    cut = hi - round(days * DAY_MS / interval_ms) * interval_ms
    if cut <= lo:
        raise ValueError(f"lockbox of {days:g} days is not shorter than the data ({(hi - lo) / DAY_MS:.1f} days)")
    reach_ms = (horizon_bars + embargo_bars) * interval_ms
    dev = valid & purge_before(start_ms, cut, reach_ms)
    lock = valid & (start_ms >= cut)
    return Split(dev, lock, lo, cut, cut, hi, float(days))


def time_blocks(start_ms: np.ndarray, n_blocks: int, interval_ms: int, end_ms: int | None = None) -> np.ndarray:
    """Cut ``[min, max + interval)`` (or ``[min, end_ms)``) into ``n_blocks`` equal spans on the bar grid."""
    lo = int(start_ms.min())
    hi = int(start_ms.max()) + interval_ms if end_ms is None else int(end_ms)
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


def split_validation(start_ms: np.ndarray, mask: np.ndarray, val_frac: float,
                     reach_ms: int) -> tuple[np.ndarray, np.ndarray]:
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
                 horizon_bars: int, embargo_bars: int, first_block: int = 0,
                 end_ms: int | None = None) -> tuple[np.ndarray, list[Fold]]:
    """Return the block edges and one ``Fold`` per block ``first_block+1 .. n_folds+1``.

    ``fold.train`` holds every valid row before the test block (purged); callers narrow it (e.g. students
    use blocks ``>= 1`` only, where out-of-fold soft targets exist). With ``end_ms`` the blocks cut
    ``[min, end_ms)`` only (the development span) and no row from ``end_ms`` on enters any fold.
    """
    edges = time_blocks(start_ms, n_folds + 2, interval_ms, end_ms)
    if end_ms is not None:
        valid = valid & (start_ms < end_ms)
    reach_ms = (horizon_bars + embargo_bars) * interval_ms
    folds = []
    for k in range(first_block + 1, n_folds + 2):
        lo, hi = int(edges[k]), int(edges[k + 1])
        test = valid & (start_ms >= lo) & (start_ms < hi)
        train = valid & purge_before(start_ms, lo, reach_ms)
        folds.append(Fold(k, lo, hi, test, train))
    return edges, folds


def lockbox_fold(split: Split, start_ms: np.ndarray, index: int) -> Fold:
    """The lockbox as a fold: tested on the lockbox, trained on every development row (already purged)."""
    return Fold(index, split.lockbox_lo_ms, split.lockbox_hi_ms, split.lockbox, split.dev.copy())
