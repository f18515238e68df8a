"""``kdsignal replay``: drive the live pipeline objects from a recorded kline CSV and print the signal lines.

The CSV schema is the one of ``data/`` and ``../shared/data``: ``start_ms,open,high,low,close,volume``.
Rows become :class:`daemon.core.parser.Candle` objects through the same conversion as live pushes, and go through
the same :class:`daemon.core.pipeline.Pipeline` and :class:`daemon.aio.output.SignalWriter` as ``kdsignal run``,
so the lines are identical to the live ones except ``inference_us``.

Files get the rules frames get. The file is streamed (:func:`iter_kline_csv`, lines of at most
``MAX_LINE_BYTES``), so memory does not grow with its size. A start that is not an integer, lies off the
interval's grid, or does not follow the previous row is an error naming the line. A price that is not
finite or not positive, a negative volume, or a high below the low follows the README's NaN policy: the
bar is missing and the kernels fill it forward (counted, reported once at the end). A hole in the file is
stepped over as missing bars (reported); a hole of a whole feature window or more resets the state
instead (a fresh pipeline warming up on the bars after it), so any gap costs the same.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from daemon.core.parser import INTERVAL_MS, Candle, FrameError, _candle, grid_offset_ms

__all__ = ["CsvRow", "ReplayError", "ReplayStats", "add_arguments", "iter_kline_csv", "read_kline_csv", "replay",
           "row_candle", "run_cli"]

HEADER = ("start_ms", "open", "high", "low", "close", "volume")
MAX_LINE_BYTES = 4096
MAX_START_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


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


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    # Line by line with a cap on each line's length: a file without newlines cannot be read whole.
    with open(path, "rb") as f:
        lineno = 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            lineno += 1
            if len(raw) > MAX_LINE_BYTES:
                raise ReplayError(f"{path}:{lineno}: line longer than {MAX_LINE_BYTES} bytes")
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ReplayError(f"{path}:{lineno}: not UTF-8 (byte {exc.start} of the line)") from None


def iter_kline_csv(path: str | Path, interval: str | None = None) -> Iterator[CsvRow]:
    """Stream a kline CSV row by row; raise :class:`ReplayError` naming the line and field of the first bad one.

    With ``interval``, every start must also lie on that interval's grid.
    """
    path = Path(path)
    step_ms = INTERVAL_MS[interval] if interval is not None else None
    offset_ms = grid_offset_ms(interval) if interval is not None else 0
    try:
        lines = _lines(path)
        first = next(lines, None)
        header = tuple(h.strip() for h in first[1].split(",")) if first else ()
        if header != HEADER:
            shown = first[1].strip()[:80] if first else ""
            raise ReplayError(f"{path}:1: header is {shown!r}, expected {','.join(HEADER)}")
        prev = None
        for lineno, line in lines:
            if not line.strip():
                continue
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != len(HEADER):
                raise ReplayError(f"{path}:{lineno}: {len(parts)} fields, expected {len(HEADER)}")
            raw = parts[0]
            if not (raw.isascii() and raw.isdigit() and len(raw) <= 19):
                raise ReplayError(f"{path}:{lineno}: start_ms is {raw[:40]!r}, expected an integer of Unix ms")
            start = int(raw)
            if start > MAX_START_MS:
                raise ReplayError(f"{path}:{lineno}: start_ms {start} is after the year 9999")
            for name, value in zip(HEADER[1:], parts[1:], strict=True):
                try:
                    float(value)
                except ValueError:
                    raise ReplayError(f"{path}:{lineno}: {name} is {value[:40]!r}, expected a number") from None
            if step_ms is not None and (start - offset_ms) % step_ms:
                raise ReplayError(f"{path}:{lineno}: start_ms {start} is off the {step_ms} ms grid of interval "
                                  f"{interval} (by {(start - offset_ms) % step_ms} ms)")
            if prev is not None and start <= prev:
                raise ReplayError(f"{path}:{lineno}: start_ms {start} does not follow {prev} (rows must be in "
                                  "increasing time order, each start once)")
            prev = start
            yield CsvRow(start, *parts[1:])
    except FileNotFoundError:
        raise ReplayError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise ReplayError(f"{path} is a folder, expected a CSV file") from None


def read_kline_csv(path: str | Path, interval: str | None = None) -> list[CsvRow]:
    """Read a whole kline CSV into a list (small files: tests, the fake); see :func:`iter_kline_csv`."""
    return list(iter_kline_csv(path, interval))


def row_candle(row: CsvRow, symbol: str, interval: str) -> Candle:
    """Convert a CSV row with the parser's own conversion (bit-identical to a live push of the same strings)."""
    entry = {"open": row.open, "high": row.high, "low": row.low, "close": row.close, "volume": row.volume}
    return _candle(symbol, interval, row.start_ms, entry)


