"""A loopback stand-in for Bybit v5: kline WebSocket (``websockets``) and REST ``/v5/market/kline`` (aiohttp).

It serves candles from CSV files in the ``data/`` schema (``start_ms,open,high,low,close,volume``), speaking
the real v5 message shapes: subscribe acks tied by ``req_id``, JSON ping answered by
``{"ret_msg":"pong","op":"ping",...}``, kline snapshots with several ``confirm:false`` updates before the
``confirm:true`` close, REST pages newest first including the still-open candle, ``retCode`` errors.

Time is a seam: the fake's "now" is read from a :class:`BarClock` (the open bar's start plus a fraction of the
interval). Tests advance it bar by bar with :meth:`FakeBybit.step`; ``--bar-s`` plays bars in real time, so a
5-minute bar can pass in 0.05 s. ``play`` keeps to an absolute schedule (:class:`DeadlinePacer`), so the
time its sends take does not stretch the bars: it offers its nominal rate until it is CPU-bound.

Faults, for tests and for rehearsing a deployment: garbage frames, duplicate closes, a close and the next
open in one ``data`` array, lost closes, server-side drops with new connections refused for a while, a
half-open stall (no data, no pong), refused topics, REST HTTP/retCode errors in a scripted order. Hostile
ones: extra closes whose start is far in the future or a millisecond off the grid, and scripted REST
answers that are huge (streamed, with or without a Content-Length) or carry such a start in a row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from daemon.core.parser import INTERVAL_MS, kline_topic
from daemon.tools.replay import CsvRow, read_kline_csv

__all__ = [
    "GARBAGE_FRAMES",
    "BarClock",
    "DeadlinePacer",
    "FakeBybit",
    "Faults",
    "add_arguments",
    "far_future_start",
    "parse_rest_faults",
    "run_cli",
]

_dumps = json.JSONEncoder(separators=(",", ":")).encode

# Frames a client must count and skip without losing its place (each one is malformed in its own way).
GARBAGE_FRAMES: tuple[str | bytes, ...] = (
    "this is not json",
    '{"topic":"kline.5.BTCUSDT","data":[{"start":',
    "[1,2,3]",
    '{"topic":"orderbook.50.BTCUSDT","type":"snapshot","data":{"s":"BTCUSDT"}}',
    '{"topic":"kline.5.BTCUSDT","type":"snapshot","data":{}}',
    '{"topic":"kline.5.BTCUSDT","type":"snapshot","data":[{"start":"1","confirm":true}]}',
    '{"topic":"kline.5.BTCUSDT","type":"snapshot","data":[{"start":1,"end":2,"interval":"5","open":"NaN",'
    '"close":"1","high":"1","low":"1","volume":"1","turnover":"1","confirm":true,"timestamp":3}]}',
    '{"topic":"kline.5.BTCUSDT","type":"snapshot","data":[{"start":1,"confirm":"yes"}]}',
    '{"topic":"kline.5.ZZZUSDT","type":"snapshot","data":[{"start":1,"end":2,"interval":"5","open":"1",'
    '"close":"1","high":"1","low":"1","volume":"1","turnover":"1","confirm":true,"timestamp":3}]}',
    '{"hello":"world"}',
    b"\xff\xfe\x00 binary garbage",
)


def far_future_start(interval_ms: int) -> int:
    """A start on the interval's grid near 2**62 ms: what a corrupted or hostile push might carry."""
    return (2**62 // interval_ms) * interval_ms


class BarClock:
    """The fake exchange's clock: ``now_ms = open_start_ms + fraction * interval_ms``.

    The bar starting at ``open_start_ms`` is the open one; every earlier bar is closed.
    """

    def __init__(self, open_start_ms: int, interval_ms: int, fraction: float = 0.5) -> None:
        self.open_start_ms = open_start_ms
        self.interval_ms = interval_ms
        self.fraction = fraction

    def now_ms(self) -> int:
        """Return the exchange time in Unix ms."""
        return self.open_start_ms + int(self.fraction * self.interval_ms)


class DeadlinePacer:
    """Rounds of sends on an absolute schedule: round ``k`` is due at ``t0 + k * period_s`` of ``loop.time()``.

    :meth:`wait` is awaited after each round and sleeps until the next one is due, so the time the sends
    themselves take comes out of the period instead of adding to it (a fixed sleep after each round, as the
    fake used to do, delivered 7,000 of a nominal 10,000 signals/s at 500 symbols).

    Falling behind: a round that is already due goes out at once (after one yield to the event loop, so the
    fake's REST and WebSocket handlers still run). Lateness of up to one period is made up by the following
    rounds (that absorbs the event loop waking late). The fake never bursts to catch up with more than that:
    when it finds itself more than one period late (it is CPU-bound, or the scheduler or a garbage
    collection held it up), the missed slots are given up and the schedule starts again from now, counted
    in :attr:`slips`. So it never offers more than its nominal rate over any stretch of a few rounds, and when
    it cannot keep to the schedule it sends back to back, at the rate its CPU allows.
    """

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._time = asyncio.get_running_loop().time
        self._due = self._time()
        self.slips = 0

    async def wait(self) -> None:
        """Sleep until the next round is due (see the class docstring for a late round)."""
        self._due += self.period_s
        late = self._time() - self._due
        if late < 0:
            await asyncio.sleep(-late)
            return
        if late > self.period_s:
            self._due += late
            self.slips += 1
        await asyncio.sleep(0)


@dataclass
class Faults:
    """Scriptable misbehaviour. Counters ``*_every`` apply to bar numbers counted from 1 by this fake."""

    garbage_per_bar: int = 0          # garbage frames sent before each bar's first update
    duplicate_close: bool = False     # every close is sent twice, and once more after the next open
    merge_close_open: bool = False    # the close and the next bar's first update share one data array
    lose_close_every: int = 0         # the close push of every Nth bar is never sent
    drop_every: int = 0               # drop all connections after every Nth bar ...
    refuse_after_drop: int = 0        # ... and refuse this many connection attempts afterwards
    stall_every: int = 0              # every Nth bar, current connections go half-open (no data, no pong)
    stall_new_connections: int = 0    # the next N accepted connections are half-open from the start
    refused_symbols: set[str] = field(default_factory=set)  # subscribable symbols answered "handler not found"
    # Next REST answers, in order: HTTP status ints, ("retcode", n), ("huge", n_bytes, declared) for a streamed
    # body of that size (with a Content-Length when declared), ("off_grid",) or ("far_future",) for a normal
    # page whose newest row's start is 1 ms off the grid or far in the future.
    rest_errors: list = field(default_factory=list)
    far_future_every: int = 0         # every Nth bar, an extra close push whose start is far in the future
    off_grid_every: int = 0           # every Nth bar, an extra close push whose start is 1 ms off the grid


class _Conn:
    __slots__ = ("ws", "conn_id", "topics", "stalled")

    def __init__(self, ws: ServerConnection, conn_id: str) -> None:
        self.ws = ws
        self.conn_id = conn_id
        self.topics: set[str] = set()
        self.stalled = False


class FakeBybit:
    """Serve ``rows[symbol]`` as Bybit v5 klines on 127.0.0.1; see the module docstring for the faults."""

    def __init__(self, rows: dict[str, list[CsvRow]], interval: str = "5", *, category: str = "linear",
                 start_index: int = 100, updates_per_bar: int = 3, faults: Faults | None = None,
                 clock: BarClock | None = None, host: str = "127.0.0.1", ws_port: int = 0,
                 rest_port: int = 0) -> None:
        if interval not in INTERVAL_MS:
            raise ValueError(f"interval {interval!r} is not a Bybit kline interval")
        self.interval = interval
        self.interval_ms = INTERVAL_MS[interval]
        self.category = category
        self.rows = {sym: {r.start_ms: r for r in rs} for sym, rs in rows.items()}
        self.starts = sorted({r.start_ms for rs in rows.values() for r in rs})
        if len(self.starts) <= start_index:
            raise ValueError(f"start_index {start_index} is beyond the {len(self.starts)} bars in the data")
        self.clock = clock or BarClock(self.starts[start_index], self.interval_ms)
        self.updates_per_bar = updates_per_bar
        self.faults = faults or Faults()
        self.host = host
        self._ws_port = ws_port
        self._rest_port = rest_port
        self._conns: set[_Conn] = set()
        self._conn_ids = itertools.count(1)
        self._refuse_remaining = 0
        self._bar_no = 0
        self._lose_next_close = False
        self._ws_server = None
        self._runner: web.AppRunner | None = None
        self._pending_dup: list[tuple[str, str]] = []
        self.pacer: DeadlinePacer | None = None  # the schedule of the running play(), if any
        # Observations for tests.
        self.pings = 0
        self.connections_accepted = 0
        self.connections_refused = 0
        self.subscribe_requests: list[list[str]] = []
        self.rest_requests: list[dict[str, str]] = []
        self.closes_sent: dict[tuple[str, int], int] = {}
        self.hostile_sent = 0  # far-future and off-grid closes pushed
        self.huge_bytes_sent = 0  # bytes of huge REST bodies the client actually took

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> FakeBybit:
        """Bind both servers (port 0 picks free ports) and return self."""
        self._ws_server = await serve(self._ws_handler, self.host, self._ws_port, ping_interval=None,
                                      process_request=self._process_request, compression=None,
                                      close_timeout=1)
        app = web.Application()
        app.router.add_get("/v5/market/kline", self._rest_kline)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._rest_port)
        await site.start()
        return self

    async def stop(self) -> None:
        """Close every connection and both servers."""
        if self._ws_server is not None:
            for conn in list(self._conns):
                conn.ws.transport.abort()
            self._ws_server.close()
            await self._ws_server.wait_closed()
            self._ws_server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeBybit:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def ws_port(self) -> int:
        """The bound WebSocket port."""
        return next(iter(self._ws_server.sockets)).getsockname()[1]

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:PORT/v5/public/{category}``."""
        return f"ws://{self.host}:{self.ws_port}/v5/public/{self.category}"

    @property
    def rest_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the REST server."""
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    @property
    def live_connections(self) -> int:
        """Connections currently open (stalled ones included)."""
        return len(self._conns)

    def subscribed(self, topic: str) -> bool:
        """True when some healthy connection is subscribed to ``topic``."""
        return any(topic in c.topics and not c.stalled for c in self._conns)

    # ------------------------------------------------------------------ time and bars
    @property
    def open_start_ms(self) -> int:
        """Start of the bar that is currently open."""
        return self.clock.open_start_ms

    def has_next_bar(self) -> bool:
        """True while the data holds the open bar."""
        return self.clock.open_start_ms <= self.starts[-1]

    def closed_starts(self, symbol: str) -> list[int]:
        """Starts of the bars of ``symbol`` that are closed now, oldest first."""
        now = self.clock.now_ms()
        return [s for s in sorted(self.rows[symbol]) if s + self.interval_ms <= now]

    async def step(self, n: int = 1, *, pause_s: float = 0.0) -> int:
        """Play ``n`` bars: updates, then the close, then the clock moves to the next bar. Returns bars played.

        ``pause_s`` > 0 sleeps that long after each round of sends (the bars take longer than that).

        Without a pause the bars go out flat out, and a step does not yield to the event loop while the socket
        buffers take its frames (``websockets`` awaits a send only when the transport is paused). The REST
        server shares this loop, so a request made during a step is answered after it, at the clock the step
        left: a client that asked REST for anything during the burst (the catch-up after it subscribes, a gap)
        sees closed bars up to the end of a burst it has not read yet. A real exchange cannot do that (its
        stream and REST both run in real time); a client whose feature window is shorter than the burst takes
        it for a gap and re-warms. Before a burst longer than the client's window, wait until it has no fetch
        out (``tests.support.wait_settled``, ``InProcessDaemon.ready``), or :meth:`play` in real time.
        """
        pause = (lambda: asyncio.sleep(pause_s)) if pause_s else None
        played = 0
        for _ in range(n):
            if not self.has_next_bar():
                break
            await self._play_bar(pause)
            played += 1
        return played

    async def play(self, bar_s: float) -> DeadlinePacer:
        """Play bars in real time, one per ``bar_s`` seconds, until the data runs out; return the pacer.

        The ``updates_per_bar + 1`` rounds of a bar (the updates, then the close) are spread evenly over it on
        the schedule of a :class:`DeadlinePacer`, which :attr:`pacer` exposes while it plays.
        """
        self.pacer = pacer = DeadlinePacer(bar_s / (self.updates_per_bar + 1))
        while self.has_next_bar():
            await self._play_bar(pacer.wait)
        return pacer

    def lose_next_close(self) -> None:
        """The next close push (all symbols) is never sent."""
        self._lose_next_close = True

    async def drop(self, refuse_next: int = 0) -> None:
        """Cut every connection without a close frame and refuse the next ``refuse_next`` connection attempts."""
        self._refuse_remaining += refuse_next
        for conn in list(self._conns):
            conn.ws.transport.abort()
        self._conns.clear()

    def stall(self) -> None:
        """Make current connections half-open: they stay up but get no data, no acks and no pongs."""
        for conn in self._conns:
            conn.stalled = True

    async def send_raw(self, frames: Iterable[str | bytes]) -> None:
        """Send raw frames to every healthy connection (for garbage tests)."""
        for frame in frames:
            for conn in list(self._conns):
                if not conn.stalled:
                    with contextlib.suppress(ConnectionClosed):
                        await conn.ws.send(frame)

    def _candle(self, row: CsvRow, progress: float | None) -> dict:
        start = row.start_ms
        end = start + self.interval_ms - 1
        if progress is None:  # the close: exact CSV strings
            o, h, lo, c, v, confirm, ts = row.open, row.high, row.low, row.close, row.volume, True, end + 200
        else:
            of, cf = float(row.open), float(row.close)
            cp = of + (cf - of) * progress
            o, c = row.open, repr(round(cp, 8))
            h, lo = repr(max(of, cp)), repr(min(of, cp))
            v = repr(round(float(row.volume) * progress, 8))
            confirm, ts = False, start + int(progress * self.interval_ms)
        turnover = repr(round(float(v) * float(c), 4))
        return {"start": start, "end": end, "interval": self.interval, "open": o, "close": c, "high": h,
                "low": lo, "volume": v, "turnover": turnover, "confirm": confirm, "timestamp": ts}

    def close_frame(self, symbol: str, start_ms: int) -> str:
        """The ``confirm:true`` push this fake sends for the bar of ``symbol`` at ``start_ms`` (no faults)."""
        topic = kline_topic(self.interval, symbol)
        return self._push(topic, [self._candle(self.rows[symbol][start_ms], None)], start_ms + self.interval_ms + 200)

    def _push(self, topic: str, data: list[dict], ts: int) -> str:
        return _dumps({"topic": topic, "data": data, "ts": ts, "type": "snapshot"})

    async def _broadcast(self, topic: str, frame: str) -> None:
        for conn in list(self._conns):
            if topic in conn.topics and not conn.stalled:
                with contextlib.suppress(ConnectionClosed):
                    await conn.ws.send(frame)

    async def _play_bar(self, pause: Callable[[], Awaitable[None]] | None) -> None:
        self._bar_no += 1
        f = self.faults
        start = self.clock.open_start_ms
        if f.garbage_per_bar:
            await self.send_raw(itertools.islice(itertools.cycle(GARBAGE_FRAMES), f.garbage_per_bar))
        u = self.updates_per_bar
        for j in range(1, u + 1):
            self.clock.fraction = j / (u + 1)
            for symbol, by_start in self.rows.items():
                row = by_start.get(start)
                if row is not None:
                    topic = kline_topic(self.interval, symbol)
                    candle = self._candle(row, j / (u + 1))
                    await self._broadcast(topic, self._push(topic, [candle], candle["timestamp"]))
            if j == 1 and self._pending_dup:  # a stale repeat of the previous close, after the new open
                for topic, frame in self._pending_dup:
                    await self._broadcast(topic, frame)
                self._pending_dup.clear()
            if pause is not None:
                await pause()
        for every, start_of in ((f.far_future_every, lambda s: far_future_start(self.interval_ms)),
                                (f.off_grid_every, lambda s: s + 1)):
            if every and self._bar_no % every == 0:
                await self._send_hostile_closes(start, start_of)
        lose = self._lose_next_close or (f.lose_close_every and self._bar_no % f.lose_close_every == 0)
        self._lose_next_close = False
        nxt = start + self.interval_ms
        for symbol, by_start in self.rows.items():
            row = by_start.get(start)
            if row is None:
                continue
            topic = kline_topic(self.interval, symbol)
            data = [self._candle(row, None)]
            if f.merge_close_open and nxt in by_start:
                data.append(self._candle(by_start[nxt], 1 / (u + 1)))
            frame = self._push(topic, data, start + self.interval_ms + 200)
            if lose:
                continue
            self.closes_sent[(symbol, start)] = self.closes_sent.get((symbol, start), 0) + 1
            await self._broadcast(topic, frame)
            if f.duplicate_close:
                await self._broadcast(topic, frame)
                self._pending_dup.append((topic, frame))
        self.clock.open_start_ms = nxt
        self.clock.fraction = 0.0
        if f.drop_every and self._bar_no % f.drop_every == 0:
            await self.drop(refuse_next=f.refuse_after_drop)
        if f.stall_every and self._bar_no % f.stall_every == 0:
            self.stall()
        if pause is not None:
            await pause()

    async def _send_hostile_closes(self, start: int, start_of: Callable[[int], int]) -> None:
        # The bar's own close with another start, pushed at the real time: a client must refuse it.
        for symbol, by_start in self.rows.items():
            row = by_start.get(start)
            if row is None:
                continue
            topic = kline_topic(self.interval, symbol)
            candle = self._candle(row, None)
            candle["start"] = start_of(start)
            self.hostile_sent += 1
            await self._broadcast(topic, self._push(topic, [candle], start + self.interval_ms + 200))

    # ------------------------------------------------------------------ WebSocket
    def _process_request(self, connection: ServerConnection, request):
        if request.path != f"/v5/public/{self.category}":
            return connection.respond(404, f"no such stream {request.path}\n")
        if self._refuse_remaining > 0:
            self._refuse_remaining -= 1
            self.connections_refused += 1
            return connection.respond(503, "maintenance\n")
        return None

    def _topic_ok(self, topic: object) -> bool:
        if not isinstance(topic, str):
            return False
        kind, _, rest = topic.partition(".")
        interval, _, symbol = rest.partition(".")
        return (kind == "kline" and interval == self.interval and symbol in self.rows
                and symbol not in self.faults.refused_symbols)

    async def _ws_handler(self, ws: ServerConnection) -> None:
        conn = _Conn(ws, f"fake-{next(self._conn_ids)}")
        if self.faults.stall_new_connections > 0:
            self.faults.stall_new_connections -= 1
            conn.stalled = True
        self._conns.add(conn)
        self.connections_accepted += 1
        try:
            async for message in ws:
                reply = self._answer(conn, message)
                if reply is not None and not conn.stalled:
                    await ws.send(_dumps(reply))
        except ConnectionClosed:
            pass
        finally:
            self._conns.discard(conn)

    def _answer(self, conn: _Conn, message: str | bytes) -> dict | None:
        try:
            req = json.loads(message)
            op = req["op"]
        except (ValueError, TypeError, KeyError):
            return {"success": False, "ret_msg": "error:invalid request", "conn_id": conn.conn_id, "op": ""}
        req_id = req.get("req_id")
        base = {"conn_id": conn.conn_id}
        if req_id is not None:
            base["req_id"] = req_id
        if op == "ping":
            if conn.stalled:
                return None
            self.pings += 1
            return {"success": True, "ret_msg": "pong", **base, "op": "ping"}
        if op in ("subscribe", "unsubscribe"):
            args = req.get("args") or []
            if op == "subscribe":
                self.subscribe_requests.append(list(args))
            error = None
            for topic in args:
                if op == "unsubscribe":
                    conn.topics.discard(topic)
                elif not self._topic_ok(topic):
                    error = error or f"error:handler not found,topic:{topic}"
                elif topic in conn.topics:
                    error = error or f"error:already subscribed,topic:{topic}"
                else:
                    conn.topics.add(topic)
            return {"success": error is None, "ret_msg": error or "", **base, "op": op}
        return {"success": False, "ret_msg": f"error:unknown op {op}", **base, "op": str(op)}

    # ------------------------------------------------------------------ REST
    def _rest_error(self, ret_code: int, ret_msg: str) -> dict:
        return {"retCode": ret_code, "retMsg": ret_msg, "result": {}, "retExtInfo": {}, "time": self.clock.now_ms()}

    async def _huge_body(self, request: web.Request, n_bytes: int, declared: bool) -> web.StreamResponse:
        # A body that starts like a kline page and never ends soon: streamed, so the fake holds one chunk.
        head, tail = b'{"retCode":0,"retMsg":"', b'","result":{"list":[]},"time":0}'
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if declared:
            resp.content_length = n_bytes
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = b"x" * (64 << 10)
        left = n_bytes - len(head) - len(tail)
        try:
            await resp.write(head)
            while left > 0:
                part = chunk if left >= len(chunk) else chunk[:left]
                await resp.write(part)
                self.huge_bytes_sent += len(part)
                left -= len(part)
            await resp.write(tail)
            await resp.write_eof()
        except (ConnectionError, RuntimeError):  # the client hung up at its limit, as it should
            pass
        return resp

    async def _rest_kline(self, request: web.Request) -> web.StreamResponse:
        q = dict(request.query)
        self.rest_requests.append(q)
        now = self.clock.now_ms()
        tamper = None
        if self.faults.rest_errors:
            fault = self.faults.rest_errors.pop(0)
            if isinstance(fault, tuple) and fault[0] == "huge":
                return await self._huge_body(request, int(fault[1]), bool(fault[2]) if len(fault) > 2 else True)
            if isinstance(fault, tuple) and fault[0] in ("off_grid", "far_future"):
                tamper = fault[0]
            elif isinstance(fault, tuple):  # ("retcode", n): HTTP 200 with an error body
                body = self._rest_error(int(fault[1]), "Too many visits!" if fault[1] == 10006 else "error")
                return web.json_response(body, headers={"X-Bapi-Limit-Reset-Timestamp": str(now + 50)})
            else:
                headers = {"X-Bapi-Limit-Reset-Timestamp": str(now + 50)} if fault == 429 else {}
                return web.json_response(self._rest_error(10006 if fault == 429 else 10016, "fault"),
                                         status=int(fault), headers=headers)
        symbol = q.get("symbol", "")
        category = q.get("category", "linear")
        if category != self.category:
            return web.json_response(self._rest_error(10001, f"params error: category {category} not served"))
        if symbol not in self.rows:
            return web.json_response(self._rest_error(10001, f"params error: symbol invalid {symbol}"))
        if q.get("interval") != self.interval:
            return web.json_response(self._rest_error(10001, f"params error: interval {q.get('interval')}"))
        try:
            limit = int(q.get("limit", 200))
            start_q = int(q["start"]) if "start" in q else None
            end_q = int(q["end"]) if "end" in q else None
        except ValueError as exc:
            return web.json_response(self._rest_error(10001, f"params error: {exc}"))
        if not 1 <= limit <= 1000:
            return web.json_response(self._rest_error(10001, f"params error: limit {limit}"))
        rows = []
        for start in sorted(self.rows[symbol], reverse=True):
            if start > now or (end_q is not None and start > end_q):
                continue
            if start_q is not None and start + self.interval_ms <= start_q:
                break
            row = self.rows[symbol][start]
            if start + self.interval_ms > now:  # the open candle, as it stands now
                c = self._candle(row, max(self.clock.fraction, 0.01))
                rows.append([str(start), c["open"], c["high"], c["low"], c["close"], c["volume"], c["turnover"]])
            else:
                turnover = repr(round(float(row.volume) * float(row.close), 4))
                rows.append([str(start), row.open, row.high, row.low, row.close, row.volume, turnover])
            if len(rows) >= limit:
                break
        if tamper is not None and rows:
            newest = int(rows[0][0])
            rows[0][0] = str(newest + 1 if tamper == "off_grid" else far_future_start(self.interval_ms))
        body = {"retCode": 0, "retMsg": "OK",
                "result": {"category": self.category, "symbol": symbol, "list": rows},
                "retExtInfo": {}, "time": now}
        return web.json_response(body)


