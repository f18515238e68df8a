"""``kdsignal fetch``: download closed klines from Bybit's REST ``/v5/market/kline`` into a CSV.

The range is walked in chunks of one page (``page_limit`` bars), oldest chunk first; inside a chunk the
shared REST client (``daemon.aio.rest.RestClient``) pages backwards through Bybit's newest-first lists, drops the
still-open candle and retries 429, 5xx, network errors and retryable ``retCode`` answers. Each chunk is
appended and flushed before the next is asked for, so an interrupted download resumes where it stopped:
rerunning the same command reads the last ``start_ms`` of the existing file and continues after it.

Several symbols in one call (``--symbol BTCUSDT ETHUSDT`` or ``--symbol BTCUSDT,ETHUSDT``) go one after the
other into ``--out``: a directory (``SYMBOL-{interval}m.csv`` each, the layout of ``data/``) or a path with
``{symbol}`` in it; one symbol may also go to a plain ``.csv`` path. A range in which Bybit has no closed
candle for a symbol (before its listing, in the future, a wrong category) is said so, by name, and leaves no
file behind; the command then exits 1.

Output schema: ``start_ms,open,high,low,close,volume``, the schema ``kdsignal train`` reads. Runs on a service
install: the progress bar uses tqdm when it is installed (the ``train`` extra) and a plain counter otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
from pathlib import Path

from daemon.core.parser import INTERVAL_MS

HEADER = "start_ms,open,high,low,close,volume"


class FetchError(RuntimeError):
    """The output file cannot be resumed, or the arguments do not make sense."""


class _PlainProgress:
    """What tqdm would show, as one rewritten line on a terminal (nothing otherwise): tqdm is optional."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.n = total, desc, 0
        self._tty = sys.stderr.isatty()

    def update(self, k: int) -> None:
        self.n += k
        if self._tty:
            sys.stderr.write(f"\r{self.desc}: {self.n}/{self.total} bars")
            sys.stderr.flush()

    def close(self) -> None:
        if self._tty:
            sys.stderr.write("\n")


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return _PlainProgress(total, desc)
    return tqdm(total=total, desc=desc, unit="bar", file=sys.stderr, dynamic_ncols=True)


def output_path(out: str, symbol: str, interval: str, several: bool) -> Path:
    """Where ``symbol`` goes: ``out`` with ``{symbol}`` filled in, ``out`` itself (one symbol, a .csv path),
    or ``out/SYMBOL-{interval}m.csv``."""
    if "{symbol}" in out:
        return Path(out.replace("{symbol}", symbol))
    path = Path(out)
    if not several and path.suffix.lower() == ".csv":
        return path
    if path.suffix.lower() == ".csv":
        raise FetchError(f"--out {out} is one file but several symbols were given; "
                         "give a directory or a path with {symbol} in it")
    return path / f"{symbol}-{interval}m.csv"


def parse_time_ms(text: str) -> int:
    """Accept Unix ms (digits) or an ISO date/time (UTC unless it names an offset)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FetchError(f"time {text!r} is neither Unix ms nor an ISO date") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def last_start_ms(path: Path) -> int | None:
    """The ``start_ms`` of the last row of an existing output file (None: absent or header only)."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, "rb") as fh:
        header = fh.readline().decode("ascii", "replace").strip()
        if header != HEADER:
            raise FetchError(f"{path}: header is {header!r}, expected {HEADER!r}; refusing to append")
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 4096))
        tail = fh.read().decode("ascii", "replace").splitlines()
    rows = [r for r in tail if r.strip() and r.strip() != HEADER]
    if not rows:
        return None
    first = rows[-1].split(",")[0]
    if not first.isdigit():
        raise FetchError(f"{path}: last row starts with {first!r}, not a start_ms; refusing to append")
    return int(first)


def _fmt(x: float) -> str:
    return repr(float(x))


