"""Read kline CSVs (one or many symbols), check them, and align them on a common clock.

Schema: ``start_ms,open,high,low,close,volume`` (the schema of ``../shared/data`` and of ``kdsignal fetch``).
The symbol is taken from the file name (``BTCUSDT.csv`` or ``BTCUSDT-5m.csv``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

COLUMNS = ("start_ms", "open", "high", "low", "close", "volume")


class DataError(ValueError):
    """A kline file is malformed; the message names the file, the row and the field."""


@dataclass
class Series:
    """One symbol's closed candles, oldest first."""

    symbol: str
    path: str
    start_ms: np.ndarray  # int64
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    interval_ms: int
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (start_ms before gap, missing bars)

    def __len__(self) -> int:
        return len(self.start_ms)

    @property
    def interval(self) -> str:
        """Bybit's interval code ("1", "5", "60", "D"...) for this series' bar length."""
        return interval_code(self.interval_ms)

    def slice(self, lo: int, hi: int) -> Series:
        """Return rows ``lo:hi`` as a new series (gaps recomputed)."""
        s = Series(self.symbol, self.path, *(a[lo:hi].copy() for a in self.arrays()), self.interval_ms)
        s.gaps = find_gaps(s.start_ms, self.interval_ms)
        return s

    def arrays(self) -> tuple[np.ndarray, ...]:
        """Return (start_ms, open, high, low, close, volume)."""
        return self.start_ms, self.open, self.high, self.low, self.close, self.volume


def interval_code(interval_ms: int) -> str:
    """Map a bar length in ms to Bybit's interval code."""
    minutes = interval_ms // 60_000
    if interval_ms % 60_000 == 0 and minutes < 1440:
        return str(minutes)
    return {86_400_000: "D", 7 * 86_400_000: "W"}.get(interval_ms, f"{interval_ms}ms")


def symbol_from_path(path: str | Path) -> str:
    """Take the symbol from a file name: ``BTCUSDT-5m.csv`` -> ``BTCUSDT``."""
    stem = Path(path).name.split(".")[0]
    return re.split(r"[-_]", stem)[0].upper()


def find_gaps(start_ms: np.ndarray, interval_ms: int) -> list[tuple[int, int]]:
    """Return ``(start_ms of the bar before the gap, number of missing bars)`` for every hole."""
    if len(start_ms) < 2:
        return []
    d = np.diff(start_ms)
    idx = np.nonzero(d != interval_ms)[0]
    return [(int(start_ms[i]), int(d[i] // interval_ms - 1)) for i in idx]


def read_csv(path: str | Path) -> Series:
    """Read one kline CSV; raise ``DataError`` on a bad header, an unparsable or non-monotonic row."""
    path = Path(path)
    with open(path, encoding="ascii") as fh:
        header = fh.readline().strip().split(",")
        if tuple(h.strip() for h in header) != COLUMNS:
            raise DataError(f"{path}: header is {','.join(header)!r}, expected {','.join(COLUMNS)!r}")
        rows = fh.read().split()
    n = len(rows)
    out = np.empty((n, 6), dtype=np.float64)
    start = np.empty(n, dtype=np.int64)
    for i, line in enumerate(rows):
        parts = line.split(",")
        if len(parts) != 6:
            raise DataError(f"{path}: row {i + 2} has {len(parts)} fields, expected 6")
        try:
            start[i] = int(parts[0])
        except ValueError:
            raise DataError(f"{path}: row {i + 2} field start_ms is {parts[0]!r}, not an integer") from None
        for j in range(1, 6):
            try:
                out[i, j] = float(parts[j])
            except ValueError:
                raise DataError(f"{path}: row {i + 2} field {COLUMNS[j]} is {parts[j]!r}, not a number") from None
    if n >= 2:
        bad = np.nonzero(np.diff(start) <= 0)[0]
        if len(bad):
            i = int(bad[0])
            raise DataError(
                f"{path}: start_ms not strictly increasing at row {i + 3} ({start[i + 1]} after {start[i]})"
            )
        interval_ms = int(np.min(np.diff(start)))
    else:
        interval_ms = 60_000
    s = Series(symbol_from_path(path), str(path), start, *(out[:, j].copy() for j in range(1, 6)), interval_ms)
    s.gaps = find_gaps(start, interval_ms)
    return s


def expand_paths(inputs: list[str | Path]) -> list[Path]:
    """Turn a mix of directories and files into a sorted list of ``*.csv`` files."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths.extend(sorted(q for q in p.glob("*.csv")))
        elif p.is_file():
            paths.append(p)
        else:
            raise DataError(f"{p}: no such file or directory")
    if not paths:
        raise DataError(f"no CSV files found in {', '.join(str(i) for i in inputs)}")
    return paths


def load_dataset(inputs: list[str | Path], interval: str | None = None) -> list[Series]:
    """Read every CSV under ``inputs``; all must share one bar length (and match ``interval`` if given)."""
    series = [read_csv(p) for p in expand_paths(inputs)]
    if interval is not None:
        series = [s for s in series if s.interval == interval]
        if not series:
            raise DataError(f"no files with interval {interval!r} in {inputs}")
    lengths = {s.interval for s in series}
    if len(lengths) > 1:
        listing = ", ".join(f"{Path(s.path).name}={s.interval}" for s in series)
        raise DataError(f"files mix bar lengths ({listing}); pass --interval or separate folders")
    symbols = [s.symbol for s in series]
    dup = {x for x in symbols if symbols.count(x) > 1}
    if dup:
        raise DataError(f"symbol(s) {sorted(dup)} appear in more than one file")
    return series


def gap_report(series: list[Series]) -> list[dict]:
    """Summarise each file's rows, range and gaps for the report."""
    out = []
    for s in series:
        out.append(
            {
                "symbol": s.symbol,
                "file": Path(s.path).name,
                "rows": len(s),
                "first_start_ms": int(s.start_ms[0]) if len(s) else None,
                "last_start_ms": int(s.start_ms[-1]) if len(s) else None,
                "gaps": len(s.gaps),
                "missing_bars": int(sum(g[1] for g in s.gaps)),
            }
        )
    return out


def regularize(s: Series) -> tuple[Series, np.ndarray]:
    """Put the series on a full grid of its bar length; missing bars become NaN rows.

    Returns the gridded series and a boolean mask of bars that were really present. The feature kernels
    fill NaN bars forward (the daemon's missing-bar policy), and labels/training skip rows near them.
    """
    if not s.gaps:
        return s, np.ones(len(s), dtype=bool)
    n = int((s.start_ms[-1] - s.start_ms[0]) // s.interval_ms) + 1
    pos = ((s.start_ms - s.start_ms[0]) // s.interval_ms).astype(np.int64)
    grid = s.start_ms[0] + np.arange(n, dtype=np.int64) * s.interval_ms
    cols = []
    for a in (s.open, s.high, s.low, s.close, s.volume):
        full = np.full(n, np.nan)
        full[pos] = a
        cols.append(full)
    present = np.zeros(n, dtype=bool)
    present[pos] = True
    g = Series(s.symbol, s.path, grid, *cols, s.interval_ms)
    return g, present