# ---------------------------------------------------------------------- CLI
def load_dir(data_dir: str | Path, interval: str) -> dict[str, list[CsvRow]]:
    """Load a directory of kline CSVs: ``SYMBOL-{interval}m.csv`` (as in ``data/``) or ``SYMBOL.csv``.

    The second form is the layout of ``../shared/data/bybit-linear-5m/``, where the folder fixes the
    interval; there the spacing of each file's first two rows must match ``interval``.
    """
    data_dir = Path(data_dir)
    paths = sorted(data_dir.glob(f"*-{interval}m.csv"))
    if paths:
        return {p.name.split("-")[0]: read_kline_csv(p, interval) for p in paths}
    paths = sorted(p for p in data_dir.glob("*.csv") if p.stem.isalnum() and p.stem.isupper())
    if not paths:
        raise FileNotFoundError(f"no *-{interval}m.csv or SYMBOL.csv files in {data_dir}")
    step_ms = INTERVAL_MS.get(interval)
    out = {}
    for p in paths:
        rows = read_kline_csv(p, interval if step_ms else None)
        if step_ms and len(rows) > 1 and rows[1].start_ms - rows[0].start_ms != step_ms:
            raise ValueError(
                f"{p}: rows are {rows[1].start_ms - rows[0].start_ms} ms apart, interval {interval} needs {step_ms}"
            )
        out[p.stem] = rows
    return out