async def fetch(*, base_url: str, symbol: str, interval: str, start_ms: int, end_ms: int | None, out: Path,
                category: str = "linear", page_limit: int = 1000, max_attempts: int = 8, backoff=None,
                progress: bool = True, sleep=None) -> dict:
    """Fetch closed candles with start in ``[start_ms, end_ms]`` (``end_ms`` None: now) and append to ``out``.

    Returns counts: rows written, rows already present, requests, retries, missing bars inside the range.
    """
    import aiohttp

    from daemon.aio.rest import RestClient

    if interval not in INTERVAL_MS:
        raise FetchError(f"interval {interval!r} is not a Bybit kline interval ({', '.join(INTERVAL_MS)})")
    step = INTERVAL_MS[interval]
    if end_ms is None:
        end_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    if end_ms < start_ms:
        raise FetchError(f"end ({end_ms}) is before start ({start_ms})")
    out.parent.mkdir(parents=True, exist_ok=True)
    last = last_start_ms(out)
    new_file = not out.exists() or out.stat().st_size == 0
    already = 0
    lo = start_ms
    if last is not None:
        lo = max(start_ms, last + step)
        already = 1
    total_bars = max(0, (end_ms - lo) // step + 1)
    written, missing, prev = 0, 0, last
    bar = _progress(total_bars, f"{symbol} {interval}") if progress else None
    kwargs = {"page_limit": page_limit, "max_attempts": max_attempts}
    if backoff is not None:
        kwargs["backoff"] = backoff
    if sleep is not None:
        kwargs["sleep"] = sleep
    async with aiohttp.ClientSession() as session:
        client = RestClient(base_url, category, session, **kwargs)
        with open(out, "a", encoding="ascii", newline="\n") as fh:
            if last is None:
                fh.seek(0, os.SEEK_END)
                if fh.tell() == 0:
                    fh.write(HEADER + "\n")
            while lo <= end_ms:
                hi = min(end_ms, lo + page_limit * step - 1)
                candles = await client.closed_klines(symbol, interval, start_ms=lo, end_ms=hi)
                candles = [c for c in candles if prev is None or c.start_ms > prev]
                for c in candles:
                    if prev is not None and c.start_ms - prev > step:
                        missing += (c.start_ms - prev) // step - 1
                    fh.write(f"{c.start_ms},{_fmt(c.open)},{_fmt(c.high)},{_fmt(c.low)},{_fmt(c.close)},{_fmt(c.volume)}\n")
                    prev = c.start_ms
                fh.flush()
                os.fsync(fh.fileno())
                written += len(candles)
                if bar is not None:
                    bar.update(min(total_bars - bar.n, (hi - lo) // step + 1))
                if not candles and hi >= end_ms:
                    break  # nothing closed yet at the end of the range
                lo = hi + 1
        requests, retries = client.requests, client.retries
    if bar is not None:
        bar.close()
    if new_file and written == 0:
        out.unlink(missing_ok=True)  # a header-only file would look like a download that worked
    return {"written": written, "resumed": bool(already), "requests": requests, "retries": retries,
            "missing_bars": int(missing), "last_start_ms": prev}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kdsignal fetch``."""
    parser.add_argument("--symbol", "--symbols", dest="symbols", required=True, nargs="+", metavar="SYMBOL",
                        help="one or more symbols, e.g. BTCUSDT ETHUSDT (or BTCUSDT,ETHUSDT)")
    parser.add_argument("--interval", required=True, help="Bybit interval code: 1, 3, 5, 15, 30, 60, ..., D")
    parser.add_argument("--start", required=True, help="first candle start: Unix ms or ISO date (UTC)")
    parser.add_argument("--end", default=None, help="last candle start: Unix ms or ISO date (default: now)")
    parser.add_argument("--out", required=True,
                        help="a directory (SYMBOL-{interval}m.csv each), a path with {symbol}, or for one symbol "
                             "a .csv path; an existing file is resumed (appended to)")
    parser.add_argument("--category", default="linear", help="spot, linear or inverse (default linear)")
    parser.add_argument("--base-url", default="https://api.bybit.com", help="REST base URL")
    parser.add_argument("--page-limit", type=int, default=1000, help="rows per request (Bybit maximum 1000)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def run_cli(args: argparse.Namespace) -> int:
    """Entry point of ``kdsignal fetch``: 0 when every symbol got data, 1 when a range held none, 2 on errors."""
    from daemon.aio.rest import RestError

    symbols = [s.strip().upper() for arg in args.symbols for s in arg.split(",") if s.strip()]
    empty = []
    try:
        if not symbols or any(not s.isalnum() for s in symbols):
            raise FetchError(f"--symbol {' '.join(args.symbols)!r}: expected symbols like BTCUSDT")
        start = parse_time_ms(args.start)
        end = parse_time_ms(args.end) if args.end else None
        if not 1 <= args.page_limit <= 1000:
            raise FetchError(f"--page-limit {args.page_limit} is outside 1..1000")
        outs = {s: output_path(args.out, s, args.interval, len(symbols) > 1) for s in symbols}
        for symbol, out in outs.items():
            res = asyncio.run(fetch(base_url=args.base_url, symbol=symbol, interval=args.interval,
                                    start_ms=start, end_ms=end, out=out, category=args.category,
                                    page_limit=args.page_limit, progress=not args.no_progress))
            if res["written"] == 0 and not res["resumed"]:
                empty.append(symbol)
                print(f"kdsignal fetch: {symbol}: no closed candles (interval {args.interval}, {args.category}) "
                      f"on Bybit from {_when(start)} to {_when(end) if end else 'now'}; nothing written (not listed "
                      f"yet in that range, a range in the future, or another category?)", file=sys.stderr)
                continue
            print(f"{out}: {res['written']} rows written ({'resumed' if res['resumed'] else 'new file'}), "
                  f"{res['requests']} requests, {res['retries']} retries, {res['missing_bars']} missing bars")
    except (FetchError, RestError) as e:
        print(f"kdsignal fetch: {e}", file=sys.stderr)
        return 2
    return 1 if empty else 0
