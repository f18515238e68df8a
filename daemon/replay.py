"""``kdsignal replay``: drive the live pipeline objects from a recorded kline CSV and print the signal lines.

The CSV schema is the one of ``data/`` and ``../shared/data``: ``start_ms,open,high,low,close,volume``.
Rows become :class:`daemon.parser.Candle` objects through the same conversion as live pushes, and go through
the same :class:`daemon.pipeline.Pipeline` and :class:`daemon.output.SignalWriter` as ``kdsignal run``,
so the lines are identical to the live ones except ``inference_us``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

from daemon.parser import INTERVAL_MS, Candle, FrameError, _candle

__all__ = ["CsvRow", "ReplayError", "add_arguments", "read_kline_csv", "replay", "row_candle", "run_cli"]

HEADER = ("start_ms", "open", "high", "low", "close", "volume")


class ReplayError(ValueError):
    """A replay input problem; the message names the file, line and field."""


class CsvRow(NamedTuple):
    """One CSV row, prices kept as the exact strings (the fake serves them verbatim)."""

    start_ms: int
    open: str
    high: str
    low: str
    close: str
    volume: str


def read_kline_csv(path: str | Path) -> list[CsvRow]:
    """Read a kline CSV; raises :class:`ReplayError` naming the line and field of the first bad value."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ReplayError(f"{path} does not exist") from None
    if not lines or tuple(h.strip() for h in lines[0].split(",")) != HEADER:
        raise ReplayError(f"{path}:1: header is {lines[0] if lines else ''!r}, expected {','.join(HEADER)}")
    rows: list[CsvRow] = []
    prev = None
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != len(HEADER):
            raise ReplayError(f"{path}:{lineno}: {len(parts)} fields, expected {len(HEADER)}")
        try:
            start = int(parts[0])
        except ValueError:
            raise ReplayError(f"{path}:{lineno}: start_ms is {parts[0]!r}, expected an integer") from None
        for name, value in zip(HEADER[1:], parts[1:]):
            try:
                float(value)
            except ValueError:
                raise ReplayError(f"{path}:{lineno}: {name} is {value!r}, expected a number") from None
        if prev is not None and start <= prev:
            raise ReplayError(f"{path}:{lineno}: start_ms {start} does not follow {prev}")
        prev = start
        rows.append(CsvRow(start, *parts[1:]))
    return rows


def row_candle(row: CsvRow, symbol: str, interval: str) -> Candle:
    """Convert a CSV row with the parser's own conversion (bit-identical to a live push of the same strings)."""
    entry = {"open": row.open, "high": row.high, "low": row.low, "close": row.close, "volume": row.volume}
    return _candle(symbol, interval, row.start_ms, entry)
