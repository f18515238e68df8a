"""Helpers shared by the feed, fake-Bybit and daemon tests (not a test module)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from daemon.tools.replay import CsvRow, read_kline_csv
from kernels.layout import WINDOW

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
# Where a fake opens its first live bar: the REST history before it (warmup_bars + 5 asked for, WINDOW needed)
# is enough to warm the model, so the first close after start is signalled.
OPEN_INDEX = WINDOW + 19


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


class LineSink:
    """A binary stream standing in for stdout: collects whole lines and parses them as JSON."""

    def __init__(self) -> None:
        self.buffer = b""

    def write(self, data: bytes) -> int:
        self.buffer += data
        return len(data)

    def flush(self) -> None:
        pass

    @property
    def lines(self) -> list[dict]:
        import json

        return [json.loads(x) for x in self.buffer.decode().splitlines()]


def daemon_config(fake, symbols=("BTCUSDT",), artifact="", **sections):
    """A validated config pointing at ``fake`` with short heartbeats and fast backoff."""
    from daemon.core.config import parse_config

    raw = {
        "feed": {"ws_url": fake.ws_url, "rest_url": fake.rest_url, "symbols": list(symbols), "interval": "5",
                 "ping_interval_s": 0.1, "pong_timeout_s": 1.0, "ack_timeout_s": 2.0, "open_timeout_s": 2.0},
        "backoff": {"initial_s": 0.01, "max_s": 0.05},
        "rest": {"max_attempts": 4, "timeout_s": 5},
        "model": {"artifact": str(artifact) or "unused.npz"},
        "log": {"latency_summary_s": 0.2},
    }
    for name, table in sections.items():
        raw.setdefault(name, {}).update(table)
    return parse_config(raw, source="<test>")


class InProcessDaemon:
    """Run a Service in this event loop against a fake; ``lines`` are its stdout lines as dicts."""

    def __init__(self, fake, artifact, symbols=("BTCUSDT",), **sections) -> None:
        from daemon.core.model import Model
        from daemon.aio.service import Service

        self.fake = fake
        self.sink = LineSink()
        self.cfg = daemon_config(fake, symbols, artifact, **sections)
        self.service = Service(self.cfg, Model.load(artifact), out=self.sink)

    @property
    def lines(self) -> list[dict]:
        return self.sink.lines

    async def __aenter__(self):
        self.task = asyncio.create_task(self.service.run())
        await self.ready()
        return self

    async def ready(self) -> None:
        """Wait until every served symbol is subscribed and warmed up to the fake's open bar."""
        from daemon.core.parser import kline_topic

        served = [s for s in self.cfg.feed.symbols if s in self.fake.rows and s not in self.fake.faults.refused_symbols]
        # The daemon's own view too: the fake counts a topic subscribed when it sends the ack, before the
        # daemon has read it.
        await wait_until(lambda: all(self.fake.subscribed(kline_topic("5", s)) for s in served)
                         and self.service.feed.stats.subscribed
                         and all(self.service.pipelines[s].next_start_ms == self.fake.open_start_ms
                                 and self.service.pipelines[s].fetch is None for s in served),
                         what="subscription and warm-up")

    async def __aexit__(self, *exc) -> None:
        self.service.stop()
        await asyncio.wait_for(self.task, 10)

    def starts(self, symbol: str) -> list[int]:
        return [x["start"] for x in self.lines if x["symbol"] == symbol]

    async def wait_for_start(self, symbol: str, start_ms: int) -> None:
        """Wait until a signal for (symbol, start_ms) has been written."""
        await wait_until(lambda: start_ms in self.starts(symbol), what=f"signal {symbol} {start_ms}")