def shift_to_now(rows: dict[str, list[CsvRow]], interval: str, start_index: int,
                 now_ms: int | None = None) -> dict[str, list[CsvRow]]:
    """Move every bar by one offset so that the bar at ``start_index`` is the one open at ``now_ms`` (default: now).

    Played in real time (``--bar-s`` = the interval in seconds) the fake's candles then close when Bybit's would,
    so a daemon's ``/healthz`` sees fresh candles; faster, the bars run ahead of the clock (ages stay 0).
    """
    step = INTERVAL_MS[interval]
    starts = sorted({r.start_ms for rs in rows.values() for r in rs})
    if len(starts) <= start_index:
        raise ValueError(f"start_index {start_index} is beyond the {len(starts)} bars in the data")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    offset = now_ms // step * step - starts[start_index]
    return {sym: [r._replace(start_ms=r.start_ms + offset) for r in rs] for sym, rs in rows.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the fake-bybit options."""
    parser.add_argument("--data", required=True, help="directory of SYMBOL-{interval}m.csv or SYMBOL.csv files")
    parser.add_argument("--interval", default="5", help="kline interval in minutes (default 5)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="WebSocket port (0: any free port)")
    parser.add_argument("--rest-port", type=int, default=0, help="REST port (0: any free port)")
    parser.add_argument("--category", default="linear", choices=("spot", "linear", "inverse"))
    parser.add_argument("--bar-s", type=float, default=1.0, help="wall seconds per bar (default 1.0)")
    parser.add_argument("--start-index", type=int, default=100,
                        help="bars before this index are history, served by REST only (default 100)")
    parser.add_argument("--updates-per-bar", type=int, default=3, help="confirm:false pushes per bar")
    parser.add_argument("--now", action="store_true",
                        help="shift the recorded bars so the first live one is open now (a rehearsal's /healthz "
                             "sees fresh candles)")
    g = parser.add_argument_group("faults")
    g.add_argument("--garbage-per-bar", type=int, default=0)
    g.add_argument("--duplicate-close", action="store_true")
    g.add_argument("--merge-close-open", action="store_true")
    g.add_argument("--lose-close-every", type=int, default=0)
    g.add_argument("--drop-every", type=int, default=0)
    g.add_argument("--refuse-after-drop", type=int, default=0)
    g.add_argument("--stall-every", type=int, default=0)
    g.add_argument("--refuse-symbol", action="append", default=[], help="answer 'handler not found' for it")
    g.add_argument("--rest-errors", default="", type=parse_rest_faults,
                   help="comma-separated REST answers given first, in order: HTTP statuses (429,500), "
                        "huge:BYTES (a streamed body with a Content-Length), huge-chunked:BYTES (without one), "
                        "off-grid, far-future (a page whose newest start is 1 ms off the grid / far ahead)")
    g.add_argument("--huge-body", type=int, default=0, metavar="BYTES",
                   help="the first REST answer is a streamed body of this many bytes "
                        "(same as --rest-errors huge:BYTES)")
    g.add_argument("--far-future-every", type=int, default=0, help="every Nth bar, an extra close far in the future")
    g.add_argument("--off-grid-every", type=int, default=0, help="every Nth bar, an extra close 1 ms off the grid")


def parse_rest_faults(text: str) -> list:
    """Parse ``--rest-errors``: ``429,huge:400000000,huge-chunked:1000000,off-grid,far-future``."""
    faults: list = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        kind, _, arg = token.partition(":")
        try:
            if kind in ("huge", "huge-chunked"):
                faults.append(("huge", int(arg), kind == "huge"))
            elif kind in ("off-grid", "far-future") and not arg:
                faults.append((kind.replace("-", "_"),))
            else:
                faults.append(int(token))
        except ValueError:
            raise argparse.ArgumentTypeError(f"REST fault {token!r} is not a status, huge:BYTES, "
                                             "huge-chunked:BYTES, off-grid or far-future") from None
    return faults


async def _serve(args: argparse.Namespace) -> None:
    faults = Faults(garbage_per_bar=args.garbage_per_bar, duplicate_close=args.duplicate_close,
                    merge_close_open=args.merge_close_open, lose_close_every=args.lose_close_every,
                    drop_every=args.drop_every, refuse_after_drop=args.refuse_after_drop,
                    stall_every=args.stall_every, refused_symbols=set(args.refuse_symbol),
                    rest_errors=([("huge", args.huge_body, True)] if args.huge_body else []) + args.rest_errors,
                    far_future_every=args.far_future_every, off_grid_every=args.off_grid_every)
    rows = load_dir(args.data, args.interval)
    if args.now:
        rows = shift_to_now(rows, args.interval, args.start_index)
    fake = FakeBybit(rows, args.interval, category=args.category,
                     start_index=args.start_index, updates_per_bar=args.updates_per_bar, faults=faults,
                     host=args.host, ws_port=args.port, rest_port=args.rest_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with fake:
        print(json.dumps({"ws_url": fake.ws_url, "rest_url": fake.rest_url, "symbols": sorted(fake.rows)}),
              flush=True)
        player = asyncio.create_task(fake.play(args.bar_s))
        await stop.wait()
        player.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await player


EX_UNAVAILABLE = 69  # sysexits.h: a port it must listen on is taken


def run_cli(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM. Exit 2 for bad data or options, 69 when a port cannot be bound."""
    try:
        asyncio.run(_serve(args))
    except (FileNotFoundError, ValueError) as exc:
        print(f"kdsignal fake-bybit: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # bind failed: address in use, not allowed, unknown host
        ports = f"--port {args.port} / --rest-port {args.rest_port}"
        print(f"kdsignal fake-bybit: cannot listen on {args.host} ({ports}): {exc.strerror or exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    return 0
