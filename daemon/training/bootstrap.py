"""Paired block bootstrap: intervals for differences measured on the same rows, resampling whole days.

Consecutive bars and the symbols traded at the same time are not independent trials, so the unit that
is resampled is a contiguous block of time (one UTC day by default) with every symbol's rows in it.
"""

from __future__ import annotations

import numpy as np

DAY_MS = 86_400_000


def blocks_of(start_ms: np.ndarray, block_ms: int = DAY_MS) -> np.ndarray:
    """Block index of every row: rows whose bars start in the same ``block_ms`` span share a block."""
    b = np.asarray(start_ms, dtype=np.int64) // block_ms
    _, inv = np.unique(b, return_inverse=True)
    return inv


def _draws(n_blocks: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_blocks, size=(n_boot, n_blocks))


def paired_mean(diff: np.ndarray, blocks: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of per-row ``diff`` with a 95% percentile interval over resampled blocks.

    Returns ``{"mean", "ci95": [lo, hi], "blocks"}``; the mean is the plain row mean of ``diff``.
    """
    diff = np.asarray(diff, dtype=np.float64)
    nb = int(blocks.max()) + 1 if len(blocks) else 0
    if nb == 0:
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "blocks": 0}
    s = np.bincount(blocks, weights=diff, minlength=nb)
    c = np.bincount(blocks, minlength=nb).astype(np.float64)
    idx = _draws(nb, n_boot, seed)
    means = s[idx].sum(axis=1) / c[idx].sum(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(diff.mean()), "ci95": [float(lo), float(hi)], "blocks": nb}


def paired_ratio(num: np.ndarray, den: np.ndarray, blocks: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """``sum(num) / sum(den)`` with a 95% percentile interval from the same block resamples."""
    nb = int(blocks.max()) + 1 if len(blocks) else 0
    if nb == 0:
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "blocks": 0}
    a = np.bincount(blocks, weights=np.asarray(num, dtype=np.float64), minlength=nb)
    d = np.bincount(blocks, weights=np.asarray(den, dtype=np.float64), minlength=nb)
    idx = _draws(nb, n_boot, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = a[idx].sum(axis=1) / d[idx].sum(axis=1)
    r = r[np.isfinite(r)]
    mean = float(a.sum() / d.sum()) if d.sum() != 0 else float("nan")
    if not len(r):
        return {"mean": mean, "ci95": [float("nan"), float("nan")], "blocks": nb}
    lo, hi = np.percentile(r, [2.5, 97.5])
    return {"mean": mean, "ci95": [float(lo), float(hi)], "blocks": nb}


def verdict(ci95: list[float], better_when_positive: bool = True) -> str:
    """"helps" / "hurts" when the whole interval is on one side of zero, else "no detectable difference"."""
    lo, hi = ci95
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "undetermined"
    if lo > 0:
        return "helps" if better_when_positive else "hurts"
    if hi < 0:
        return "hurts" if better_when_positive else "helps"
    return "no detectable difference"


def block_statistic(stats: np.ndarray, blocks: np.ndarray, fn, n_boot: int = 2000, seed: int = 0) -> dict:
    """``fn`` of summed per-row statistics, with a 95% percentile interval over resampled blocks.

    ``stats`` (n, k) holds additive per-row statistics (for example one-hot confusion cells); ``fn`` maps
    sums of shape (..., k) to values of shape (...), so a ratio such as Cohen's kappa gets an interval. The
    draws depend on ``seed`` only, so calls with the same ``blocks`` resample the same days (paired).
    """
    stats = np.asarray(stats, dtype=np.float64).reshape(len(blocks), -1)
    nb = int(blocks.max()) + 1 if len(blocks) else 0
    if nb == 0:
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "blocks": 0}
    s = np.zeros((nb, stats.shape[1]))
    np.add.at(s, blocks, stats)
    with np.errstate(divide="ignore", invalid="ignore"):
        point = float(fn(s.sum(axis=0)))
        boot = np.asarray(fn(s[_draws(nb, n_boot, seed)].sum(axis=1)), dtype=np.float64)
    boot = boot[np.isfinite(boot)]
    if not len(boot):
        return {"mean": point, "ci95": [float("nan"), float("nan")], "blocks": nb}
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"mean": point, "ci95": [float(lo), float(hi)], "blocks": nb}