DEFAULT_ARTIFACT = Path(__file__).resolve().parents[2] / "models" / "default.npz"
_NAN = float("nan")


class ReplayStats:
    """What a replay met besides signals: bars filled forward, holes stepped over, state resets."""

    def __init__(self) -> None:
        self.signals = 0
        self.filled = 0
        self.first_filled_ms: int | None = None
        self.unfilled_bars = 0
        self.resets = 0


def replay(rows: Iterable[CsvRow], symbol: str, interval: str, model, writer,
           report: Callable[[int, int], None] | None = None, *,
           on_reset: Callable[[int, int], None] | None = None, stats: ReplayStats | None = None) -> int:
    """Feed ``rows`` (any iterable, consumed once) as closed candles through the pipeline; return the signal count.

    The file is the whole record, so a hole in it is reported (``report(first_start_ms, bars)``) and
    stepped over exactly as the live daemon does when REST cannot fill a gap; a hole longer than the feature
    window resets the features (``on_reset(first_start_ms, bars)`` too) and they warm again on the bars
    after it, so the work per hole is bounded whatever its length. A row whose values the parser refuses
    (NaN, zero or negative price, negative volume, high below low) is a missing bar, filled forward by the
    kernels and counted in ``stats``.
    """
    from daemon.core.pipeline import FeaturesReset, GapUnfilled, Pipeline, Signal

    stats = stats if stats is not None else ReplayStats()
    pipeline = Pipeline(symbol, interval, model, fetches_history=False)
    signals = 0
    for row in rows:
        try:
            candle = row_candle(row, symbol, interval)
        except FrameError:  # the NaN policy: a missing bar, filled forward by the kernels
            candle = Candle(symbol, interval, row.start_ms, _NAN, _NAN, _NAN, _NAN, _NAN)
            stats.filled += 1
            if stats.first_filled_ms is None:
                stats.first_filled_ms = row.start_ms
        pipeline.receive_close(candle)
        for event in pipeline.events():
            kind = type(event)
            if kind is Signal:
                writer.write(event)
                signals += 1
            elif kind is GapUnfilled:
                stats.unfilled_bars += event.bars
                if report is not None:
                    report(event.first_start_ms, event.bars)
            elif kind is FeaturesReset:
                stats.resets += 1
                if on_reset is not None:
                    on_reset(event.first_missing_start_ms, event.bars)
    stats.signals = signals
    return signals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the replay options."""
    parser.add_argument("--data", required=True, help="kline CSV: start_ms,open,high,low,close,volume")
    parser.add_argument("--symbol", required=True, help="symbol the lines are labelled with, e.g. BTCUSDT")
    parser.add_argument("--interval", default="5", help="kline interval of the file (default 5)")
    parser.add_argument("--artifact", default=str(DEFAULT_ARTIFACT), help="student artifact (.npz)")


def run_cli(args: argparse.Namespace) -> int:
    """Replay a CSV and print one signal line per bar after warm-up."""
    from daemon.aio.output import SignalWriter
    from daemon.core.artifact import ArtifactError
    from daemon.core.exitcodes import EXIT_CONFIG
    from daemon.core.model import KernelUnavailable, Model

    def event(name: str, **fields) -> None:
        body = ", ".join(f'"{k}": {v}' for k, v in fields.items())
        print(f'{{"event": "{name}", "symbol": "{args.symbol}", {body}}}', file=sys.stderr)

    def report(first_ms: int, n: int) -> None:
        event("gap_unfilled", first_missing_start_ms=first_ms, bars=n)

    def on_reset(first_ms: int, n: int) -> None:
        event("features_reset", first_missing_start_ms=first_ms, bars=n)

    stats = ReplayStats()
    try:
        if args.interval not in INTERVAL_MS:
            raise ReplayError(f"--interval {args.interval!r} is not one of {', '.join(INTERVAL_MS)}")
        model = Model.load(args.artifact)
        if str(model.interval) != args.interval:
            raise ReplayError(f"artifact {args.artifact} is for interval {model.interval!r}, "
                              f"--interval is {args.interval!r}")
        rows = iter_kline_csv(args.data, args.interval)
        replay(rows, args.symbol, args.interval, model, SignalWriter(sys.stdout.buffer), report,
               on_reset=on_reset, stats=stats)
    except BrokenPipeError:  # e.g. piped into `head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KernelUnavailable as exc:  # like the daemon's: rebuilding, not retrying, fixes it
        print(f"kdsignal replay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (ReplayError, ArtifactError, FrameError, OSError) as exc:
        sys.stdout.flush()
        print(f"kdsignal replay: {exc}", file=sys.stderr)
        return 2
    finally:
        if stats.filled:
            event("bars_filled_forward", bars=stats.filled, first_start_ms=stats.first_filled_ms)
    return 0
