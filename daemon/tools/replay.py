"""``kdsignal replay``: drive the live pipeline objects from a recorded kline CSV and print the signal lines.

The CSV schema is the one of ``data/`` and ``../shared/data``: ``start_ms,open,high,low,close,volume``.
Rows become :class:`daemon.core.parser.Candle` objects through the same conversion as live pushes, and go through
the same :class:`daemon.core.pipeline.Pipeline` and :class:`daemon.aio.output.SignalWriter` as ``kdsignal run``,
so the lines are identical to the live ones except ``inference_us``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NamedTuple

from daemon.core.parser import INTERVAL_MS, Candle, FrameError, _candle

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


DEFAULT_ARTIFACT = Path(__file__).resolve().parents[2] / "models" / "default.npz"


def replay(rows: list[CsvRow], symbol: str, interval: str, model, writer, report=None) -> int:
    """Feed ``rows`` as closed candles through a fresh :class:`Pipeline` and write its signals.

    The file is the whole record, so a hole in it is reported (``report(first_start_ms, bars)``) and
    stepped over exactly as the live daemon does when REST cannot fill a gap (a hole longer than the
    feature window restarts the features cold). Returns the signal count.
    """
    from daemon.core.pipeline import GapUnfilled, Pipeline, Signal

    pipeline = Pipeline(symbol, interval, model, fetches_history=False)
    signals = 0
    for row in rows:
        pipeline.receive_close(row_candle(row, symbol, interval))
        for event in pipeline.events():
            if type(event) is Signal:
                writer.write(event)
                signals += 1
            elif type(event) is GapUnfilled and report is not None:
                report(event.first_start_ms, event.bars)
    return signals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the replay options."""
    parser.add_argument("--data", required=True, help="kline CSV: start_ms,open,high,low,close,volume")
    parser.add_argument("--symbol", required=True, help="symbol the lines are labelled with, e.g. BTCUSDT")
    parser.add_argument("--interval", default="5", help="kline interval of the file (default 5)")
    parser.add_argument("--artifact", default=str(DEFAULT_ARTIFACT), help="student artifact (.npz)")


def run_cli(args: argparse.Namespace) -> int:
    """Replay a CSV and print one signal line per bar after warm-up."""
    from daemon.core.artifact import ArtifactError
    from daemon.core.model import Model
    from daemon.aio.output import SignalWriter

    def report(first_ms: int, n: int) -> None:
        print(f'{{"event": "gap_unfilled", "symbol": "{args.symbol}", "first_missing_start_ms": {first_ms}, '
              f'"bars": {n}}}', file=sys.stderr)

    try:
        if args.interval not in INTERVAL_MS:
            raise ReplayError(f"--interval {args.interval!r} is not one of {', '.join(INTERVAL_MS)}")
        model = Model.load(args.artifact)
        if str(model.interval) != args.interval:
            raise ReplayError(f"artifact {args.artifact} is for interval {model.interval!r}, "
                              f"--interval is {args.interval!r}")
        rows = read_kline_csv(args.data)
        replay(rows, args.symbol, args.interval, model, SignalWriter(sys.stdout.buffer), report)
    except BrokenPipeError:  # e.g. piped into `head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ReplayError, ArtifactError, FrameError, OSError) as exc:
        print(f"kdsignal replay: {exc}", file=sys.stderr)
        return 2
    return 0
