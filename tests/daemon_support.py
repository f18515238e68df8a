"""Helpers shared by the feed, fake-Bybit and daemon tests (not a test module)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from daemon.replay import CsvRow, read_kline_csv

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


def sample_rows(symbols=("BTCUSDT",), n: int | None = None, interval: str = "5") -> dict[str, list[CsvRow]]:
    """The first ``n`` real candles of each symbol from data/."""
    return {s: read_kline_csv(DATA / f"{s}-{interval}m.csv")[:n] for s in symbols}


async def wait_until(predicate, timeout_s: float = 15.0, what: str = "condition") -> None:
    """Poll ``predicate()`` until it is true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.005)
